//! `cargo xtask torture [--transport socket,npcap] [--sustain-seconds N] [--filter TEXT]`: a
//! subscriber of this project (host b) under hostile traffic and faults in the two-namespace lab,
//! for each transport, while a valid publisher (host a) streams 1 MiB messages (`mod251`
//! payloads, verified by clock).
//!
//! Every row reports: valid messages sent and delivered, the loss the subscriber counted
//! (sequence gaps), the drop counters that moved, the subscriber's peak RSS against its limit,
//! and whether it still received after the attack or fault. A row passes when the subscriber
//! did not crash, delivered only intact payloads, counted every lost valid message
//! (lost == sequence gaps), received the stream's last message, and stayed within the memory
//! limit: the caps it was configured with (`CAPS`) plus `BASE_MIB`. The command exits non-zero
//! when any row fails.

use crate::hostile;
use crate::interop::wait_output;
use crate::netns::{Host, Lab};
use crate::{cargo, project_root};
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOPIC: &str = "torture";
/// The IPv4 reassembly settings the README recommends for socket receivers.
const KERNEL_SETTINGS: [&str; 2] = ["net.ipv4.ipfrag_time=5", "net.ipv4.ipfrag_high_thresh=67108864"];
/// Linux's own IPv4 reassembly limits (4 MiB for 30 s), under which an IP-fragment attack stops
/// every fragmented datagram a socket receiver would get (README, kernel settings).
const KERNEL_DEFAULTS: [&str; 2] = ["net.ipv4.ipfrag_time=30", "net.ipv4.ipfrag_high_thresh=4194304"];
/// The IP-fragment attacks, run again against a socket subscriber of a `udp.send_mode = frames`
/// stream (`fragment_flood` floods eCAL's reassembly, not IPv4's: the send mode does not
/// change what it costs, so it is not repeated).
const FRAMES_CASES: [&str; 3] = ["ip_overlap_dup", "teardrop", "ip_id_reuse"];
const MIB: u64 = 1 << 20;

/// The subscriber's configuration: caps small enough that a breach shows, and short timeouts so
/// partial messages and vanished peers expire within a case.
const CAPS: &[(&str, &str)] = &[
    ("MW_REASSEMBLY_MAX_BUFFERED_BYTES", "32MiB"),
    ("MW_REASSEMBLY_MAX_PARTIAL_MESSAGES", "64"),
    ("MW_REASSEMBLY_TIMEOUT_MS", "1000"),
    ("MW_SUBSCRIBER_QUEUE_CAPACITY", "16"),
    ("MW_REGISTRATION_TIMEOUT_MS", "3000"),
    ("MW_NPCAP_BUFFER_SIZE", "32MiB"),
    ("MW_NPCAP_IP_MAX_BUFFERED_BYTES", "16MiB"),
    ("MW_NPCAP_IP_TIMEOUT_MS", "1000"),
    ("MW_REGISTRATION_MAX_TABLE_BYTES", "16MiB"),
    ("MW_REGISTRATION_MAX_BUFFERED_BYTES", "8MiB"),
];

/// Memory beyond the caps: program, thread stacks, allocator slack, and the few 1 MiB messages
/// in flight between the reassembler, the queue and the application. Measured peaks, caps
/// included: socket 4-11 MiB under every hostile case, 36-52 MiB in the publisher-killed fault
/// (16 MiB partial messages); capture 39-59 MiB (the ring is touched), 69-93 MiB in that fault.
const BASE_MIB: u64 = 64;

/// Peak RSS the subscriber may reach with `CAPS` on `transport`, in MiB: message reassembly
/// (32), the receive queue (16 x 1 MiB messages), the remote table (16) and partial
/// registration messages (8); for packet capture also the ring (32) and
/// IPv4 reassembly (16) (no datagram queue: the capture thread delivers to the node).
fn rss_limit_mib(transport: &str) -> u64 {
    // Message reassembly, the queue, the remote table's byte budget and registration reassembly.
    let core = 32 + 16 + 16 + 8;
    BASE_MIB + if transport == "npcap" { core + 32 + 16 } else { core }
}

struct Env {
    bin: PathBuf,
    xtask: PathBuf,
    logs: PathBuf,
}

struct Row {
    transport: String,
    case: String,
    sent: u64,
    delivered: u64,
    gaps: u64,
    counted: u64,
    counters: String,
    rss_mib: f64,
    rss_limit: u64,
    after: String,
    failures: Vec<String>,
}

impl Row {
    fn new(transport: &str, case: &str) -> Self {
        Self {
            transport: transport.into(),
            case: case.into(),
            sent: 0,
            delivered: 0,
            gaps: 0,
            counted: 0,
            counters: String::new(),
            rss_mib: 0.0,
            rss_limit: rss_limit_mib(transport),
            after: String::new(),
            failures: Vec::new(),
        }
    }
    fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }
}

