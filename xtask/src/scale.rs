//! `cargo xtask scale [--processes 10,50,200] [--topics 10] [--ecal 10,50,100] [--before DIR]
//! [--receive-buffer BYTES] [--check]`: how registration
//! cost grows with the number of processes and entities, ours and real eCAL 6.1.1 (the native
//! C++ peer), in the two-namespace lab.
//!
//! Each process (`scale_node`, or `ecal_native scale`) has M publishers and M subscribers on the
//! shared topics `scale_0 .. scale_{M-1}` and sends no data: all it costs is registration.
//! Processes alternate between the two hosts and start as fast as they can be spawned.
//! Measured per size: discovery time (start of the last process until every subscriber of every
//! process sees all N publishers of its topic), registration CPU per process at steady state
//! (median and max, % of one core, from the scheduler's nanosecond accounting), registration
//! datagrams and bytes received per second per process, peak RSS, registration losses (ours:
//! kernel drops on the registration socket, decode failures, table overflow), and how long a
//! process killed with SIGKILL takes to disappear from every other process's table.

use crate::netns::{Host, Lab};
use crate::{cargo, ecal, project_root};
use anyhow::{bail, Context};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Ours,
    /// Ours, with the `scale_node` of an older build (`--before DIR`).
    OursBefore,
    Ecal,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Ours => "ours",
            Who::OursBefore => "ours (before)",
            Who::Ecal => "eCAL 6.1.1 C++",
        }
    }
}

/// One running process and the JSON lines it printed, with when they arrived.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Proc {
    fn events(&self, kind: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|v| v["event"] == kind)
            .cloned()
            .collect()
    }
    fn has(&self, kind: &str) -> bool {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|v| v["event"] == kind)
    }
}

fn spawn(
    host: &Host,
    prog: &str,
    args: &[String],
    ecal_data: Option<&std::path::Path>,
    receive_buffer: Option<&str>,
) -> anyhow::Result<Proc> {
    let mut c = host.command(prog, args);
    if let Some(d) = ecal_data {
        c.env("ECAL_DATA", d);
    }
    if let Some(b) = receive_buffer {
        c.env("MW_UDP_RECEIVE_BUFFER", b);
    }
    c.env("MW_LOG", "error").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = c.spawn().with_context(|| format!("starting {prog}"))?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().context("stdout")?;
    let l = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                l.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(v);
            }
        }
    });
    Ok(Proc { child, lines })
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").args(["-s", sig, &child.id().to_string()]).status();
}

