//! `cargo xtask tools`: the operator tool `mwctl` against real eCAL 6.1.1 processes and this
//! project's, in the two-namespace lab. Every case checks counts and payload bytes; any failure
//! makes the command exit non-zero.

use crate::ecal;
use crate::interop::wait_output;
use crate::netns::{Host, Lab};
use crate::{cargo, project_root};
use anyhow::{bail, ensure, Context};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Env {
    bin: PathBuf,
    python: PathBuf,
    logs: PathBuf,
}

impl Env {
    fn ours(&self, host: &Host, prog: &str, args: &[&str]) -> Command {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut c = host.command(&self.bin.join(prog).display().to_string(), &args);
        c.env("MW_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped());
        c
    }

    fn ecal(&self, host: &Host, args: &[&str]) -> anyhow::Result<Command> {
        let mut a = vec![ecal::peer_script().display().to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        let mut c = host.command(&self.python.display().to_string(), &a);
        c.env("ECAL_DATA", ecal::config_dir("network")?).stdin(Stdio::null()).stdout(Stdio::piped());
        Ok(c)
    }

    fn spawn(&self, mut c: Command, log: &str) -> anyhow::Result<Child> {
        c.stderr(std::fs::File::create(self.logs.join(format!("tools-{log}.log")))?);
        c.spawn().with_context(|| format!("starting {log}"))
    }
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok()).collect()
}

fn summary<'a>(lines: &'a [Value], role: &str, topic: &str) -> anyhow::Result<&'a Value> {
    lines
        .iter()
        .find(|v| v["role"] == role && v["topic"] == topic)
        .with_context(|| format!("no {role} summary for {topic}"))
}

fn mod251(size: usize, k: usize) -> Vec<u8> {
    (0..size).map(|i| ((i + k) % 251) as u8).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect()
}