impl Env {
    fn spawn(
        &self,
        host: &Host,
        prog: &str,
        args: &[String],
        envs: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<Child> {
        let mut c = host.command(prog, args);
        c.env("MW_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        c.stderr(std::fs::File::create(self.logs.join(format!("torture-{log}.log")))?);
        c.spawn().with_context(|| format!("starting {log}"))
    }

    fn program(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    /// Our subscriber on host b: every message of the torture topic, verified by clock, for
    /// `seconds`; `extra` after the common options.
    fn subscriber(&self, lab: &Lab, transport: &str, seconds: f64, extra: &[&str], log: &str) -> anyhow::Result<Child> {
        self.subscriber_with(lab, transport, seconds, extra, &[], log)
    }

    /// [`Env::subscriber`] with configuration variables beyond (or replacing) `CAPS`.
    fn subscriber_with(
        &self,
        lab: &Lab,
        transport: &str,
        seconds: f64,
        extra: &[&str],
        vars: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<Child> {
        let mut args = strings(&["--topic", TOPIC, "--count", "0", "--mode", "network", "--transport", transport]);
        args.extend(strings(&["--timeout", &seconds.to_string()]));
        args.extend(strings(extra));
        if !extra.contains(&"--verify") {
            args.extend(strings(&["--verify", "mod251-clock"]));
        }
        let vars: Vec<(&str, &str)> = CAPS.iter().chain(vars).copied().collect();
        self.spawn(&lab.b, &self.program("subscriber"), &args, &vars, log)
    }

    /// Our publisher on host a (socket transport).
    fn publisher(
        &self,
        lab: &Lab,
        size: u64,
        count: u64,
        rate: f64,
        extra: &[&str],
        log: &str,
    ) -> anyhow::Result<Child> {
        self.publisher_with(lab, size, count, rate, extra, &[], log)
    }

    /// [`Env::publisher`] with configuration variables.
    #[allow(clippy::too_many_arguments)]
    fn publisher_with(
        &self,
        lab: &Lab,
        size: u64,
        count: u64,
        rate: f64,
        extra: &[&str],
        vars: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<Child> {
        let mut args = strings(&["--topic", TOPIC, "--mode", "network", "--wait-subscriber", "15", "--linger", "0.5"]);
        args.extend(strings(&[
            "--size",
            &size.to_string(),
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
        ]));
        args.extend(strings(extra));
        self.spawn(&lab.a, &self.program("publisher"), &args, vars, log)
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn summary(out: &str, role: &str) -> Option<Value> {
    out.lines().filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok()).find(|v| v["role"] == role)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The subscriber's entry for publisher `id`: (received, last clock, verification failures).
fn from_publisher(sub: &Value, id: &str) -> (u64, i64, u64) {
    sub["publishers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == id))
        .map_or((0, 0, 0), |p| (u(&p["received"]), p["last_clock"].as_i64().unwrap_or(0), u(&p["verify_failures"])))
}

/// Non-zero drop and rejection counters of the subscriber, as `name=value` pairs.
fn counters(sub: &Value) -> String {
    let st = &sub["stats"];
    let mut v = Vec::new();
    for ch in ["data", "registration"] {
        let c = &st[ch];
        let short = if ch == "data" { "" } else { "reg." };
        for k in [
            "malformed",
            "rejected_too_large",
            "rejected_fragment",
            "duplicates",
            "expired",
            "evicted",
            "size_mismatch",
        ] {
            if u(&c["reassembly"][k]) > 0 {
                v.push(format!("{short}{k}={}", u(&c["reassembly"][k])));
            }
        }
        for k in [
            "bad_frame",
            "bad_protobuf",
            "bad_topic_id",
            "wrong_cmd",
            "rejected_registration",
            "registration_table_full",
            "registration_over_budget",
            "tap_panics",
        ] {
            if u(&c[k]) > 0 {
                v.push(format!("{short}{k}={}", u(&c[k])));
            }
        }
        if u(&c["transport"]["os_dropped"]) > 0 {
            v.push(format!("{short}os_dropped={}", u(&c["transport"]["os_dropped"])));
        }
        if let Some(d) = c["transport"]["details"].as_object() {
            for (k, x) in d {
                let volume = [
                    "pcap_received",
                    "frames",
                    "ip_fragments",
                    "ip_completed",
                    "filter_updates",
                    "udp_unwanted",
                    "fragments_unwanted",
                    "receive_gro_buffers",
                ];
                // What the transport sends with (a capability flag and the sender's calls).
                let sending = k.starts_with("send_");
                // Counters shared by both channels (the kernel's, the capture device's): once.
                let shared = ch == "registration" && st["data"]["transport"]["details"][k.as_str()] == *x;
                if u(x) > 0 && !volume.contains(&k.as_str()) && !shared && !sending {
                    v.push(format!("{short}{k}={}", u(x)));
                }
            }
        }
    }
    for k in ["sequence_gaps", "queue_overflow", "duplicates", "out_of_order", "clock_jumps_held", "clock_resyncs"] {
        if u(&st["subscriber"][k]) > 0 {
            v.push(format!("sub.{k}={}", u(&st["subscriber"][k])));
        }
    }
    v.join(" ")
}

/// Messages the subscriber's counters say were dropped below it: partial messages expired,
/// evicted or inconsistent, queue overflows, datagrams the OS or capture dropped, fragments the
/// kernel's or the capture path's IPv4 reassembly dropped.
fn drop_reasons(sub: &Value) -> u64 {
    let d = &sub["stats"]["data"];
    let r = &d["reassembly"];
    let t = &d["transport"];
    let details = [
        "kernel_ip_reasm_fails",
        "ip_expired",
        "ip_evicted",
        "ip_conflicts",
        "ip_streams_expired",
        "ip_streams_evicted",
    ];
    u(&r["expired"])
        + u(&r["evicted"])
        + u(&r["size_mismatch"])
        + u(&sub["stats"]["subscriber"]["queue_overflow"])
        + u(&t["os_dropped"])
        + details.iter().map(|k| u(&t["details"][k])).sum::<u64>()
}

/// The checks every streaming row shares. `publisher` is the valid publisher's summary.
fn judge_stream(row: &mut Row, sub_code: Option<i32>, sub: Option<&Value>, publisher: Option<&Value>) {
    if sub_code != Some(0) {
        row.fail(format!("subscriber exit {sub_code:?} (crash or hang)"));
    }
    let (Some(sub), Some(publ)) = (sub, publisher) else {
        row.fail("missing summary");
        return;
    };
    let id = publ["entity_id"].as_str().unwrap_or("");
    // Every `send` call advances the clock, also those that found no subscriber connected and
    // sent nothing (counted by the publisher, a gap for the subscriber): messages published.
    row.sent = u(&publ["sent"]) + u(&publ["stats"]["not_connected"]);
    let (delivered, last, bad) = from_publisher(sub, id);
    row.delivered = delivered;
    row.gaps = u(&sub["stats"]["subscriber"]["sequence_gaps"]);
    row.counters = counters(sub);
    row.rss_mib = u(&sub["peak_rss_kib"]) as f64 / 1024.0;
    judge_common(row, bad);
    // Lost messages followed by a delivered one are sequence gaps (lost below the subscriber)
    // or queue overflows (the application did not keep up); lost messages at the end of the
    // stream (nothing after them to reveal a gap) must be covered by a drop counter.
    let lost = row.sent.saturating_sub(row.delivered);
    let tail = row.sent.saturating_sub(last.max(0) as u64);
    let overflow = u(&sub["stats"]["subscriber"]["queue_overflow"]);
    row.counted = row.gaps + overflow + tail.min(drop_reasons(sub));
    if lost != row.counted {
        row.fail(format!(
            "{lost} lost but {} counted ({} sequence gaps, {overflow} queue overflows, {tail} at the end)",
            row.counted, row.gaps
        ));
    }
    row.after = if last == row.sent as i64 && row.sent > 0 { "yes".into() } else { format!("no (last clock {last})") };
    if !row.after.starts_with("yes") {
        row.fail("the stream's last message was not delivered");
    }
}

fn judge_common(row: &mut Row, verify_failures: u64) {
    if verify_failures > 0 {
        row.fail(format!("{verify_failures} payloads delivered corrupted"));
    }
    if row.rss_mib > row.rss_limit as f64 {
        row.fail(format!("peak RSS {:.0} MiB above {} MiB", row.rss_mib, row.rss_limit));
    }
}

/// A hostile case: 1 MiB x 300 at 20/s (15 s); the attack runs for 4 s from 2.5 s after the
/// publisher started, so the stream has begun before and goes on 8 s after it (longer than
/// the IPv4 and message reassembly timeouts: what the attack left behind has expired).
fn hostile_case(env: &Env, lab: &Lab, transport: &str, case: &str) -> anyhow::Result<Row> {
    hostile_case_with(env, lab, transport, case, &[], "")
}

/// [`hostile_case`] with the publisher's configuration variables `vars`; `tag` marks the row
/// and its logs.
fn hostile_case_with(
    env: &Env,
    lab: &Lab,
    transport: &str,
    case: &str,
    vars: &[(&str, &str)],
    tag: &str,
) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, case);
    let tag = format!("{transport}-{case}{tag}");
    let sub = env.subscriber(lab, transport, 21.0, &[], &format!("{tag}-sub"))?;
    std::thread::sleep(Duration::from_millis(700));
    let publ = env.publisher_with(lab, MIB, 300, 20.0, &[], vars, &format!("{tag}-pub"))?;
    std::thread::sleep(Duration::from_millis(2500));
    let xtask = env.xtask.display().to_string();
    let attacker = env.spawn(&lab.a, &xtask, &strings(&["torture-send", case, "4"]), &[], &format!("{tag}-hostile"))?;
    let (hcode, hout) = wait_output(attacker, Duration::from_secs(20));
    let (_, pout) = wait_output(publ, Duration::from_secs(40));
    let (scode, sout) = wait_output(sub, Duration::from_secs(30));
    judge_stream(&mut row, scode, summary(&sout, "sub").as_ref(), summary(&pout, "pub").as_ref());
    let h: Value = hout.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    let hostile_sent = u(&h["datagrams"]) + u(&h["ip_packets"]);
    if hcode != Some(0) || hostile_sent == 0 {
        row.fail(format!("the hostile sender did not run (exit {hcode:?})"));
    }
    row.case = format!("{case} ({hostile_sent} pkts)");
    Ok(row)
}

/// Registration refresh period of the lab's programs (the default) and the stream's rate: a
/// forged unregistration or identity of the live subscriber makes the publisher see nobody
/// until the subscriber's next registration, so it may cost what is sent in one period.
const REFRESH_S: f64 = 1.0;
const LIE_RATE: f64 = 20.0;
/// How long the lying peer lies.
const LIE_SECONDS: f64 = 4.0;

/// A lying-peer case (`lies.rs`): the same stream as a hostile case (1 MiB x 300 at 20/s), a
/// peer on the publisher's host sending well-formed lies for 4 s from 2.5 s in. Passes when
/// every real message is delivered or its loss counted, the stream's last message arrives, RSS
/// stays within the limit, and the loss is within the bound stated for the case: none for a
/// forged clock and for a registration flood; for forged unregistrations and identities, at
/// most what is published from the attack's start to one refresh period after its end (the
/// publisher sees no subscriber until the subscriber's next registration; `send` counts them
/// as not connected).
fn lying_case(env: &Env, lab: &Lab, transport: &str, case: &str) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, case);
    let tag = format!("{transport}-{case}");
    let sub = env.subscriber(lab, transport, 21.0, &[], &format!("{tag}-sub"))?;
    std::thread::sleep(Duration::from_millis(700));
    let publ = env.publisher(lab, MIB, 300, LIE_RATE, &[], &format!("{tag}-pub"))?;
    std::thread::sleep(Duration::from_millis(2500));
    let xtask = env.xtask.display().to_string();
    let liar = env.spawn(
        &lab.a,
        &xtask,
        &strings(&["torture-lie", case, &LIE_SECONDS.to_string()]),
        &[],
        &format!("{tag}-liar"),
    )?;
    let (lcode, lout) = wait_output(liar, Duration::from_secs(30));
    let (_, pout) = wait_output(publ, Duration::from_secs(40));
    let (scode, sout) = wait_output(sub, Duration::from_secs(30));
    let s = summary(&sout, "sub");
    let l: Value = lout.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    let lies = u(&l["datagrams"]);
    if lcode != Some(0) || lies == 0 {
        row.fail(format!("the lying peer did not run (exit {lcode:?})"));
    }
    let held = s.as_ref().map_or(0, |s| u(&s["stats"]["subscriber"]["clock_jumps_held"]));
    judge_stream(&mut row, scode, s.as_ref(), summary(&pout, "pub").as_ref());
    if case == "forged_max_clock" {
        // The forgery itself is delivered (unauthenticated, as eCAL would) and held: the real
        // messages are what it delivered besides.
        row.delivered = row.delivered.saturating_sub(held);
        row.failures.retain(|f| !f.contains(" lost but "));
        if held == 0 {
            row.fail("the forged sample never reached the subscriber's filter");
        }
    }
    let lost = row.sent.saturating_sub(row.delivered);
    // Forged registrations: what is published from the attack's start to one refresh period
    // after its end (the liar's 4 s); a forgery that outlived the real entity's next
    // registration would cost the rest of the stream and fail.
    let bound = match case {
        "forged_unregistration" | "identity_collision" => ((LIE_SECONDS + REFRESH_S) * LIE_RATE) as u64,
        _ => 0,
    };
    if lost > bound {
        row.fail(format!("{lost} real messages lost, more than the bound of {bound}"));
    }
    if case == "registration_flood" {
        let over = s.as_ref().map_or(0, |s| u(&s["stats"]["registration"]["registration_over_budget"]));
        if over == 0 {
            row.fail("the flood never reached the remote table's byte budget: it proves nothing");
        }
    }
    row.case = format!("lie: {case} ({lies} datagrams; bound {bound} lost)");
    Ok(row)
}

/// An IP-fragment attack against a socket subscriber of a `udp.send_mode = frames` stream
/// (1 MiB messages in 1472-byte datagrams), with host b's kernel at Linux's own IPv4
/// reassembly limits (4 MiB for 30 s), under which the same attack costs a stream of 65 507-byte
/// datagrams every message until the stream ends (README, kernel settings): nothing of the
/// stream is IP-fragmented, so nothing of it can be poisoned, and the row must lose no valid
/// message at all (not only count its losses).
fn frames_case(env: &Env, lab: &Lab, case: &str) -> anyhow::Result<Row> {
    let sysctl = |settings: &[&str]| {
        crate::run(Command::new("ip").args(["netns", "exec", &lab.b.ns, "sysctl", "-q", "-w"]).args(settings))
    };
    sysctl(&KERNEL_DEFAULTS)?;
    let row = hostile_case_with(env, lab, "socket", case, &[("MW_UDP_SEND_MODE", "frames")], "-frames");
    sysctl(&KERNEL_SETTINGS)?;
    let mut row = row?;
    row.case = format!("frames mode, kernel defaults: {}", row.case);
    let lost = row.sent.saturating_sub(row.delivered);
    if lost > 0 || row.sent == 0 {
        row.fail(format!("{lost} valid messages lost: a frames-mode stream has no IP fragments to lose"));
    }
    Ok(row)
}

/// Publisher killed mid-message: publishers sending 16 MiB messages back to back are killed
/// (SIGKILL; `KILLS` instances in turn), then a new publisher instance streams 40 x 1 MiB. The
/// killed publishers' partial messages must expire (or be evicted) and be counted; the new
/// instance's stream must arrive whole.
fn publisher_killed(env: &Env, lab: &Lab, transport: &str) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, "fault: publisher killed mid-message");
    let tag = format!("{transport}-pubkill");
    let sub = env.subscriber(lab, transport, 22.0, &[], &format!("{tag}-sub"))?;
    std::thread::sleep(Duration::from_millis(700));
    // The same payload every time, so most of a publisher's time is spent sending; but a kill
    // while it encodes a sample leaves no partial message on the wire (seen in 2 of 6 runs with
    // one instance). Three instances are killed in turn, so at least one is almost surely
    // caught mid-message.
    for k in 0..KILLS {
        let tx_before = tx_bytes(&lab.a);
        let mut p = env.publisher(lab, 16 * MIB, 100_000, 0.0, &["--same-payload"], &format!("{tag}-pub1-{k}"))?;
        // Kill once it is streaming (at least 40 MiB on the link), not while it still waits for
        // the subscriber: on a loaded machine registration can take seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        while tx_bytes(&lab.a) < tx_before + 40 * MIB && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = p.kill();
        let _ = p.wait();
    }
    let second = env.publisher(lab, MIB, 40, 20.0, &[], &format!("{tag}-pub2"))?;
    let (_, pout) = wait_output(second, Duration::from_secs(40));
    let (scode, sout) = wait_output(sub, Duration::from_secs(40));
    let (s, p) = (summary(&sout, "sub"), summary(&pout, "pub"));
    // The killed instance sent the same payload every time, which fails the subscriber's
    // per-clock check (exit 1): only the new instance's payloads must verify.
    let new_id = p.as_ref().and_then(|p| p["entity_id"].as_str()).unwrap_or("");
    let only_old_failed = s
        .as_ref()
        .and_then(|s| s["publishers"].as_array())
        .is_some_and(|ps| ps.iter().all(|x| x["id"] != new_id || u(&x["verify_failures"]) == 0));
    let scode = if scode == Some(1) && only_old_failed { Some(0) } else { scode };
    judge_stream(&mut row, scode, s.as_ref(), p.as_ref());
    if let Some(s) = &s {
        let r = &s["stats"]["data"]["reassembly"];
        if u(&r["expired"]) + u(&r["evicted"]) == 0 {
            row.fail("the killed publisher's partial message was not counted as expired");
        }
    }
    row.after = format!("{} (new instance)", row.after);
    Ok(row)
}

/// Publisher instances killed in the publisher-killed fault.
const KILLS: usize = 3;

/// Bytes sent so far on a host's veth.
fn tx_bytes(h: &Host) -> u64 {
    Command::new("ip")
        .args(["netns", "exec", &h.ns, "cat", &format!("/sys/class/net/{}/statistics/tx_bytes", h.dev)])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Subscriber restarted: killed (SIGKILL) 3 s into a 1 MiB x 160 stream; a new subscriber
/// started 0.3 s later must receive the rest.
fn subscriber_restarted(env: &Env, lab: &Lab, transport: &str) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, "fault: subscriber restarted");
    let tag = format!("{transport}-subrestart");
    let mut first = env.subscriber(lab, transport, 30.0, &[], &format!("{tag}-sub1"))?;
    std::thread::sleep(Duration::from_millis(700));
    let publ = env.publisher(lab, MIB, 160, 20.0, &[], &format!("{tag}-pub"))?;
    std::thread::sleep(Duration::from_millis(3000));
    let _ = first.kill();
    let _ = first.wait();
    std::thread::sleep(Duration::from_millis(300));
    let second = env.subscriber(lab, transport, 10.0, &[], &format!("{tag}-sub2"))?;
    let (_, pout) = wait_output(publ, Duration::from_secs(40));
    let (scode, sout) = wait_output(second, Duration::from_secs(30));
    let (s, p) = (summary(&sout, "sub"), summary(&pout, "pub"));
    judge_stream(&mut row, scode, s.as_ref(), p.as_ref());
    // The new subscriber joined late: what it missed before its first message is not a loss.
    if let (Some(s), Some(p)) = (&s, &p) {
        let id = p["entity_id"].as_str().unwrap_or("");
        let first_clock = s["publishers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|x| x["id"] == id))
            .and_then(|x| x["first_clock"].as_i64())
            .unwrap_or(0);
        row.failures.retain(|f| !f.contains(" lost but "));
        let window = (row.sent as i64 - first_clock + 1).max(0) as u64;
        let lost = window.saturating_sub(row.delivered);
        if lost != row.counted {
            row.fail(format!("{lost} lost after joining but {} counted", row.counted));
        }
        if row.delivered < row.sent / 3 {
            row.fail(format!("the new subscriber received only {} of {}", row.delivered, row.sent));
        }
        row.sent = window;
    }
    Ok(row)
}

/// Interface down and up inside host b for 2 s during a 1 MiB x 200 stream; the subscriber
/// must resume without a restart (the multicast route, removed with the link, is re-added as
/// an operator would).
fn link_down_up(env: &Env, lab: &Lab, transport: &str) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, "fault: link down 2 s, up");
    let tag = format!("{transport}-link");
    let sub = env.subscriber(lab, transport, 17.0, &[], &format!("{tag}-sub"))?;
    std::thread::sleep(Duration::from_millis(700));
    let publ = env.publisher(lab, MIB, 200, 20.0, &[], &format!("{tag}-pub"))?;
    std::thread::sleep(Duration::from_millis(3000));
    let b = &lab.b;
    crate::run(Command::new("ip").args(["-n", &b.ns, "link", "set", &b.dev, "down"]))?;
    std::thread::sleep(Duration::from_millis(2000));
    crate::run(Command::new("ip").args(["-n", &b.ns, "link", "set", &b.dev, "up"]))?;
    let _ = Command::new("ip").args(["-n", &b.ns, "route", "replace", "224.0.0.0/4", "dev", &b.dev]).status();
    let (_, pout) = wait_output(publ, Duration::from_secs(40));
    let (scode, sout) = wait_output(sub, Duration::from_secs(30));
    judge_stream(&mut row, scode, summary(&sout, "sub").as_ref(), summary(&pout, "pub").as_ref());
    Ok(row)
}