#[derive(Debug, Clone, Default)]
struct Row {
    who: &'static str,
    processes: usize,
    entities: usize,
    discovered: usize,
    discovery_s: f64,
    cpu_median: f64,
    cpu_max: f64,
    dgrams_per_s: f64,
    bytes_per_s: f64,
    rss_kib_median: f64,
    losses: u64,
    gone_s: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_size(
    lab: &Lab,
    who: Who,
    n: usize,
    m: usize,
    native: &std::path::Path,
    before: Option<&std::path::Path>,
    receive_buffer: Option<&str>,
) -> anyhow::Result<Row> {
    let dir = match (who, before) {
        (Who::OursBefore, Some(d)) => d.to_path_buf(),
        _ => project_root().join("target").join("release"),
    };
    let bin = dir.join("scale_node").display().to_string();
    let cfg = ecal::config_dir("network")?;
    // Long enough for a slow discovery, the window and the disappearance of a killed process.
    let duration = 60.0 + n as f64 * 0.3;
    let mut procs = Vec::with_capacity(n);
    for i in 0..n {
        let host = if i % 2 == 0 { &lab.a } else { &lab.b };
        let common = [
            "--topics".to_string(),
            m.to_string(),
            "--expect".into(),
            n.to_string(),
            "--duration".into(),
            duration.to_string(),
        ];
        let p = match who {
            Who::Ours | Who::OursBefore => {
                let mut a = common.to_vec();
                a.extend(["--mode".into(), "network".into()]);
                spawn(host, &bin, &a, None, receive_buffer)?
            }
            Who::Ecal => {
                let mut a = vec!["scale".to_string()];
                a.extend(common);
                a.extend(["--mode".into(), "network".into()]);
                spawn(host, &native.display().to_string(), &a, Some(&cfg), None)?
            }
        };
        procs.push(p);
    }
    eprintln!("scale {:<14} {n:>4} processes started", who.name());
    // Discovery, then the measurement window of every process.
    let deadline = Instant::now() + Duration::from_secs_f64(duration - 15.0);
    while Instant::now() < deadline && !procs.iter().all(|p| p.has("window") || p.has("gave_up")) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let found: Vec<Value> = procs.iter().filter_map(|p| p.events("discovered").pop()).collect();
    let windows: Vec<Value> = procs.iter().filter_map(|p| p.events("window").pop()).collect();
    let last_start = found.iter().filter_map(|v| v["start_unix_us"].as_u64()).max().unwrap_or(0);
    let last_found = found.iter().filter_map(|v| v["discovered_unix_us"].as_u64()).max().unwrap_or(0);
    let f = |k: &str| windows.iter().filter_map(|v| v[k].as_f64()).collect::<Vec<f64>>();
    let cpu = f("cpu_pct");
    let losses: u64 = windows
        .iter()
        .map(|v| {
            [
                "reg_os_dropped",
                "reg_bad_frame",
                "reg_bad_protobuf",
                "reg_table_full",
                "reg_lost_messages",
                "reg_truncated",
            ]
            .iter()
            .filter_map(|k| v[*k].as_u64())
            .sum::<u64>()
        })
        .sum();
    let breakdown: Vec<String> =
        ["reg_os_dropped", "reg_bad_frame", "reg_bad_protobuf", "reg_table_full", "reg_lost_messages", "reg_truncated"]
            .iter()
            .map(|k| format!("{k}={}", windows.iter().filter_map(|v| v[*k].as_u64()).sum::<u64>()))
            .chain([
                format!(
                    "(of the kernel drops, {} in the steady-state window)",
                    windows.iter().filter_map(|v| v["reg_os_dropped_in_window"].as_u64()).sum::<u64>()
                ),
                format!("(unchanged samples, not decoded: {:.1} % of those received)", median(f("reg_unchanged_pct"))),
            ])
            .collect();
    if who != Who::Ecal {
        eprintln!(
            "scale {:<14} {n:>4} processes: losses by kind {}; registration receive buffer granted {:?}",
            who.name(),
            breakdown.join(" "),
            windows.first().map(|v| v["receive_buffer_granted"].clone())
        );
    }
    let mut row = Row {
        who: who.name(),
        processes: n,
        entities: 2 * n * m,
        discovered: found.len(),
        discovery_s: if found.len() == n { (last_found.saturating_sub(last_start)) as f64 / 1e6 } else { f64::NAN },
        cpu_median: median(cpu.clone()),
        cpu_max: cpu.iter().copied().fold(f64::NAN, f64::max),
        dgrams_per_s: median(f("reg_datagrams_per_s")),
        bytes_per_s: median(f("reg_bytes_per_s")),
        rss_kib_median: median(f("peak_rss_kib")),
        losses,
        gone_s: None,
    };
    // Kill one process outright; time until every other process's table lost its entities.
    if found.len() == n && n > 1 {
        let victim = procs.remove(0);
        // Each process says what it counts and by how much one gone process lowers it.
        let before: Vec<(u64, u64)> = procs
            .iter()
            .map(|p| {
                let t = p.events("tick").last().cloned().unwrap_or(Value::Null);
                (t["count"].as_u64().unwrap_or(0), t["drop_per_process"].as_u64().unwrap_or(0))
            })
            .collect();
        let killed_at = unix_us();
        signal(&victim.child, "KILL");
        let target = |(count, drop): (u64, u64)| count.saturating_sub(drop);
        let until = Instant::now() + Duration::from_secs(40);
        let mut gone: Vec<Option<u64>> = vec![None; procs.len()];
        while Instant::now() < until && gone.iter().any(Option::is_none) {
            for (i, p) in procs.iter().enumerate() {
                if gone[i].is_none() {
                    gone[i] = p
                        .events("tick")
                        .iter()
                        .filter(|v| v["unix_us"].as_u64().unwrap_or(0) > killed_at)
                        .find(|v| v["count"].as_u64().is_some_and(|c| c <= target(before[i])))
                        .and_then(|v| v["unix_us"].as_u64());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if gone.iter().all(Option::is_some) {
            row.gone_s = gone.iter().flatten().max().map(|t| t.saturating_sub(killed_at) as f64 / 1e6);
        }
        let mut v = victim;
        let _ = v.child.wait();
    }
    for p in &procs {
        signal(&p.child, "TERM");
    }
    let end = Instant::now() + Duration::from_secs(20);
    for mut p in procs {
        while Instant::now() < end && matches!(p.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    eprintln!(
        "scale {:<14} {n:>4} processes {:>5} entities: discovered {}/{n}, discovery {:.2} s, CPU {:.1} % (max {:.1}), {:.0} reg datagrams/s, {:.0} kB/s, RSS {:.0} KiB, losses {}, killed process gone after {}",
        row.who,
        row.entities,
        row.discovered,
        row.discovery_s,
        row.cpu_median,
        row.cpu_max,
        row.dgrams_per_s,
        row.bytes_per_s / 1e3,
        row.rss_kib_median,
        row.losses,
        row.gone_s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
    );
    Ok(row)
}

fn list(args: &[String], flag: &str, default: &[usize]) -> anyhow::Result<Vec<usize>> {
    match args.iter().position(|a| a == flag) {
        // `none`: an empty list (e.g. `--ecal none`).
        Some(i) if args.get(i + 1).is_some_and(|v| v == "none") => Ok(Vec::new()),
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{flag} LIST"))?
            .split(',')
            .map(|s| s.parse().with_context(|| format!("{flag}: {s} is not a number")))
            .collect(),
        None => Ok(default.to_vec()),
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    const USAGE: &str = "--processes N,.. --topics M --ecal N,.. --before DIR --receive-buffer BYTES --check";
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !["--processes", "--topics", "--ecal", "--before", "--receive-buffer", "--check"].contains(&a.as_str()) {
            bail!("scale: unknown option {a} ({USAGE})");
        }
    }
    // `--receive-buffer BYTES`: our processes' `udp.receive_buffer` (the registration socket's
    // too), to measure a start-up burst against a small buffer.
    let receive_buffer = match args.iter().position(|a| a == "--receive-buffer") {
        Some(i) => Some(args.get(i + 1).context("--receive-buffer BYTES")?.as_str()),
        None => None,
    };
    // `--check`: fail unless every size of ours discovered everything, lost no registration and
    // saw the killed process disappear, and every eCAL size discovered everything (CI runs
    // `--processes 10 --ecal 10 --check`).
    let check = args.iter().any(|a| a == "--check");
    let sizes = list(args, "--processes", &[10, 50, 200])?;
    let m = *list(args, "--topics", &[10])?.first().context("--topics M")?;
    let ecal_sizes = list(args, "--ecal", &[10, 50, 100])?;
    // `--before DIR`: DIR/scale_node (an older build) runs right before ours at every size.
    let before: Option<std::path::PathBuf> = match args.iter().position(|a| a == "--before") {
        Some(i) => Some(args.get(i + 1).context("--before DIR")?.into()),
        None => None,
    };
    crate::run(cargo().args(["build", "--release", "-p", "examples", "--bins"]))?;
    let python = ecal::venv()?;
    let native = ecal::native_peer(&python)?;
    let lab = Lab::new("mws")?;
    let mut rows = Vec::new();
    for &n in &sizes {
        if before.is_some() {
            rows.push(run_size(&lab, Who::OursBefore, n, m, &native, before.as_deref(), receive_buffer)?);
        }
        rows.push(run_size(&lab, Who::Ours, n, m, &native, None, receive_buffer)?);
    }
    for &n in &ecal_sizes {
        rows.push(run_size(&lab, Who::Ecal, n, m, &native, None, None)?);
    }
    drop(lab);
    let mut md = String::from(
        "| implementation | processes | entities | discovered | discovery s | registration CPU % (median / max) | registration datagrams/s | registration kB/s | peak RSS MiB | registration losses | killed process gone after s |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let num = |x: f64, digits: usize| if x.is_nan() { "-".to_string() } else { format!("{x:.digits$}") };
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}/{} | {} | {} / {} | {} | {} | {} | {} | {} |",
            r.who,
            r.processes,
            r.entities,
            r.discovered,
            r.processes,
            num(r.discovery_s, 2),
            num(r.cpu_median, 1),
            num(r.cpu_max, 1),
            num(r.dgrams_per_s, 0),
            num(r.bytes_per_s / 1e3, 0),
            num(r.rss_kib_median / 1024.0, 1),
            if r.who.starts_with("ours") { r.losses.to_string() } else { "n/a".into() },
            r.gone_s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
        );
    }
    println!("{md}");
    let out = project_root().join("target").join("xtask");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("scale.md"), &md)?;
    if check {
        let bad: Vec<String> = rows
            .iter()
            .filter(|r| {
                r.discovered != r.processes
                    || (r.who == Who::Ours.name() && (r.losses != 0 || r.gone_s.is_none() || r.processes < 2))
            })
            .map(|r| {
                format!(
                    "{} at {} processes: discovered {}/{}, losses {}, killed process gone {:?}",
                    r.who, r.processes, r.discovered, r.processes, r.losses, r.gone_s
                )
            })
            .collect();
        if !bad.is_empty() {
            bail!("scale --check failed:\n{}", bad.join("\n"));
        }
        eprintln!("scale --check: every size discovered every match, ours lost no registration");
    }
    Ok(())
}
