//! The interop matrix: {this project, real eCAL 6.1.1} publisher x {this project, real eCAL}
//! subscriber, for 10 B, 65 420 B (just over one eCAL datagram), 1 MiB and two topics at once,
//! cross-host (two namespaces over a veth) and same-host (one namespace), in network mode, plus
//! same-host local-mode rows. Every row compares the message count and the SHA-256 of the
//! message stream on both sides; any mismatch makes the command exit non-zero.

use crate::ecal;
use crate::netns::{Host, Lab};
use crate::{cargo, project_root};
use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Impl {
    Ours,
    OursNpcap,
    /// Ours on sockets, publishing with `udp.send_mode = frames` (frame-sized datagrams, sent
    /// with segmentation offload).
    OursFrames,
    Ecal,
    /// Real eCAL 6.1.1 driven through its C++ API (`xtask/peers/ecal_native.cpp`).
    EcalNative,
    /// Our Windows programs (`x86_64-win7-windows-gnu`) under Wine, socket transport.
    WinSocket,
    /// Our Windows programs under Wine, capture transport (Wine's wpcap.dll over libpcap).
    WinNpcap,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours(socket)",
            Impl::OursNpcap => "ours(npcap)",
            Impl::OursFrames => "ours(socket, frames)",
            Impl::Ecal => "eCAL 6.1.1",
            Impl::EcalNative => "eCAL 6.1.1 C++",
            Impl::WinSocket => "ours.exe(socket, Wine)",
            Impl::WinNpcap => "ours.exe(npcap, Wine)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Placement {
    CrossHost,
    SameHost,
    SameHostLocal,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::CrossHost => "cross-host",
            Placement::SameHost => "same-host",
            Placement::SameHostLocal => "same-host local",
        }
    }
    fn mode(self) -> &'static str {
        if self == Placement::SameHostLocal {
            "local"
        } else {
            "network"
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Case {
    sender: Impl,
    receiver: Impl,
    placement: Placement,
    size: usize,
    count: usize,
    rate: f64,
    topics: Vec<String>,
}

impl Case {
    pub(crate) fn label(&self) -> String {
        format!(
            "{} -> {} {} {}B x{}{}",
            self.sender.name(),
            self.receiver.name(),
            self.placement.name(),
            self.size,
            self.count,
            if self.topics.len() > 1 { format!(" {} topics", self.topics.len()) } else { String::new() }
        )
    }
}

/// (size, count, rate, topics): 10 B, 65 420 B (just over one eCAL datagram), 1 MiB, two topics.
const LOADS: [(usize, usize, f64, &[&str]); 4] = [
    (10, 10, 20.0, &["interop_small"]),
    (65_420, 10, 10.0, &["interop_frag"]),
    (1 << 20, 5, 5.0, &["interop_1mb"]),
    (1000, 10, 20.0, &["interop_a", "interop_b"]),
];

/// Every pair in every placement with every load of [`LOADS`].
fn matrix(placements: &[Placement], pairs: &[(Impl, Impl)]) -> Vec<Case> {
    let mut v = Vec::new();
    for &placement in placements {
        for &(sender, receiver) in pairs {
            for (size, count, rate, topics) in LOADS {
                let topics = topics.iter().map(|t| t.to_string()).collect();
                v.push(Case { sender, receiver, placement, size, count, rate, topics });
            }
        }
    }
    v
}

/// The Windows rows (`cargo xtask windows`): our Windows programs under Wine with real eCAL and
/// our Linux programs, cross-host in network mode (Windows on host b or a) and same-host in
/// local mode, every load.
pub(crate) fn wine_cases() -> Vec<Case> {
    let pairs = [
        (Impl::Ecal, Impl::WinSocket),
        (Impl::Ours, Impl::WinSocket),
        (Impl::WinSocket, Impl::Ecal),
        (Impl::WinSocket, Impl::Ours),
        (Impl::Ecal, Impl::WinNpcap),
        (Impl::Ours, Impl::WinNpcap),
    ];
    matrix(&[Placement::CrossHost, Placement::SameHostLocal], &pairs)
}

fn cases() -> Vec<Case> {
    let pairs = [
        (Impl::Ours, Impl::Ours),
        (Impl::Ecal, Impl::Ours),
        (Impl::Ours, Impl::Ecal),
        (Impl::Ours, Impl::OursNpcap),
        (Impl::OursNpcap, Impl::Ours),
        (Impl::OursNpcap, Impl::OursNpcap),
        (Impl::Ecal, Impl::OursNpcap),
        (Impl::EcalNative, Impl::Ours),
        (Impl::Ours, Impl::EcalNative),
    ];
    let mut v = matrix(&[Placement::CrossHost, Placement::SameHost], &pairs);
    // Our publisher in `frames` send mode (1472-byte datagrams on the veth link's 1500-byte
    // MTU, no IP fragments) to real eCAL and to both of our receivers: 10 B, 65 420 B, 1 MiB.
    let frames = [
        (Impl::OursFrames, Impl::Ours),
        (Impl::OursFrames, Impl::OursNpcap),
        (Impl::OursFrames, Impl::EcalNative),
        (Impl::OursFrames, Impl::Ecal),
    ];
    v.extend(matrix(&[Placement::CrossHost, Placement::SameHost], &frames).into_iter().filter(|c| c.topics.len() == 1));
    for (s, r) in pairs {
        for (size, count, rate, topic) in
            [(10usize, 10usize, 20.0, "interop_local"), (1 << 20, 5, 5.0, "interop_local_1mb")]
        {
            v.push(Case {
                sender: s,
                receiver: r,
                placement: Placement::SameHostLocal,
                size,
                count,
                rate,
                topics: vec![topic.into()],
            });
        }
    }
    v
}

pub(crate) struct Env {
    pub bin_dir: PathBuf,
    pub python: PathBuf,
    pub logs: PathBuf,
    pub wine: Option<Wine>,
    /// The native eCAL peer program (rows with [`Impl::EcalNative`]).
    pub native: Option<PathBuf>,
}

/// Running our Windows programs: Wine's loader, the `.exe` directory, and one Wine prefix per
/// lab host (Wine's server owns the sockets, so each network namespace needs its own).
pub(crate) struct Wine {
    pub wine64: PathBuf,
    pub bin_dir: PathBuf,
    pub prefixes: PathBuf,
}

impl Wine {
    pub fn prefix(&self, host: &Host) -> PathBuf {
        self.prefixes.join(&host.hostname)
    }
}

fn peer_command(env: &Env, host: &Host, who: Impl, publisher: bool, case: &Case) -> anyhow::Result<Command> {
    let mut args: Vec<String> = Vec::new();
    for t in &case.topics {
        args.extend(["--topic".into(), t.clone()]);
    }
    args.extend(["--count".into(), case.count.to_string()]);
    if publisher {
        args.extend(["--size".into(), case.size.to_string(), "--rate".into(), case.rate.to_string()]);
        args.extend(["--wait-subscriber".into(), "20".into()]);
    } else {
        args.extend(["--timeout".into(), "30".into()]);
    }
    let mut cmd = match who {
        Impl::Ours | Impl::OursNpcap | Impl::OursFrames => {
            let transport = if who == Impl::OursNpcap { "npcap" } else { "socket" };
            args.extend(["--mode".into(), case.placement.mode().into(), "--transport".into(), transport.into()]);
            let prog = env.bin_dir.join(if publisher { "publisher" } else { "subscriber" });
            let mut c = host.command(&prog.display().to_string(), &args);
            if who == Impl::OursFrames {
                c.env("MW_UDP_SEND_MODE", "frames");
            }
            c
        }
        Impl::Ecal => {
            let mut a = vec![ecal::peer_script().display().to_string(), (if publisher { "pub" } else { "sub" }).into()];
            a.extend(args);
            let mut c = host.command(&env.python.display().to_string(), &a);
            c.env("ECAL_DATA", ecal::config_dir(case.placement.mode())?);
            c
        }
        Impl::EcalNative => {
            let exe = env.native.as_ref().context("rows with the native eCAL peer need it built")?;
            let mut a = vec![(if publisher { "pub" } else { "sub" }).to_string()];
            a.extend(args);
            a.extend(["--mode".into(), case.placement.mode().into()]);
            let mut c = host.command(&exe.display().to_string(), &a);
            c.env("ECAL_DATA", ecal::config_dir(case.placement.mode())?);
            c
        }
        Impl::WinSocket | Impl::WinNpcap => {
            let wine = env.wine.as_ref().context("Windows rows need Wine")?;
            let transport = if who == Impl::WinSocket { "socket" } else { "npcap" };
            let exe = wine.bin_dir.join(if publisher { "publisher.exe" } else { "subscriber.exe" });
            let mut a = vec![exe.display().to_string()];
            a.extend(args);
            a.extend(["--mode".into(), case.placement.mode().into(), "--transport".into(), transport.into()]);
            let mut c = host.command(&wine.wine64.display().to_string(), &a);
            c.env("WINEPREFIX", wine.prefix(host)).env("WINEDEBUG", "-all");
            c
        }
    };
    cmd.env("MW_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped());
    Ok(cmd)
}

struct Outcome {
    ok: bool,
    sent: u64,
    received: u64,
    digest_match: bool,
    note: String,
}

/// Waits for `child` (killing it after `timeout`); its exit code and standard output. The
/// output is read while the child runs, and after it ends for 5 s at most: a grandchild that
/// inherited the pipe (a Wine server, say) cannot hold this up.
pub(crate) fn wait_output(mut child: Child, timeout: Duration) -> (Option<i32>, String) {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child.stdout.take().map(|mut s| {
        let buf = std::sync::Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(&chunk[..n]);
            }
        })
    });
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(r) = reader {
        let drained = Instant::now() + Duration::from_secs(5);
        while !r.is_finished() && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let out = String::from_utf8_lossy(&buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
    (status, out)
}

fn summaries(out: &str, role: &str) -> BTreeMap<String, Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["role"] == role)
        .filter_map(|v| Some((v["topic"].as_str()?.to_string(), v)))
        .collect()
}

