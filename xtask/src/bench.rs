//! `cargo xtask bench`: end-to-end throughput over the interop harness's two-namespace veth
//! link, for each payload size and each pair, in one run so the ratios compare like with like:
//!
//! * raw UDP baseline (`benches` crate `raw_udp`): the same datagrams, no middleware (the ceiling);
//! * this project, socket -> socket;
//! * this project, socket publisher -> pcap subscriber;
//! * the capture floor (`benches` crate `raw_capture`): a frames-mode publisher's stream through
//!   our capture transport and one copy of each payload byte, with no middleware core above it;
//! * real eCAL 6.1.1 publisher -> real eCAL subscriber (Python-driven, UDP only).
//!
//! Senders run flat out (no pacing), receivers count what arrives and stop 2 s after the last
//! message. Per row: messages/s and MB/s delivered (first to last message), loss, and receiver
//! CPU time per delivered message (user + system of the whole receiver process, from the
//! kernel's accounting when the harness reaps it with `wait4`: microseconds, not 10 ms ticks). Prints the table and writes it to target/xtask/bench.md; a full run (no
//! options) also replaces the tables of BENCHMARKS.md, keeping its analysis section.
//!
//! Options for partial runs: `--sizes 64,1048576`, `--pairs raw,socket,npcap,ecal`,
//! `--no-latency`, `--latency-only`, `--repeat N` (runs per row, default 3; the table shows the
//! median by msg/s), and `--before DIR`: the socket, npcap, frames-npcap and capture-floor
//! (where DIR has `raw_capture`) pairs also run with the release binaries in DIR (an older
//! build) right before the current ones, for before/after figures from the same run.

use crate::ecal;
use crate::netns::{Host, Lab};
use crate::{cargo, project_root};
use anyhow::{bail, Context};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pair {
    Raw,
    SocketSocket,
    SocketNpcap,
    /// Our socket publisher in `udp.send_mode = frames` -> our socket subscriber.
    FramesSocket,
    /// Our socket publisher in `udp.send_mode = frames` -> our capture subscriber.
    FramesNpcap,
    /// Our socket publisher in `udp.send_mode = frames` -> the capture floor (`benches` crate
    /// `raw_capture`: our capture transport and one copy of each payload byte, no core).
    CaptureFloor,
    /// eCAL 6.1.1 driven through its C++ API (`xtask/peers/ecal_native.cpp`), both sides.
    NativeNative,
    /// Our socket publisher -> the native eCAL subscriber.
    OursNative,
    /// Our socket publisher in `udp.send_mode = frames` -> the native eCAL subscriber.
    FramesNative,
    /// The native eCAL publisher -> our socket subscriber.
    NativeOurs,
    /// eCAL 6.1.1 driven through its Python binding (`ecal_peer.py`), both sides.
    EcalEcal,
}

impl Pair {
    fn name(self) -> &'static str {
        match self {
            Pair::Raw => "raw UDP baseline",
            Pair::SocketSocket => "ours socket -> socket",
            Pair::SocketNpcap => "ours socket -> npcap",
            Pair::FramesSocket => "ours socket, frames -> socket",
            Pair::FramesNpcap => "ours socket, frames -> npcap",
            Pair::CaptureFloor => "ours socket, frames -> capture floor",
            Pair::NativeNative => "eCAL C++ -> eCAL C++",
            Pair::OursNative => "ours socket -> eCAL C++",
            Pair::FramesNative => "ours socket, frames -> eCAL C++",
            Pair::NativeOurs => "eCAL C++ -> ours socket",
            Pair::EcalEcal => "eCAL Python -> eCAL Python",
        }
    }

    /// The `--pairs` name.
    fn key(self) -> &'static str {
        match self {
            Pair::Raw => "raw",
            Pair::SocketSocket => "socket",
            Pair::SocketNpcap => "npcap",
            Pair::FramesSocket => "frames-socket",
            Pair::FramesNpcap => "frames-npcap",
            Pair::CaptureFloor => "capture-floor",
            Pair::NativeNative => "native",
            Pair::OursNative => "ours-native",
            Pair::FramesNative => "frames-native",
            Pair::NativeOurs => "native-ours",
            Pair::EcalEcal => "python",
        }
    }

    const ALL: [Pair; 11] = [
        Pair::Raw,
        Pair::SocketSocket,
        Pair::SocketNpcap,
        Pair::FramesSocket,
        Pair::FramesNpcap,
        Pair::CaptureFloor,
        Pair::NativeNative,
        Pair::OursNative,
        Pair::FramesNative,
        Pair::NativeOurs,
        Pair::EcalEcal,
    ];
}