/// monitor: lists the real eCAL process, its topic and its traffic, and ours.
fn monitor(env: &Env, lab: &Lab) -> anyhow::Result<String> {
    let count = "60";
    let sub = env.spawn(
        env.ours(
            &lab.b,
            "subscriber",
            &[
                "--topic",
                "tools_mon_ecal",
                "--topic",
                "tools_mon_ours",
                "--count",
                count,
                "--timeout",
                "40",
                "--mode",
                "network",
            ],
        ),
        "mon-sub",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let epub = env.spawn(
        env.ecal(&lab.a, &["pub", "--topic", "tools_mon_ecal", "--count", count, "--size", "100", "--rate", "10"])?,
        "mon-ecal-pub",
    )?;
    let opub = env.spawn(
        env.ours(
            &lab.a,
            "publisher",
            &["--topic", "tools_mon_ours", "--count", count, "--size", "200", "--rate", "10", "--mode", "network"],
        ),
        "mon-ours-pub",
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let mon =
        env.spawn(env.ours(&lab.b, "mwctl", &["monitor", "--json", "--wait", "4", "--mode", "network"]), "mon")?;
    // Undecodable registration while the monitor listens: it must show them as lost.
    let junk = bad_registration(&lab.a, Duration::from_millis(1000), 1.0);
    let (code, out) = wait_output(mon, Duration::from_secs(30));
    let junk = junk.join().map_err(|_| anyhow::anyhow!("bad_registration thread panicked"))??;
    let _ = (
        wait_output(epub, Duration::from_secs(30)),
        wait_output(opub, Duration::from_secs(30)),
        wait_output(sub, Duration::from_secs(30)),
    );
    ensure!(code == Some(0), "monitor exited {code:?}");
    let v: Value = serde_json::from_str(&out).context("monitor --json output")?;
    let reg = &v["registration"];
    ensure!(
        reg["malformed"] == junk && reg["lost"] == junk && reg["datagrams"].as_u64().unwrap_or(0) > junk,
        "monitor's registration losses after {junk} undecodable samples: {reg}"
    );
    let procs = v["processes"].as_array().context("processes")?;
    let ecal_proc = procs
        .iter()
        .find(|p| p["host_name"] == "hosta" && p["unit_name"] == "ecal_peer_pub")
        .context("the eCAL process is not listed")?;
    ensure!(
        ecal_proc["runtime_version"].as_str().unwrap_or("").contains("6.1.1"),
        "eCAL runtime version {}",
        ecal_proc["runtime_version"]
    );
    ensure!(
        procs.iter().any(|p| p["host_name"] == "hosta" && p["unit_name"] == "publisher"),
        "our publisher process is not listed"
    );
    let ents = v["entities"].as_array().context("entities")?;
    let e = ents
        .iter()
        .find(|e| e["direction"] == "publisher" && e["topic_name"] == "tools_mon_ecal")
        .context("the eCAL publisher is not listed")?;
    ensure!(
        e["unit_name"] == "ecal_peer_pub" && e["datatype_name"] == "bytes" && e["datatype_encoding"] == "raw",
        "eCAL publisher row {e}"
    );
    // The figures each publisher and subscriber registers, for eCAL's and ours alike: send and
    // receive rate (10 msg/s, in mHz), the last message size, drops.
    for (t, size, who) in [("tools_mon_ecal", 100, "eCAL"), ("tools_mon_ours", 200, "our")] {
        for dir in ["publisher", "subscriber"] {
            let e = ents
                .iter()
                .find(|e| e["direction"] == dir && e["topic_name"] == t)
                .with_context(|| format!("{t}: no {dir} listed"))?;
            let mhz = e["data_frequency_mhz"].as_i64().unwrap_or(0);
            ensure!((9_500..=10_500).contains(&mhz), "{who} {dir} on {t}: registered rate {mhz} mHz, expected 10 000");
            ensure!(
                e["topic_size"] == size,
                "{who} {dir} on {t}: registered size {}, expected {size}",
                e["topic_size"]
            );
            ensure!(e["message_drops"] == 0, "{who} {dir} on {t}: registered drops {}", e["message_drops"]);
        }
    }
    for unit in ["ecal_peer_pub", "publisher"] {
        let p = procs.iter().find(|p| p["unit_name"] == unit).context("process")?;
        ensure!(
            p["components"].as_str().is_some_and(|c| c.starts_with("pub|sub")) && p["state_level"] == 1,
            "process {unit}: components {} state level {}",
            p["components"],
            p["state_level"]
        );
    }
    let mut detail = Vec::new();
    for t in ["tools_mon_ecal", "tools_mon_ours"] {
        let row = v["topics"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["topic"] == t))
            .with_context(|| format!("topic {t} missing"))?;
        let rate = row["rate_hz"].as_f64().unwrap_or(0.0);
        ensure!(row["publishers"] == 1 && row["subscribers"].as_u64().unwrap_or(0) >= 1, "{t}: {row}");
        ensure!(
            row["messages_seen"].as_u64().unwrap_or(0) > 0 && (5.0..=15.0).contains(&rate),
            "{t}: rate {rate} ({row})"
        );
        ensure!(row["drops"] == 0, "{t}: drops {}", row["drops"]);
        detail.push(format!("{t} {rate:.1} msg/s"));
    }
    Ok(format!("{} processes; {}", procs.len(), detail.join(", ")))
}

/// echo: prints every message of a real eCAL publisher with its exact bytes (and ours through
/// the capture transport), and a protobuf record field by field from the registered descriptor.
fn echo(env: &Env, lab: &Lab) -> anyhow::Result<String> {
    let mut notes = Vec::new();
    for (label, transport) in [("eCAL", "socket"), ("ours", "npcap")] {
        let n = 5usize;
        let topic = format!("tools_echo_{transport}");
        let e = env.spawn(
            env.ours(
                &lab.b,
                "mwctl",
                &[
                    "echo",
                    &topic,
                    "--format",
                    "json",
                    "--count",
                    "5",
                    "--seconds",
                    "40",
                    "--mode",
                    "network",
                    "--transport",
                    transport,
                ],
            ),
            &format!("echo-{transport}"),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let p = if label == "eCAL" {
            env.spawn(
                env.ecal(&lab.a, &["pub", "--topic", &topic, "--count", "5", "--size", "64", "--rate", "10"])?,
                "echo-ecal-pub",
            )?
        } else {
            env.spawn(
                env.ours(
                    &lab.a,
                    "publisher",
                    &["--topic", &topic, "--count", "5", "--size", "64", "--rate", "10", "--mode", "network"],
                ),
                "echo-ours-pub",
            )?
        };
        let (code, out) = wait_output(e, Duration::from_secs(45));
        let _ = wait_output(p, Duration::from_secs(30));
        ensure!(code == Some(0), "{label}: echo exited {code:?}");
        let lines = json_lines(&out);
        ensure!(lines.len() == n, "{label}: {} messages printed, {n} sent", lines.len());
        for (k, l) in lines.iter().enumerate() {
            let bytes = unhex(l["hex"].as_str().context("hex payload")?);
            ensure!(bytes == mod251(64, k), "{label}: message {k} bytes differ");
        }
        notes.push(format!("{label} {n}/{n} byte-exact"));
    }
    let e = env.spawn(
        env.ours(&lab.b, "mwctl", &["echo", "person", "--count", "3", "--seconds", "40", "--mode", "network"]),
        "echo-proto",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let p = env.spawn(env.ours(&lab.a, "people", &["--mode", "network", "pub", "--count", "3"]), "echo-people")?;
    let (code, out) = wait_output(e, Duration::from_secs(45));
    let _ = wait_output(p, Duration::from_secs(30));
    ensure!(code == Some(0), "protobuf echo exited {code:?}");
    for id in 1..3 {
        ensure!(
            out.contains(&format!("id: {id}\nname: \"person {id}\"\nemail: \"p{id}@example.org\"")),
            "person {id} not decoded:\n{out}"
        );
    }
    ensure!(out.contains("proto:pb.People.Person"), "datatype not shown");
    notes.push("protobuf decoded by descriptor".into());
    Ok(notes.join("; "))
}

fn tcpdump_count(file: &std::path::Path, filter: &str) -> anyhow::Result<(usize, String)> {
    let o = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .arg(filter)
        .output()
        .context("running tcpdump (apt-get install tcpdump)")?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ensure!(o.status.success(), "tcpdump -r failed: {err}");
    Ok((String::from_utf8_lossy(&o.stdout).lines().count(), err))
}

/// record from a real eCAL publisher (both transports), open the file with tcpdump, then replay
/// it to a real eCAL subscriber and compare the digest with the original publisher's.
fn record(env: &Env, lab: &Lab) -> anyhow::Result<String> {
    let dir = project_root().join("target").join("xtask").join("tools");
    std::fs::create_dir_all(&dir)?;
    let mut notes = Vec::new();
    // Small messages: one frame per sample, counted with tcpdump. 200 kB messages: eCAL
    // fragments and IP fragments, reassembled again from the file by replay.
    // The last row records our own publisher and replays into our subscriber.
    let rows = [
        ("socket", 100usize, 30u64, true),
        ("npcap", 100, 30, true),
        ("socket", 200_000, 5, true),
        ("npcap", 200_000, 5, true),
        ("npcap", 1000, 20, false),
    ];
    for (transport, size, n, from_ecal) in rows {
        let who = if from_ecal { "eCAL" } else { "ours" };
        let topic = format!("tools_rec_{transport}_{size}");
        let file = dir.join(format!("record-{transport}-{size}.pcapng"));
        let (count, size_s) = (n.to_string(), size.to_string());
        let r = env.spawn(
            env.ours(
                &lab.b,
                "mwctl",
                &[
                    "record",
                    "--out",
                    &file.display().to_string(),
                    "--topic",
                    &topic,
                    "--samples",
                    &count,
                    "--seconds",
                    "40",
                    "--mode",
                    "network",
                    "--transport",
                    transport,
                ],
            ),
            &format!("record-{transport}-{size}"),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let pub_args = ["--topic", &topic, "--count", &count, "--size", &size_s, "--rate", "20"];
        let p = if from_ecal {
            env.spawn(env.ecal(&lab.a, &[&["pub"][..], &pub_args].concat())?, "record-ecal-pub")?
        } else {
            env.spawn(
                env.ours(&lab.a, "publisher", &[&pub_args[..], &["--mode", "network"]].concat()),
                "record-ours-pub",
            )?
        };
        let (pcode, pout) = wait_output(p, Duration::from_secs(45));
        let (code, out) = wait_output(r, Duration::from_secs(45));
        ensure!(
            code == Some(0) && pcode == Some(0),
            "{transport} {size} B: record exited {code:?}, publisher {pcode:?}"
        );
        let totals = &json_lines(&out).first().cloned().context("record summary")?["totals"];
        ensure!(totals["data_samples"] == n, "{transport} {size} B: recorder saw {} samples", totals["data_samples"]);
        let (reg, info) = tcpdump_count(&file, "udp dst port 14000")?;
        ensure!(reg > 0, "{transport} {size} B: no registration packets recorded");
        let link = info.split(", ").find(|p| p.starts_with("link-type")).unwrap_or("").to_string();
        let mut note = format!("{who} {transport} {size} B x {n}: ");
        if size < 1400 {
            let (data, _) = tcpdump_count(&file, "udp dst port 14002")?;
            ensure!(data as u64 == n, "{transport}: tcpdump reads {data} data packets, expected {n}");
            note += &format!("tcpdump reads {data} data + {reg} registration packets ({link})");
        } else {
            let (frames, _) = tcpdump_count(&file, "")?;
            note += &format!("{frames} frames ({link})");
        }
        let digest = summary(&json_lines(&pout), "pub", &topic)?["sha256"].clone();
        // Replay into a subscriber of the same kind on the other host.
        let s = if from_ecal {
            env.spawn(
                env.ecal(&lab.a, &["sub", "--topic", &topic, "--count", &count, "--timeout", "40"])?,
                "replay-ecal-sub",
            )?
        } else {
            let a = ["--topic", &topic, "--count", &count, "--timeout", "40", "--mode", "network"];
            env.spawn(env.ours(&lab.a, "subscriber", &a), "replay-ours-sub")?
        };
        std::thread::sleep(Duration::from_secs(1));
        let rp = env.spawn(
            env.ours(&lab.b, "mwctl", &["replay", &file.display().to_string(), "--speed", "4", "--mode", "network"]),
            &format!("replay-{transport}-{size}"),
        )?;
        let (rcode, rout) = wait_output(rp, Duration::from_secs(60));
        let (scode, sout) = wait_output(s, Duration::from_secs(60));
        ensure!(rcode == Some(0), "{transport} {size} B: replay exited {rcode:?}: {rout}");
        let sub_lines = json_lines(&sout);
        let sub = summary(&sub_lines, "sub", &topic)?;
        ensure!(
            scode == Some(0) && sub["received"] == n && sub["sha256"] == digest,
            "{transport} {size} B: replayed to {who}: {sub}"
        );
        notes.push(note + &format!("; replayed to {who}, digest match"));
    }
    Ok(notes.join("; "))
}

/// Reads an MCAP file with the official Python readers (`ecal_peer.py mcap-check`).
fn mcap_check(env: &Env, file: &std::path::Path, extra: &[&str]) -> anyhow::Result<Value> {
    let o = Command::new(&env.python)
        .arg(ecal::peer_script())
        .args(["mcap-check", "--file"])
        .arg(file)
        .args(extra)
        .output()
        .context("running the MCAP check")?;
    ensure!(o.status.success(), "MCAP check failed: {}", String::from_utf8_lossy(&o.stderr));
    json_lines(&String::from_utf8_lossy(&o.stdout)).pop().context("no MCAP check output")
}

fn channel<'a>(check: &'a Value, topic: &str) -> anyhow::Result<&'a Value> {
    check["channels"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["topic"] == topic))
        .with_context(|| format!("no channel {topic} in {check}"))
}

/// Sends `sig` (`INT`, `KILL`) to a child (kill(1): this crate has no unsafe code).
fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").args(["-s", sig, &child.id().to_string()]).status();
}