fn run_case(env: &Env, lab: &Lab, idx: usize, case: &Case) -> anyhow::Result<Outcome> {
    let (tx_host, rx_host) = match case.placement {
        Placement::CrossHost => (&lab.a, &lab.b),
        _ => (&lab.a, &lab.a),
    };
    let log = |role: &str| -> anyhow::Result<std::fs::File> {
        Ok(std::fs::File::create(env.logs.join(format!("case{idx:02}-{role}.log")))?)
    };
    let mut rx_cmd = peer_command(env, rx_host, case.receiver, false, case)?;
    rx_cmd.stderr(log("sub")?);
    let rx = rx_cmd.spawn().context("starting subscriber")?;
    // Let the subscriber bind and register before the publisher starts (as in the captures).
    std::thread::sleep(Duration::from_millis(700));
    let mut tx_cmd = peer_command(env, tx_host, case.sender, true, case)?;
    tx_cmd.stderr(log("pub")?);
    let tx = tx_cmd.spawn().context("starting publisher")?;
    let (tx_code, tx_out) = wait_output(tx, Duration::from_secs(60));
    let (rx_code, rx_out) = wait_output(rx, Duration::from_secs(40));
    let pubs = summaries(&tx_out, "pub");
    let subs = summaries(&rx_out, "sub");
    let (mut sent, mut received, mut digest_match) = (0, 0, true);
    let mut notes = Vec::new();
    for t in &case.topics {
        let (Some(p), Some(s)) = (pubs.get(t), subs.get(t)) else {
            digest_match = false;
            notes.push(format!("{t}: missing summary (pub exit {tx_code:?}, sub exit {rx_code:?})"));
            continue;
        };
        let ps = p["sent"].as_u64().unwrap_or(0);
        let sr = s["received"].as_u64().unwrap_or(0);
        sent += ps;
        received += sr;
        if p["sha256"] != s["sha256"] || ps != case.count as u64 || sr != case.count as u64 {
            digest_match = false;
            notes.push(format!("{t}: sent {ps} received {sr}"));
        }
        if matches!(case.receiver, Impl::Ecal | Impl::EcalNative) {
            // A real eCAL subscriber must have seen our publisher as connected and taken its
            // datatype from our registration.
            let dt_ok = s["datatypes"].as_array().is_some_and(|v| v.iter().any(|d| d[0] == "bytes" && d[1] == "raw"));
            if s["publisher_count_max"].as_u64().unwrap_or(0) < 1 || !dt_ok {
                digest_match = false;
                notes.push(format!("{t}: eCAL did not register our publisher ({})", s["datatypes"]));
            }
        }
        if matches!(case.receiver, Impl::OursNpcap | Impl::WinNpcap) {
            // A capture that delivered must also have heard its node's own registration, and
            // never have been judged deaf.
            let d = &s["stats"]["registration"]["transport"]["details"];
            if d["self_heard"].as_u64().unwrap_or(0) == 0 || d["capture_deaf_events"] != 0 {
                digest_match = false;
                notes.push(format!(
                    "{t}: capture self-check: self_heard {} deaf events {}",
                    d["self_heard"], d["capture_deaf_events"]
                ));
            }
        }
        if case.receiver == Impl::OursNpcap
            && case.sender != Impl::OursFrames
            && case.placement == Placement::CrossHost
            && case.size > 1400
        {
            // Messages cut into IPv4 fragments across the veth link (MTU 1500): the capture
            // placed them directly (from the ring into the message buffers), none given up.
            let d = &s["stats"]["data"]["transport"]["details"];
            let lost = d["ip_streams_expired"].as_u64().unwrap_or(0) + d["ip_streams_evicted"].as_u64().unwrap_or(0);
            if d["ip_streamed"].as_u64().unwrap_or(0) == 0 || lost != 0 {
                digest_match = false;
                notes.push(format!("{t}: direct placement: ip_streamed {} given up {lost}", d["ip_streamed"]));
            }
        }
        if case.sender == Impl::OursFrames {
            // Frame-sized datagrams (the veth MTU 1500 less 28), sent in offload buffers.
            let d = &p["data_transport"]["details"];
            if p["frame_size"] != 1472 || (case.size > 1448 && d["send_offload_buffers"].as_u64().unwrap_or(0) == 0) {
                digest_match = false;
                notes.push(format!("{t}: frames mode: frame_size {} offload buffers {}", p["frame_size"], d));
            }
            if case.receiver == Impl::OursNpcap {
                // Nothing for the capture to reassemble below eCAL.
                let d = &s["stats"]["data"]["transport"]["details"];
                if d["ip_fragments"] != 0 || d["ip_streamed"] != 0 {
                    digest_match = false;
                    notes.push(format!("{t}: IP fragments in frames mode: {d}"));
                }
                // veth hands the capture the offload buffers uncut (a real NIC's wire carries
                // the cut frames): the receiver split them, so that path ran.
                let coalesced = s["stats"]["data"]["coalesced_datagrams"].as_u64().unwrap_or(0);
                if case.size > 1448 && coalesced == 0 {
                    digest_match = false;
                    notes.push(format!("{t}: frames mode: no offload buffer seen uncut by the capture"));
                }
            }
        }
        if s["verified"] != Value::Bool(true) {
            digest_match = false;
            notes.push(format!("{t}: payload verification failed"));
        }
    }
    // A real eCAL process that printed a complete, verified summary and then did not exit
    // (killed at the timeout, or a signal in `finalize`) has done everything this case checks
    // of it; that is eCAL's shutdown, not interop. It passes with the anomaly in the note.
    let exit_ok = |who: Impl, role: &str, code: Option<i32>, notes: &mut Vec<String>| match code {
        Some(0) => true,
        None if who == Impl::Ecal && digest_match => {
            notes.push(format!("eCAL {role} did not exit after its summary (see its log)"));
            true
        }
        _ => false,
    };
    let tx_ok = exit_ok(case.sender, "pub", tx_code, &mut notes);
    let rx_ok = exit_ok(case.receiver, "sub", rx_code, &mut notes);
    let ok = digest_match && tx_ok && rx_ok;
    if !ok && notes.is_empty() {
        notes.push(format!("exit codes pub {tx_code:?} sub {rx_code:?}"));
    }
    Ok(Outcome { ok, sent, received, digest_match, note: notes.join("; ") })
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut filter: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => filter = it.next().cloned(),
            other => bail!("interop: unknown argument {other}"),
        }
    }
    crate::run(cargo().args(["build", "--release", "-p", "examples", "--bins"]))?;
    let python = ecal::venv()?;
    let env = Env {
        bin_dir: project_root().join("target").join("release"),
        native: Some(ecal::native_peer(&python)?),
        python,
        logs: project_root().join("target").join("xtask").join("logs"),
        wine: None,
    };
    let selected: Vec<Case> =
        cases().into_iter().filter(|c| filter.as_ref().is_none_or(|f| c.label().contains(f.as_str()))).collect();
    let lab = Lab::new("mwi")?;
    run_matrix(&env, &lab, &selected, "interop")
}