/// Peer vanishing without unregistration: the publisher is killed; the subscriber must drop it
/// after the registration timeout (3 s here).
fn peer_vanishing(env: &Env, lab: &Lab, transport: &str) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, "fault: publisher vanishes (no unregistration)");
    let tag = format!("{transport}-vanish");
    let sub = env.subscriber(lab, transport, 10.0, &[], &format!("{tag}-sub"))?;
    std::thread::sleep(Duration::from_millis(700));
    let mut publ = env.publisher(lab, MIB, 100_000, 20.0, &[], &format!("{tag}-pub"))?;
    std::thread::sleep(Duration::from_millis(3000));
    let _ = publ.kill();
    let _ = publ.wait();
    let (scode, sout) = wait_output(sub, Duration::from_secs(30));
    if scode != Some(0) {
        row.fail(format!("subscriber exit {scode:?}"));
    }
    let Some(s) = summary(&sout, "sub") else {
        row.fail("missing summary");
        return Ok(row);
    };
    let (most, at_end) = (u(&s["publishers_connected"]["most"]), u(&s["publishers_connected"]["at_end"]));
    let (delivered, bad) = s["publishers"]
        .as_array()
        .map_or((0, 0), |ps| ps.iter().fold((0, 0), |(d, b), p| (d + u(&p["received"]), b + u(&p["verify_failures"]))));
    row.delivered = delivered;
    // The killed publisher printed nothing: what it sent is known up to its last delivered clock.
    row.sent = s["publishers"].as_array().map_or(0, |ps| ps.iter().map(|p| u(&p["last_clock"])).sum());
    row.gaps = u(&s["stats"]["subscriber"]["sequence_gaps"]);
    row.counted = row.gaps;
    row.counters = counters(&s);
    row.rss_mib = u(&s["peak_rss_kib"]) as f64 / 1024.0;
    judge_common(&mut row, bad);
    if most != 1 || at_end != 0 {
        row.fail(format!("publishers connected: most {most}, at the end {at_end} (want 1, then 0)"));
    }
    if delivered == 0 {
        row.fail("nothing delivered before the kill");
    }
    row.after = format!("publisher dropped after timeout: {}", if at_end == 0 { "yes" } else { "no" });
    Ok(row)
}