#[derive(Clone)]
struct Row {
    size: usize,
    pair: Pair,
    /// Run with the `--before DIR` binaries (an older build), for before/after figures.
    before: bool,
    sent: u64,
    received: u64,
    secs: f64,
    cpu_s: f64,
    /// The sender process's CPU time (NaN where it does not report it: the eCAL peer).
    tx_cpu_s: f64,
}

impl Row {
    fn label(&self) -> String {
        if self.before {
            format!("{} (before)", self.pair.name())
        } else {
            self.pair.name().to_string()
        }
    }
    fn msgs_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.received.saturating_sub(1) as f64 / self.secs
        } else {
            0.0
        }
    }
    fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.size as f64 / 1e6
    }
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            1.0 - self.received as f64 / self.sent as f64
        }
    }
    fn tx_cpu_us_per_msg(&self) -> f64 {
        if self.sent == 0 {
            f64::NAN
        } else {
            self.tx_cpu_s * 1e6 / self.sent as f64
        }
    }
    fn cpu_us_per_msg(&self) -> f64 {
        if self.received == 0 {
            f64::NAN
        } else {
            self.cpu_s * 1e6 / self.received as f64
        }
    }
}

/// Messages per row: enough that even the cheapest receiver of a row (the capture path, whose
/// CPU per message is the smallest) uses about a second of CPU, so per-message CPU figures resolve
/// differences well below 2x and its fixed costs (the capture opening its 64 MiB ring: 25-40 ms
/// of page clearing) stay a few percent of the figure. Measured on 2026-12-05: the capture
/// receiver used 1 / 1.2 / 10-17 / 100-190 / 1500-1800 us per message of 64 B / 1 KiB / 64 KiB /
/// 1 MiB / 8 MiB, so the previous 600 000 / 50 000 / 3 000 / 400 messages gave it 0.3-0.8 s.
fn count_for(size: usize) -> u64 {
    match size {
        s if s <= 64 => 1_000_000,
        s if s <= 1024 => 900_000,
        s if s <= 65_536 => 100_000,
        s if s <= 1 << 20 => 7_000,
        _ => 800,
    }
}

fn spawn(host: &Host, prog: &str, args: &[String], ecal_data: Option<&std::path::Path>) -> anyhow::Result<Child> {
    spawn_env(host, prog, args, ecal_data, &[])
}

fn spawn_env(
    host: &Host,
    prog: &str,
    args: &[String],
    ecal_data: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let mut c = host.command(prog, args);
    if let Some(d) = ecal_data {
        c.env("ECAL_DATA", d);
    }
    c.envs(env.iter().copied());
    c.env("MW_LOG", "error").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    c.spawn().with_context(|| format!("starting {prog}"))
}

/// Whether `prog --help` mentions `option`.
fn supports(prog: &str, option: &str) -> bool {
    std::process::Command::new(prog)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(option))
}