/// MCAP: records a real eCAL protobuf publisher, a real eCAL raw publisher and ours across the
/// lab; the official Python readers check channels, schemas, counts, every protobuf field and
/// the stream digests; replay into a real eCAL subscriber and ours reproduces the digests. A
/// recording stopped with SIGINT is complete and indexed; one killed with SIGKILL reads up to
/// its last complete chunk.
fn mcap(env: &Env, lab: &Lab) -> anyhow::Result<String> {
    let dir = project_root().join("target").join("xtask").join("tools");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("record.mcap");
    let _ = std::fs::remove_file(&file);
    let (tp, tr, to) = ("tools_mcap_proto", "tools_mcap_raw", "tools_mcap_ours");
    let n = 20u64;
    let count = n.to_string();
    let rec = env.spawn(
        env.ours(
            &lab.b,
            "mwctl",
            &[
                "record",
                "--out",
                &file.display().to_string(),
                "--topic",
                tp,
                "--topic",
                tr,
                "--topic",
                to,
                "--samples",
                &(3 * n).to_string(),
                "--seconds",
                "60",
                "--mode",
                "network",
            ],
        ),
        "mcap-record",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let rate = ["--rate", "20", "--count", &count];
    let pp =
        env.spawn(env.ecal(&lab.a, &[&["pub", "--proto", "--topic", tp][..], &rate].concat())?, "mcap-ecal-proto")?;
    let pr = env
        .spawn(env.ecal(&lab.a, &[&["pub", "--topic", tr, "--size", "5000"][..], &rate].concat())?, "mcap-ecal-raw")?;
    let po = env.spawn(
        env.ours(&lab.a, "publisher", &[&["--topic", to, "--size", "100000", "--mode", "network"][..], &rate].concat()),
        "mcap-ours-pub",
    )?;
    let mut digests = std::collections::BTreeMap::new();
    for (topic, p) in [(tp, pp), (tr, pr), (to, po)] {
        let (code, out) = wait_output(p, Duration::from_secs(60));
        ensure!(code == Some(0), "publisher of {topic} exited {code:?}");
        let s = summary(&json_lines(&out), "pub", topic)?.clone();
        ensure!(s["sent"] == n, "publisher of {topic}: {s}");
        digests.insert(topic, s["sha256"].clone());
    }
    let (code, out) = wait_output(rec, Duration::from_secs(60));
    ensure!(code == Some(0), "record exited {code:?}: {out}");
    let totals = json_lines(&out).pop().context("record summary")?["totals"].clone();
    ensure!(
        totals["messages"] == 3 * n && totals["schemaless_fallback"] == 0 && totals["queue_dropped"] == 0,
        "record totals: {totals}"
    );
    let check = mcap_check(env, &file, &["--mod251", tr, "--mod251", to])?;
    ensure!(check["end"].is_null(), "the recording does not read to its end: {}", check["end"]);
    let summ = &check["summary"];
    ensure!(
        summ["message_count"] == 3 * n && summ["chunk_indexes"].as_u64() >= Some(1) && summ["compression"][0] == "zstd",
        "summary: {summ}"
    );
    ensure!(check["channels"].as_array().map(Vec::len) == Some(3), "channels: {}", check["channels"]);
    let meta = &check["metadata"];
    ensure!(
        meta["recording"]["host"] == lab.b.hostname.as_str()
            && meta["ecal.datatypes"][tp] == "proto:mwtest.Pose"
            && meta["ecal.datatypes"][tr] == "raw:bytes",
        "metadata: {meta}"
    );
    let p = channel(&check, tp)?;
    ensure!(
        p["message_encoding"] == "protobuf"
            && p["schema_name"] == "mwtest.Pose"
            && p["schema_encoding"] == "protobuf"
            && p["messages"] == n
            && p["proto_checked"] == n
            && p["proto_mismatch"].is_null(),
        "protobuf channel: {p}"
    );
    for topic in [tp, tr, to] {
        let c = channel(&check, topic)?;
        ensure!(
            c["messages"] == n
                && c["sha256"] == digests[topic]
                && c["sequence_ok"] == true
                && c["times_ok"] == true
                && c["mod251_ok"] == true,
            "channel {topic} (publisher digest {}): {c}",
            digests[topic]
        );
        if topic != tp {
            ensure!(
                c["message_encoding"] == "application/octet-stream" && c["schema_name"].is_null(),
                "raw channel {topic}: {c}"
            );
        }
    }
    let mut notes = vec![format!(
        "recorded {} messages in {} zstd chunks; Python mcap readers: 3 channels, {n} protobuf messages decoded field by field, digests equal",
        summ["message_count"], summ["chunk_count"]
    )];

    // Replay into a real eCAL subscriber (its two topics) and into ours.
    let es = env.spawn(
        env.ecal(
            &lab.a,
            &["sub", "--topic", tp, "--topic", tr, "--count", &count, "--verify", "none", "--timeout", "40"],
        )?,
        "mcap-replay-ecal-sub",
    )?;
    let os = env.spawn(
        env.ours(&lab.a, "subscriber", &["--topic", to, "--count", &count, "--timeout", "40", "--mode", "network"]),
        "mcap-replay-ours-sub",
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let rp = env.spawn(
        env.ours(&lab.b, "mwctl", &["replay", &file.display().to_string(), "--speed", "4", "--mode", "network"]),
        "mcap-replay",
    )?;
    let (rcode, rout) = wait_output(rp, Duration::from_secs(60));
    let (ecode, eout) = wait_output(es, Duration::from_secs(60));
    let (ocode, oout) = wait_output(os, Duration::from_secs(60));
    ensure!(rcode == Some(0), "replay exited {rcode:?}: {rout}");
    ensure!(ecode == Some(0) && ocode == Some(0), "replay subscribers exited {ecode:?} / {ocode:?}");
    let (el, ol) = (json_lines(&eout), json_lines(&oout));
    for (topic, lines) in [(tp, &el), (tr, &el), (to, &ol)] {
        let s = summary(lines, "sub", topic)?;
        ensure!(s["received"] == n && s["sha256"] == digests[topic], "replayed {topic}: {s}");
    }
    notes.push("replayed to eCAL and ours, digests equal".into());

    // Stopped with SIGINT and SIGTERM (complete, indexed) and killed with SIGKILL (complete
    // chunks readable): three recorders of one publisher's three topics.
    let stops = [("INT", "tools_mcap_int"), ("TERM", "tools_mcap_term"), ("KILL", "tools_mcap_kill")];
    let mut recorders = Vec::new();
    for (sig, topic) in stops {
        let f = dir.join(format!("sig{}.mcap", sig.to_lowercase()));
        let _ = std::fs::remove_file(&f);
        let args =
            ["record", "--out", &f.display().to_string(), "--topic", topic, "--seconds", "60", "--mode", "network"];
        recorders.push((
            sig,
            topic,
            f.clone(),
            env.spawn(env.ours(&lab.b, "mwctl", &args), &format!("mcap-sig{sig}"))?,
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut pub_args = vec!["--size", "1000", "--count", "2000", "--rate", "50", "--mode", "network"];
    for (_, topic) in stops {
        pub_args.extend(["--topic", topic]);
    }
    let stream = env.spawn(env.ours(&lab.a, "publisher", &pub_args), "mcap-stream-pub")?;
    std::thread::sleep(Duration::from_millis(4000));
    for (sig, _, _, child) in &recorders {
        signal(child, sig);
    }
    let mut ended = Vec::new();
    for (sig, topic, f, child) in recorders {
        let (code, out) = wait_output(child, Duration::from_secs(20));
        ended.push((sig, topic, f, code, out));
    }
    signal(&stream, "KILL");
    let _ = wait_output(stream, Duration::from_secs(10));
    for (sig, topic, f, code, out) in ended {
        if sig == "KILL" {
            ensure!(code.is_none(), "record killed by SIGKILL exited {code:?}");
            let ck = mcap_check(env, &f, &["--cut", "--mod251", topic])?;
            let c = channel(&ck, topic)?;
            ensure!(!ck["end"].is_null(), "a SIGKILLed recording must end early: {ck}");
            ensure!(
                c["messages"].as_u64() >= Some(50) && c["sequence_ok"] == true && c["mod251_ok"] == true,
                "SIGKILL recording: {c}"
            );
            notes.push(format!("SIGKILL: {} messages read up to the cut", c["messages"]));
            continue;
        }
        ensure!(code == Some(0), "record stopped by SIG{sig} exited {code:?}");
        let written = json_lines(&out).pop().context("record summary")?["totals"]["messages"].clone();
        let ci = mcap_check(env, &f, &["--mod251", topic])?;
        let c = channel(&ci, topic)?;
        ensure!(
            ci["end"].is_null()
                && ci["summary"]["message_count"] == written
                && ci["summary"]["chunk_indexes"].as_u64() >= Some(1)
                && c["messages"] == written
                && written.as_u64() >= Some(50)
                && c["sequence_ok"] == true
                && c["mod251_ok"] == true,
            "SIG{sig} recording ({written} written): {ci}"
        );
        notes.push(format!("SIG{sig}: complete, indexed, {written} messages"));
    }
    Ok(notes.join("; "))
}

/// Sends `bad_registration` datagrams (a valid frame, undecodable protobuf; 10/s) from `host`
/// for `seconds`, after `delay`, on a thread; the handle gives how many were sent.
fn bad_registration(host: &Host, delay: Duration, seconds: f64) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    let mut c = host.command(
        &std::env::current_exe().unwrap_or_default().display().to_string(),
        &["torture-send".into(), "bad_registration".into(), seconds.to_string()],
    );
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let o = c.stderr(Stdio::inherit()).output().context("torture-send bad_registration")?;
        ensure!(o.status.success(), "torture-send bad_registration failed: {}", o.status);
        let v: Value = serde_json::from_slice(&o.stdout).context("torture-send output")?;
        let sent = v["datagrams"].as_u64().context("datagrams")?;
        ensure!(sent > 0 && v["send_errors"] == 0, "bad_registration sender: {v}");
        Ok(sent)
    })
}

/// doctor: flags a missing multicast route, a too-small rmem_max, a peer in the other mode and a
/// peer on another machine with this machine's host name; passes when all is well.
fn doctor(env: &Env, lab: &Lab) -> anyhow::Result<String> {
    let b = &lab.b;
    let run = |args: &[&str], log: &str| -> anyhow::Result<(Option<i32>, String)> {
        let c = env.spawn(env.ours(b, "mwctl", args), log)?;
        Ok(wait_output(c, Duration::from_secs(30)))
    };
    let dir = project_root().join("target").join("xtask").join("tools");
    std::fs::create_dir_all(&dir)?;
    // As the namespace sees it (per-namespace on newer kernels).
    let o = Command::new("ip").args(["netns", "exec", &b.ns, "cat", "/proc/sys/net/core/rmem_max"]).output()?;
    let rmem: usize = String::from_utf8_lossy(&o.stdout).trim().parse().context("reading net.core.rmem_max")?;
    let cfg = |name: &str, bytes: usize| -> anyhow::Result<String> {
        let p = dir.join(name);
        std::fs::write(&p, format!("[udp]\nreceive_buffer = {bytes}\n"))?;
        Ok(p.display().to_string())
    };
    let fits = cfg("doctor-fits.toml", rmem.max(65536))?;
    let too_big = cfg("doctor-too-big.toml", rmem * 2)?;
    // Healthy.
    let (code, out) = run(&["doctor", "--mode", "network", "--listen", "1", "--config", &fits], "doctor-ok")?;
    ensure!(code == Some(0) && !out.contains("[FAIL]"), "healthy lab: doctor exited {code:?}:\n{out}");
    ensure!(out.contains("[ok  ] registration") && out.contains(" 0 lost"), "registration not ok:\n{out}");
    // Undecodable registration while it listens: a warning with the count.
    let junk = bad_registration(&lab.a, Duration::from_millis(800), 1.0);
    let (code, out) = run(&["doctor", "--mode", "network", "--listen", "2", "--config", &fits], "doctor-reg")?;
    let junk = junk.join().map_err(|_| anyhow::anyhow!("bad_registration thread panicked"))??;
    ensure!(
        code == Some(0)
            && out.contains("[WARN] registration")
            && out.contains(&format!("{junk} lost (0 dropped by the OS or capture, 0 incomplete, {junk} malformed")),
        "{junk} undecodable registration samples not flagged ({code:?}):\n{out}"
    );
    // rmem_max below the request.
    let (code, out) = run(&["doctor", "--mode", "network", "--listen", "0.5", "--config", &too_big], "doctor-rmem")?;
    ensure!(code == Some(1) && out.contains("[FAIL] receive buffer"), "rmem_max not flagged ({code:?}):\n{out}");
    // No multicast route.
    crate::run(Command::new("ip").args(["-n", &b.ns, "route", "del", "224.0.0.0/4"]))?;
    let r = run(&["doctor", "--mode", "network", "--listen", "0.5", "--config", &fits], "doctor-route");
    crate::run(Command::new("ip").args(["-n", &b.ns, "route", "add", "224.0.0.0/4", "dev", &b.dev]))?;
    let (code, out) = r?;
    ensure!(code == Some(1) && out.contains("[FAIL] multicast route"), "missing route not flagged ({code:?}):\n{out}");
    // A network-mode peer on host A that calls itself "hostb", seen from B in local mode.
    let mut c = env.ours(
        &lab.a,
        "subscriber",
        &["--topic", "tools_doc", "--count", "1", "--timeout", "8", "--mode", "network"],
    );
    c.env("MW_HOST_NAME", &b.hostname);
    let peer = env.spawn(c, "doctor-peer")?;
    let ecal_peer = env.spawn(
        env.ecal(&lab.a, &["sub", "--topic", "tools_doc", "--count", "1", "--timeout", "8"])?,
        "doctor-ecal-peer",
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out) = run(&["doctor", "--listen", "2.5", "--config", &fits], "doctor-peers")?;
    let (nw_code, nw_out) =
        run(&["doctor", "--mode", "network", "--listen", "2.5", "--config", &fits], "doctor-clash")?;
    let _ = wait_output(peer, Duration::from_secs(15));
    let _ = wait_output(ecal_peer, Duration::from_secs(15));
    ensure!(code == Some(1) && out.contains("[FAIL] mode"), "mode mismatch not flagged ({code:?}):\n{out}");
    ensure!(out.contains("ecal_peer_sub (network mode, from 10.77.0.1)"), "the real eCAL peer is not listed:\n{out}");
    ensure!(
        nw_code == Some(1) && nw_out.contains("[FAIL] host name") && nw_out.contains("10.77.0.1"),
        "host name clash not flagged ({nw_code:?}):\n{nw_out}"
    );
    Ok(format!(
        "healthy: pass; flagged: rmem_max {rmem} < {}, missing route, mode mismatch (our and eCAL's peers), host name clash, registration lost",
        rmem * 2
    ))
}

/// Runs every case, or those named in `args` (`cargo xtask tools mcap doctor`).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    const NAMES: [&str; 5] = ["monitor", "echo", "record+replay", "mcap", "doctor"];
    if let Some(a) = args.iter().find(|a| !NAMES.contains(&a.as_str())) {
        bail!("tools: unknown case {a}; cases: {}", NAMES.join(", "));
    }
    crate::run(cargo().args(["build", "--release", "-p", "examples", "-p", "mwctl", "--bins"]))?;
    if Command::new("tcpdump").arg("--version").output().is_err() {
        bail!("tcpdump is needed to check recorded files: apt-get install tcpdump");
    }
    let env = Env {
        bin: project_root().join("target").join("release"),
        python: ecal::venv()?,
        logs: project_root().join("target").join("xtask").join("logs"),
    };
    std::fs::create_dir_all(&env.logs)?;
    let lab = Lab::new("mwt")?;
    type Case = fn(&Env, &Lab) -> anyhow::Result<String>;
    let cases: [(&str, Case); 5] =
        [("monitor", monitor), ("echo", echo), ("record+replay", record), ("mcap", mcap), ("doctor", doctor)];
    let mut failures = 0;
    let mut ran = 0;
    for (name, f) in cases {
        if !args.is_empty() && !args.iter().any(|a| a == name) {
            continue;
        }
        ran += 1;
        let t0 = Instant::now();
        match f(&env, &lab) {
            Ok(d) => eprintln!("tools {name:<14} PASS ({:.1} s) {d}", t0.elapsed().as_secs_f64()),
            Err(e) => {
                failures += 1;
                eprintln!("tools {name:<14} FAIL ({:.1} s) {e:#}", t0.elapsed().as_secs_f64());
            }
        }
    }
    drop(lab);
    if failures > 0 {
        bail!("{failures} tools case(s) failed; logs in {}", env.logs.display());
    }
    println!("tools: all {ran} cases passed");
    Ok(())
}