/// The capture library missing, and no capture permission: `npcap` fails with an error that
/// says what to do; `auto` falls back to sockets and receives a 20-message stream whole.
fn capture_unavailable(env: &Env, lab: &Lab, why: &str) -> anyhow::Result<Row> {
    let mut row = Row::new("npcap/auto", &format!("fault: {why}"));
    row.rss_limit = rss_limit_mib("socket");
    let tag = why.replace(' ', "-");
    let mut caps: Vec<(&str, &str)> = CAPS.to_vec();
    let missing = why.contains("missing");
    if missing {
        caps.push(("MW_NPCAP_LIBRARY", "/nonexistent/libpcap.so.1"));
    }
    // As `nobody` without capabilities (inside the namespace, after the host name is set).
    let as_nobody = |prog: &str, args: Vec<String>| -> (String, Vec<String>) {
        if missing {
            return (prog.to_string(), args);
        }
        let mut a = strings(&["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--", prog]);
        a.extend(args);
        ("setpriv".into(), a)
    };
    let sub_args = |transport: &str, seconds: &str| {
        strings(&[
            "--topic",
            TOPIC,
            "--count",
            "20",
            "--timeout",
            seconds,
            "--mode",
            "network",
            "--transport",
            transport,
        ])
    };
    // npcap: must fail, quickly, saying what to install or grant.
    let (prog, args) = as_nobody(&env.program("subscriber"), sub_args("npcap", "5"));
    let npcap = env.spawn(&lab.b, &prog, &args, &caps, &format!("{tag}-npcap"))?;
    let (code, _) = wait_output(npcap, Duration::from_secs(20));
    let log = std::fs::read_to_string(env.logs.join(format!("torture-{tag}-npcap.log"))).unwrap_or_default();
    let advice = if missing { "install" } else { "setcap" };
    if code == Some(0) || !log.contains(advice) {
        row.fail(format!("npcap: exit {code:?}, error without `{advice}`: {}", log.lines().last().unwrap_or("")));
    }
    // auto: falls back and receives.
    let (prog, args) = as_nobody(&env.program("subscriber"), sub_args("auto", "20"));
    let sub = env.spawn(&lab.b, &prog, &args, &caps, &format!("{tag}-auto"))?;
    std::thread::sleep(Duration::from_millis(700));
    let publ = env.publisher(lab, 4096, 20, 20.0, &[], &format!("{tag}-pub"))?;
    let (_, pout) = wait_output(publ, Duration::from_secs(40));
    let (scode, sout) = wait_output(sub, Duration::from_secs(30));
    let (s, p) = (summary(&sout, "sub"), summary(&pout, "pub"));
    judge_stream(&mut row, scode, s.as_ref(), p.as_ref());
    let fell_back = s.as_ref().and_then(|s| s["transport"].as_str()).unwrap_or("").starts_with("socket (auto fallback");
    if !fell_back {
        row.fail("auto did not fall back to sockets");
    }
    if let (Some(s), Some(p)) = (&s, &p) {
        if s["sha256"] != p["sha256"] {
            row.fail("auto: stream digest differs from the publisher's");
        }
    }
    row.after = format!("npcap error says `{advice}`; auto fell back: {}", if fell_back { "yes" } else { "no" });
    Ok(row)
}