/// Waits for the program (killed after `timeout`) and returns its last JSON line and its CPU
/// time (user + system, from the kernel's `wait4` accounting: microseconds, the same method for
/// every build, rather than the 10 ms ticks a program reads from /proc). The program runs as
/// `ip netns exec ... unshare ... sh -c exec prog`: every step execs, so the pid is the program.
fn finish(mut child: Child, timeout: Duration) -> (Value, Option<f64>) {
    let end = Instant::now() + timeout;
    let mut cpu = None;
    let mut reaped = false;
    while Instant::now() < end {
        if let Some(c) = reap(&mut child) {
            cpu = c;
            reaped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !reaped {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    (out.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()).unwrap_or(Value::Null), cpu)
}

/// `Some(cpu seconds)` once the child has exited (reaped here), `None` while it runs. The only
/// platform-specific code of the harness (it runs on Linux; elsewhere there is no figure).
#[cfg(unix)]
#[allow(unsafe_code)]
fn reap(child: &mut Child) -> Option<Option<f64>> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; status is a valid int.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; WNOHANG returns at once.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    match r {
        0 => None,
        r if r == pid => {
            let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
            Some(Some(t(ru.ru_utime) + t(ru.ru_stime)))
        }
        _ => Some(None), // already reaped or not ours: no figure
    }
}

#[cfg(not(unix))]
fn reap(child: &mut Child) -> Option<Option<f64>> {
    matches!(child.try_wait(), Ok(Some(_)) | Err(_)).then_some(None)
}

fn run_pair(
    lab: &Lab,
    pair: Pair,
    size: usize,
    python: &std::path::Path,
    native: &std::path::Path,
    before: Option<&std::path::Path>,
) -> anyhow::Result<Row> {
    let bin = before.map(|p| p.to_path_buf()).unwrap_or_else(|| project_root().join("target").join("release"));
    let count = count_for(size);
    let topic = "bench".to_string();
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--topic".into(), topic.clone(), "--count".into(), count.to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let size_s = size.to_string();
    let (rx, tx) = match pair {
        Pair::Raw => {
            let count_s = count.to_string();
            let r = vec!["recv", "--size", &size_s, "--count", &count_s, "--timeout", "60", "--idle", "2"];
            let t = vec!["send", "--size", &size_s, "--count", &count_s];
            let prog = bin.join("raw_udp").display().to_string();
            let r: Vec<String> = r.into_iter().map(String::from).collect();
            let t: Vec<String> = t.into_iter().map(String::from).collect();
            let rx = spawn(&lab.b, &prog, &r, None)?;
            std::thread::sleep(Duration::from_millis(500));
            let tx = spawn(&lab.a, &prog, &t, None)?;
            (rx, tx)
        }
        Pair::SocketSocket | Pair::SocketNpcap | Pair::FramesSocket | Pair::FramesNpcap | Pair::CaptureFloor => {
            let transport = if matches!(pair, Pair::SocketSocket | Pair::FramesSocket) { "socket" } else { "npcap" };
            let frames = matches!(pair, Pair::FramesSocket | Pair::FramesNpcap | Pair::CaptureFloor);
            let rx = if pair == Pair::CaptureFloor {
                let count_s = count.to_string();
                let r = ["--count", &count_s, "--timeout", "60", "--idle", "2"].map(String::from);
                spawn(&lab.b, &bin.join("raw_capture").display().to_string(), &r, None)?
            } else {
                let sub = bin.join("subscriber").display().to_string();
                let mut sub_args =
                    vec!["--mode", "network", "--transport", transport, "--timeout", "60", "--idle", "2"];
                sub_args.extend(["--verify", "none", "--no-digest"]);
                // Messages taken in a callback on the receive thread, as the eCAL peer does (older
                // builds given with --before may predate the option).
                if supports(&sub, "--callback") {
                    sub_args.push("--callback");
                }
                spawn(&lab.b, &sub, &common(&sub_args), None)?
            };
            std::thread::sleep(Duration::from_millis(700));
            let send_mode: &[(&str, &str)] = if frames { &[("MW_UDP_SEND_MODE", "frames")] } else { &[] };
            let tx = spawn_env(
                &lab.a,
                &bin.join("publisher").display().to_string(),
                &common(&[
                    "--mode",
                    "network",
                    "--size",
                    &size_s,
                    "--rate",
                    "0",
                    "--linger",
                    "0.5",
                    "--no-digest",
                    "--same-payload",
                ]),
                None,
                send_mode,
            )?;
            (rx, tx)
        }
        Pair::NativeNative | Pair::OursNative | Pair::FramesNative | Pair::NativeOurs => {
            let ours_to_native = matches!(pair, Pair::OursNative | Pair::FramesNative);
            let cfg = ecal::config_dir("network")?;
            let native = native.display().to_string();
            let rx = if ours_to_native {
                let mut r = vec!["sub".to_string()];
                r.extend(common(&[
                    "--timeout",
                    "60",
                    "--idle",
                    "2",
                    "--verify",
                    "none",
                    "--no-digest",
                    "--mode",
                    "network",
                ]));
                spawn(&lab.b, &native, &r, Some(&cfg))?
            } else {
                let sub = bin.join("subscriber").display().to_string();
                let mut sub_args = vec!["--mode", "network", "--transport", "socket", "--timeout", "60", "--idle", "2"];
                sub_args.extend(["--verify", "none", "--no-digest", "--callback"]);
                if pair == Pair::NativeNative {
                    let mut r = vec!["sub".to_string()];
                    r.extend(common(&[
                        "--timeout",
                        "60",
                        "--idle",
                        "2",
                        "--verify",
                        "none",
                        "--no-digest",
                        "--mode",
                        "network",
                    ]));
                    spawn(&lab.b, &native, &r, Some(&cfg))?
                } else {
                    spawn(&lab.b, &sub, &common(&sub_args), None)?
                }
            };
            std::thread::sleep(Duration::from_millis(1000));
            let tx = if ours_to_native {
                let args = ["--mode", "network", "--size", &size_s, "--rate", "0", "--linger", "0.5", "--no-digest"];
                let send_mode: &[(&str, &str)] =
                    if pair == Pair::FramesNative { &[("MW_UDP_SEND_MODE", "frames")] } else { &[] };
                spawn_env(
                    &lab.a,
                    &bin.join("publisher").display().to_string(),
                    &common(&[&args[..], &["--same-payload"]].concat()),
                    None,
                    send_mode,
                )?
            } else {
                let mut t = vec!["pub".to_string()];
                t.extend(common(&[
                    "--size",
                    &size_s,
                    "--rate",
                    "0",
                    "--linger",
                    "0.5",
                    "--no-digest",
                    "--mode",
                    "network",
                ]));
                spawn(&lab.a, &native, &t, Some(&cfg))?
            };
            (rx, tx)
        }
        Pair::EcalEcal => {
            let cfg = ecal::config_dir("network")?;
            let script = ecal::peer_script().display().to_string();
            let py = python.display().to_string();
            let mut r = vec![script.clone(), "sub".into()];
            r.extend(common(&["--timeout", "60", "--idle", "2", "--verify", "none", "--no-digest"]));
            let mut t = vec![script, "pub".into()];
            t.extend(common(&["--size", &size_s, "--rate", "0", "--linger", "0.5", "--no-digest"]));
            let rx = spawn(&lab.b, &py, &r, Some(&cfg))?;
            std::thread::sleep(Duration::from_millis(1500));
            let tx = spawn(&lab.a, &py, &t, Some(&cfg))?;
            (rx, tx)
        }
    };
    let (p, p_cpu) = finish(tx, Duration::from_secs(120));
    let (s, s_cpu) = finish(rx, Duration::from_secs(90));
    // The full summaries (every counter) for a look at where losses were counted.
    let logs = project_root().join("target").join("xtask").join("logs");
    let name = format!("bench-{size}-{:?}{}", pair, if before.is_some() { "-before" } else { "" });
    let _ = std::fs::create_dir_all(&logs);
    let _ = std::fs::write(logs.join(format!("{name}.json")), format!("{p}\n{s}\n"));
    Ok(Row {
        size,
        pair,
        before: before.is_some(),
        sent: p["sent"].as_u64().unwrap_or(0),
        received: s["received"].as_u64().unwrap_or(0),
        secs: s["first_to_last_s"].as_f64().unwrap_or(0.0),
        cpu_s: s_cpu.or_else(|| s["cpu_s"].as_f64()).unwrap_or(f64::NAN),
        tx_cpu_s: p_cpu.or_else(|| p["cpu_s"].as_f64()).unwrap_or(f64::NAN),
    })
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1024 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// Round-trip latency: `pingpong pong` in host B, `pingpong ping` in host A.
fn latency(
    lab: &Lab,
    transport: &str,
    immediate: bool,
    size: usize,
    before: Option<&std::path::Path>,
) -> anyhow::Result<Value> {
    let bin = before.map(|p| p.to_path_buf()).unwrap_or_else(|| project_root().join("target").join("release"));
    let prog = bin.join("pingpong").display().to_string();
    let common = |role: &str| -> Vec<String> {
        // The transport options belong to the program, before the subcommand.
        vec!["--mode".into(), "network".into(), "--transport".into(), transport.into(), role.into()]
    };
    let mut pong_args = common("pong");
    pong_args.extend(["--seconds".into(), "60".into()]);
    let mut pong = lab.b.command(&prog, &pong_args);
    pong.env("MW_NPCAP_IMMEDIATE", immediate.to_string()).env("MW_LOG", "error");
    let pong = pong.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    let mut ping_args = common("ping");
    ping_args.extend(["--size".into(), size.to_string(), "--count".into(), "2000".into()]);
    let mut ping = lab.a.command(&prog, &ping_args);
    ping.env("MW_NPCAP_IMMEDIATE", immediate.to_string()).env("MW_LOG", "error");
    let ping = ping.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let (v, _) = finish(ping, Duration::from_secs(90));
    let mut pong = pong;
    let _ = pong.kill();
    let _ = pong.wait();
    Ok(v)
}

/// Where the hand-written analysis of BENCHMARKS.md starts; a full run keeps it.
const ANALYSIS: &str = "## Against the targets";

/// Refuses unknown or incomplete arguments: a mistyped option must not start a long run of
/// every row.
fn check_args(args: &[String]) -> anyhow::Result<()> {
    const VALUED: [&str; 4] = ["--sizes", "--pairs", "--before", "--repeat"];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            v if VALUED.contains(&v) => {
                it.next().with_context(|| format!("bench: {v} needs a value"))?;
            }
            "--no-latency" | "--latency-only" => {}
            other => bail!("bench: unknown argument {other} (cargo xtask help)"),
        }
    }
    Ok(())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    check_args(args)?;
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--sizes") {
        Some(i) => args.get(i + 1).context("--sizes LIST")?.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
        None => vec![64, 1024, 65_536, 1 << 20, 8 << 20],
    };
    crate::run(cargo().args(["build", "--release", "-p", "examples", "-p", "benches", "--bins"]))?;
    let latency_only = args.iter().any(|a| a == "--latency-only");
    let no_latency = args.iter().any(|a| a == "--no-latency");
    let pair_keys = Pair::ALL.map(Pair::key).join(",");
    let pairs: Vec<Pair> = match args.iter().position(|a| a == "--pairs") {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("--pairs LIST ({pair_keys})"))?
            .split(',')
            .map(|p| {
                Pair::ALL
                    .into_iter()
                    .find(|x| x.key() == p || (p == "ecal" && *x == Pair::EcalEcal))
                    .with_context(|| format!("--pairs: unknown pair `{p}` ({pair_keys})"))
            })
            .collect::<Result<_, _>>()?,
        None => Pair::ALL.to_vec(),
    };
    let before: Option<std::path::PathBuf> = match args.iter().position(|a| a == "--before") {
        Some(i) => Some(args.get(i + 1).context("--before DIR (release binaries of an older build)")?.into()),
        None => None,
    };
    let repeat: usize = match args.iter().position(|a| a == "--repeat") {
        Some(i) => args.get(i + 1).context("--repeat N")?.parse().context("--repeat N")?,
        None => 3,
    };
    // Only a run of every size, pair and latency row replaces the tables in BENCHMARKS.md.
    let full = args.is_empty();
    let python = ecal::venv()?;
    let native = ecal::native_peer(&python)?;
    let lab = Lab::new("mwb")?;
    let mut all_runs = Vec::new();
    for &size in sizes.iter().filter(|_| !latency_only) {
        // The pairs take turns, `repeat` rounds: a slow spell of the machine hits all of them.
        for _round in 0..repeat {
            for &pair in pairs.iter() {
                // A message that fits one frame goes out the same in either send mode.
                if matches!(pair, Pair::FramesSocket | Pair::FramesNpcap | Pair::FramesNative | Pair::CaptureFloor)
                    && size <= 1024
                {
                    continue;
                }
                // With --before DIR, the pairs whose receive side changes with our builds also run with
                // DIR's binaries, right before.
                let runs: &[Option<&std::path::Path>] = match (&before, pair) {
                    (Some(dir), Pair::SocketSocket | Pair::SocketNpcap | Pair::FramesNpcap | Pair::CaptureFloor)
                        if pair != Pair::CaptureFloor || dir.join("raw_capture").exists() =>
                    {
                        &[Some(dir.as_path()), None]
                    }
                    _ => &[None],
                };
                for &b in runs {
                    let r = run_pair(&lab, pair, size, &python, &native, b)?;
                    eprintln!(
                        "{:>8} {:<35} {:>10.0} msg/s {:>8.1} MB/s loss {:>5.1}% cpu {:>8.2} us/msg sender {:>8.2} us/msg",
                        human(size),
                        r.label(),
                        r.msgs_per_s(),
                        r.mb_per_s(),
                        r.loss() * 100.0,
                        r.cpu_us_per_msg(),
                        r.tx_cpu_us_per_msg()
                    );
                    all_runs.push(r);
                }
            }
        }
    }
    // Per size, pair and build: the run with the median delivered rate.
    let mut rows: Vec<Row> = Vec::new();
    for r in &all_runs {
        if rows.iter().any(|m| (m.size, m.pair, m.before) == (r.size, r.pair, r.before)) {
            continue;
        }
        let mut same: Vec<&Row> =
            all_runs.iter().filter(|x| (x.size, x.pair, x.before) == (r.size, r.pair, r.before)).collect();
        same.sort_by(|a, b| a.msgs_per_s().total_cmp(&b.msgs_per_s()));
        rows.push(same[same.len() / 2].clone());
    }
    let mut lat_rows = Vec::new();
    let mut configs: Vec<(&str, &str, bool, Option<&std::path::Path>)> = vec![
        ("socket", "socket", false, None),
        ("npcap, immediate", "npcap", true, None),
        ("npcap, blocks (2 ms)", "npcap", false, None),
    ];
    if let Some(dir) = &before {
        configs.splice(
            0..0,
            [
                ("socket (before)", "socket", false, Some(dir.as_path())),
                ("npcap, immediate (before)", "npcap", true, Some(dir.as_path())),
            ],
        );
    }
    for size in [64usize, 65_536].into_iter().filter(|_| !no_latency) {
        // As above: `repeat` rounds with the configurations taking turns, then the median by p50.
        let mut runs: Vec<(&str, Value)> = Vec::new();
        for _round in 0..repeat {
            for &(label, transport, immediate, b) in &configs {
                let v = latency(&lab, transport, immediate, size, b)?;
                eprintln!(
                    "latency {:>8} {:<22} p50 {} us p99 {} us lost {}",
                    human(size),
                    label,
                    v["p50_us"],
                    v["p99_us"],
                    v["lost"]
                );
                runs.push((label, v));
            }
        }
        for &(label, ..) in &configs {
            let mut same: Vec<&Value> = runs.iter().filter(|(l, _)| *l == label).map(|(_, v)| v).collect();
            same.sort_by(|a, b| {
                let p = |v: &Value| v["p50_us"].as_f64().unwrap_or(f64::INFINITY);
                p(a).total_cmp(&p(b))
            });
            lat_rows.push((size, label, same[same.len() / 2].clone()));
        }
    }
    drop(lab);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut md = format!(
        "# Benchmarks\n\nOne run of `cargo xtask bench` on {cores} cores, kernel {}; every row is the median (by msg/s) of {repeat} \
         runs, the pairs taking turns. Two network namespaces joined by a veth \
         pair (MTU 1500), sender in one, receiver in the other. Senders run flat out; receivers count what arrives. \
         msg/s and MB/s are delivered rates (first to last message at the receiver); loss is 1 - received/sent; \
         receiver / sender CPU is the process's user+system time per delivered / sent message (the sender's \
         includes the kernel's work for the link, done in its context). Our subscriber takes messages in a \
         callback on the receive thread (`--callback`), as the eCAL peers do. The raw baseline sends the same \
         datagrams with no middleware and counts datagrams (a message = its datagram count, not checked for \
         completeness, so it is an upper bound). The capture floor receives our `frames` stream through our \
         capture transport with no middleware core above it, only one copy of each payload byte into a buffer \
         of the message's own (`benches` crate `raw_capture`): the floor under our capture subscriber's CPU. eCAL is eclipse-ecal 6.1.1 from PyPI, configured UDP only: \
         `eCAL C++` drives the wheel's `libecal_core.so.6` through its C++ API (`xtask/peers/ecal_native.cpp`, \
         built by the xtask), as eCAL's users run it, and is the reference of the ratios; `eCAL Python` drives \
         the same library through its Python binding, whose per-message callback limits it (kept for \
         comparison, not as eCAL's speed).\n\n\
         | payload | pair | sent | received | msg/s | MB/s | loss | receiver CPU/msg | sender CPU/msg | ours/raw (MB/s) | ours/eCAL C++ (MB/s) | receiver CPU, ours/eCAL C++ |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        kernel.trim()
    );
    for &size in &sizes {
        let of = |p: Pair| rows.iter().find(|r| r.size == size && r.pair == p);
        let (raw, native) = (of(Pair::Raw).map(Row::mb_per_s), of(Pair::NativeNative).map(Row::mb_per_s));
        let native_cpu = of(Pair::NativeNative).map(Row::cpu_us_per_msg);
        for r in rows.iter().filter(|r| r.size == size) {
            let ratio = |base: Option<f64>| match (r.pair, base) {
                (Pair::SocketSocket | Pair::SocketNpcap | Pair::FramesSocket | Pair::FramesNpcap, Some(b))
                    if b > 0.0 =>
                {
                    format!("{:.2}", r.mb_per_s() / b)
                }
                _ => String::new(),
            };
            let cpu_ratio = match (r.pair, native_cpu) {
                (Pair::SocketSocket | Pair::SocketNpcap | Pair::FramesSocket | Pair::FramesNpcap, Some(b))
                    if b > 0.0 =>
                {
                    format!("{:.2}", r.cpu_us_per_msg() / b)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1}% | {:.2} us | {} | {} | {} | {} |",
                human(size),
                r.label(),
                r.sent,
                r.received,
                r.msgs_per_s(),
                r.mb_per_s(),
                r.loss() * 100.0,
                r.cpu_us_per_msg(),
                if r.tx_cpu_s.is_nan() { "-".to_string() } else { format!("{:.2} us", r.tx_cpu_us_per_msg()) },
                ratio(raw),
                ratio(native),
                cpu_ratio
            );
        }
    }
    md.push_str(
        "\n## Round-trip latency (ping-pong, cross-host, both processes on the named transport; median by p50 of the runs)\n\n\
         | payload | transport | p50 | p99 | round trips | lost |\n|---|---|---|---|---|---|\n",
    );
    for (size, label, v) in &lat_rows {
        let us = |k: &str| v[k].as_f64().map(|x| format!("{x:.0} us")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            human(*size),
            label,
            us("p50_us"),
            us("p99_us"),
            v["round_trips"],
            v["lost"]
        );
    }
    println!("{md}");
    let out = project_root().join("target").join("xtask");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("bench.md"), &md)?;
    if full {
        // The hand-written analysis from "## Against the targets" on is kept.
        let path = project_root().join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let analysis = old.find(ANALYSIS).map(|i| &old[i..]).unwrap_or("");
        std::fs::write(&path, format!("{md}\n{analysis}"))?;
        eprintln!("wrote BENCHMARKS.md (tables; analysis section kept) and target/xtask/bench.md");
    } else {
        eprintln!("partial run: wrote target/xtask/bench.md only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Arguments are checked (first thing `run` does) before anything is built or run: a typo
    /// must not start every row.
    #[test]
    fn unknown_or_incomplete_arguments_are_refused() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = super::check_args(&args(&["--help-me"])).unwrap_err().to_string();
        assert!(err.contains("unknown argument --help-me"), "{err}");
        let err = super::check_args(&args(&["--no-latency", "--pairs"])).unwrap_err().to_string();
        assert!(err.contains("--pairs needs a value"), "{err}");
        super::check_args(&args(&["--sizes", "64,1024", "--pairs", "npcap", "--repeat", "1", "--no-latency"]))
            .expect("the documented options pass");
    }
}