/// Runs `selected` in `lab`, prints the table, writes it to `target/xtask/<name>.md`; fails if
/// any row failed.
pub(crate) fn run_matrix(env: &Env, lab: &Lab, selected: &[Case], name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(&env.logs)?;
    if selected.is_empty() {
        bail!("no {name} case matches the filter");
    }
    let mut table = String::from(
        "| # | sender | receiver | placement | payload | topics | sent | received | digests | result |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failures = 0;
    let started = Instant::now();
    for (i, c) in selected.iter().enumerate() {
        let t0 = Instant::now();
        let o = run_case(env, lab, i, c).unwrap_or_else(|e| Outcome {
            ok: false,
            sent: 0,
            received: 0,
            digest_match: false,
            note: format!("{e:#}"),
        });
        if !o.ok {
            failures += 1;
        }
        eprintln!(
            "[{:>2}/{}] {:<60} {} ({:.1} s){}",
            i + 1,
            selected.len(),
            c.label(),
            if o.ok { "PASS" } else { "FAIL" },
            t0.elapsed().as_secs_f64(),
            if o.note.is_empty() { String::new() } else { format!(" {}", o.note) }
        );
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} B x {} | {} | {} | {} | {} | {} |",
            i + 1,
            c.sender.name(),
            c.receiver.name(),
            c.placement.name(),
            c.size,
            c.count,
            c.topics.len(),
            o.sent,
            o.received,
            if o.digest_match { "match" } else { "MISMATCH" },
            match (o.ok, o.note.is_empty()) {
                (true, true) => "pass".to_string(),
                (true, false) => format!("pass ({})", o.note),
                (false, _) => format!("FAIL {}", o.note),
            }
        );
    }
    println!("{table}");
    let passed = selected.len() - failures;
    eprintln!("{name} matrix took {:.0} s", started.elapsed().as_secs_f64());
    println!("{name}: {passed} passed, {failures} failed");
    std::fs::write(project_root().join("target").join("xtask").join(format!("{name}.md")), &table)?;
    if failures > 0 {
        bail!("{failures} {name} case(s) failed; logs in {}", env.logs.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrices_hold_the_documented_rows() {
        // docs/interop.md: 114 rows, 26 with the native eCAL peer, 24 with our publisher in
        // frames mode; docs/windows.md: 48 Wine rows, half of them on capture.
        let all = cases();
        assert_eq!(all.len(), 114);
        let native = all.iter().filter(|c| c.sender == Impl::EcalNative || c.receiver == Impl::EcalNative);
        assert_eq!(native.count(), 26);
        let frames: Vec<_> = all.iter().filter(|c| c.sender == Impl::OursFrames).collect();
        assert_eq!(frames.len(), 24);
        assert!(frames.iter().all(|c| c.placement != Placement::SameHostLocal && c.topics.len() == 1));
        let wine = wine_cases();
        assert_eq!(wine.len(), 48);
        assert_eq!(wine.iter().filter(|c| c.receiver == Impl::WinNpcap).count(), 16);
        assert!(wine.iter().any(|c| c.sender == Impl::WinSocket && c.receiver == Impl::Ecal));
    }
}