/// Sustained load: 64 KiB messages at `rate` per second for `seconds`; every lost message must
/// be counted.
fn sustained(env: &Env, lab: &Lab, transport: &str, seconds: u64, rate: u64) -> anyhow::Result<Row> {
    let mut row = Row::new(transport, &format!("sustained: 64 KiB x {rate}/s for {seconds} s"));
    let tag = format!("{transport}-sustained");
    let extra = ["--verify", "none", "--no-digest"];
    // 256 x 64 KiB: the same 16 MiB the torture cases allow the queue, in messages of this size.
    let queue = [("MW_SUBSCRIBER_QUEUE_CAPACITY", "256")];
    let sub = env.subscriber_with(lab, transport, seconds as f64 + 25.0, &extra, &queue, &format!("{tag}-sub"))?;
    std::thread::sleep(Duration::from_millis(700));
    let count = seconds * rate;
    let publ =
        env.publisher(lab, 64 * 1024, count, rate as f64, &["--same-payload", "--no-digest"], &format!("{tag}-pub"))?;
    let (_, pout) = wait_output(publ, Duration::from_secs(seconds + 60));
    let (scode, sout) = wait_output(sub, Duration::from_secs(60));
    judge_stream(&mut row, scode, summary(&sout, "sub").as_ref(), summary(&pout, "pub").as_ref());
    Ok(row)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut transports = vec!["socket".to_string(), "npcap".to_string()];
    let mut sustain = 600u64;
    let mut filter: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--transport" => transports = it.next().context("--transport LIST")?.split(',').map(String::from).collect(),
            "--sustain-seconds" => sustain = it.next().context("--sustain-seconds N")?.parse()?,
            "--filter" => filter = it.next().cloned(),
            other => bail!("torture: unknown argument {other}"),
        }
    }
    crate::run(cargo().args(["build", "--release", "-p", "examples", "--bins"]))?;
    let env = Env {
        bin: project_root().join("target").join("release"),
        xtask: std::env::current_exe()?,
        logs: project_root().join("target").join("xtask").join("logs"),
    };
    std::fs::create_dir_all(&env.logs)?;
    let lab = Lab::new("mwx")?;
    // The kernel reassembles IPv4 fragments for sockets with its own limits: by default 4 MiB of
    // fragments (`ipfrag_high_thresh`) kept for 30 s (`ipfrag_time`), so a burst of
    // never-completed fragments from anyone stops every fragmented datagram for 30 s. The
    // README recommends 5 s and 64 MiB (per network namespace) for socket receivers; the lab's
    // hosts run with that, as a deployment following the README would.
    for h in [&lab.a, &lab.b] {
        crate::run(Command::new("ip").args(["netns", "exec", &h.ns, "sysctl", "-q", "-w"]).args(KERNEL_SETTINGS))?;
    }
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    let mut rows = Vec::new();
    let started = Instant::now();
    let mut push = |r: anyhow::Result<Row>, t: &str, name: &str| {
        let row = r.unwrap_or_else(|e| {
            let mut row = Row::new(t, name);
            row.fail(format!("{e:#}"));
            row
        });
        eprintln!(
            "torture: {} {} -> {}",
            row.transport,
            row.case,
            if row.failures.is_empty() { "ok".into() } else { row.failures.join("; ") }
        );
        rows.push(row);
    };
    for t in &transports {
        for (case, _, _) in hostile::CASES {
            if wanted(case) {
                push(hostile_case(&env, &lab, t, case), t, case);
            }
        }
        for (case, _) in crate::lies::CASES {
            if wanted(case) {
                push(lying_case(&env, &lab, t, case), t, case);
            }
        }
        if t == "socket" {
            for case in FRAMES_CASES {
                let name = format!("frames {case}");
                if wanted(&name) {
                    push(frames_case(&env, &lab, case), t, &name);
                }
            }
        }
        type Fault = fn(&Env, &Lab, &str) -> anyhow::Result<Row>;
        let faults: [(&str, Fault); 4] = [
            ("publisher killed", publisher_killed),
            ("subscriber restarted", subscriber_restarted),
            ("link down", link_down_up),
            ("vanishes", peer_vanishing),
        ];
        for (name, f) in faults {
            if wanted(name) {
                push(f(&env, &lab, t), t, name);
            }
        }
    }
    for why in ["capture library missing", "no capture permission"] {
        if wanted(why) && transports.iter().any(|t| t == "npcap") {
            push(capture_unavailable(&env, &lab, why), "npcap/auto", why);
        }
    }
    if sustain > 0 {
        // 60% (socket) and 60% (npcap) of the 64 KiB capacity BENCHMARKS.md measured on this
        // kind of machine: 4409 and 3541 messages/s.
        for t in &transports {
            let rate = if t == "npcap" { 2100 } else { 2600 };
            if wanted("sustained") {
                push(sustained(&env, &lab, t, sustain, rate), t, "sustained");
            }
        }
    }
    drop(lab);
    let mut table = String::from(
        "| transport | case | valid sent | delivered | lost / counted | counters that moved | peak RSS / limit | still receiving | result |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failed = 0;
    for r in &rows {
        let ok = r.failures.is_empty();
        failed += usize::from(!ok);
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} | {:.0} / {} MiB | {} | {} |\n",
            r.transport,
            r.case,
            r.sent,
            r.delivered,
            r.sent.saturating_sub(r.delivered),
            r.counted,
            if r.counters.is_empty() { "-" } else { &r.counters },
            r.rss_mib,
            r.rss_limit,
            r.after,
            if ok { "pass".to_string() } else { format!("FAIL: {}", r.failures.join("; ")) }
        ));
    }
    println!("{table}");
    let out = project_root().join("target").join("xtask").join("torture.md");
    std::fs::write(&out, &table)?;
    eprintln!(
        "torture: {} rows in {:.0} s, table also in {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if failed > 0 {
        bail!("{failed} torture rows failed");
    }
    Ok(())
}
