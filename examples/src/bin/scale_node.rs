//! One process of the scale test (`cargo xtask scale`): a node with `--topics M` publishers and
//! M subscribers on the shared topics `scale_0 .. scale_{M-1}`, sending no data, so everything it
//! costs is registration. Prints JSON lines on standard output:
//! * `{"event":"discovered", ...}` once every subscriber sees `--expect` publishers of its topic;
//! * `{"event":"window", ...}` after `--settle` more seconds: CPU (on-CPU time of all threads,
//!   nanosecond clock), registration datagrams and bytes received per second over `--window`,
//!   peak RSS, remote table size, registration losses;
//! * `{"event":"tick", ...}` every 200 ms from then on: the remote entity count (the harness
//!   times how long a killed process takes to disappear).
//!
//! Runs until `--duration` or SIGINT/SIGTERM.

use clap::Parser;
use examples::{init_logging, peak_rss_kib, stop_on_ctrl_c, stopping, CommonArgs};
use middleware::Raw;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(about = "A registration-only node for the scale test")]
struct Args {
    /// Publishers and subscribers of this process (one of each per shared topic).
    #[arg(long, default_value_t = 10)]
    topics: usize,
    /// Publishers each subscriber must see before the process counts as discovered.
    #[arg(long)]
    expect: usize,
    /// Seconds after discovery before the measurement window.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Seconds to run in all.
    #[arg(long, default_value_t = 120.0)]
    duration: f64,
    #[command(flatten)]
    common: CommonArgs,
}

fn unix_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

/// On-CPU time of every thread of this process, in seconds, from the scheduler's nanosecond
/// accounting (`/proc/self/task/*/schedstat`); threads that ended are not counted, so take
/// differences over a window in which no thread ends.
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

fn main() -> anyhow::Result<()> {
    init_logging();
    stop_on_ctrl_c();
    let args = Args::parse();
    let start = Instant::now();
    let start_us = unix_us();
    let node = middleware::open_node(args.common.load()?)?;
    let topics: Vec<String> = (0..args.topics).map(|k| format!("scale_{k}")).collect();
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for t in &topics {
        pubs.push(node.publisher::<Raw>(t)?);
        subs.push(node.subscriber::<Raw>(t)?);
    }
    let end = start + Duration::from_secs_f64(args.duration);
    let mut discovered: Option<Instant> = None;
    while discovered.is_none() {
        if stopping() || Instant::now() >= end {
            println!("{}", serde_json::json!({"event": "gave_up", "after_s": start.elapsed().as_secs_f64()}));
            return Ok(());
        }
        if subs.iter().all(|s| s.publishers().len() >= args.expect) {
            discovered = Some(Instant::now());
            println!(
                "{}",
                serde_json::json!({
                    "event": "discovered",
                    "start_unix_us": start_us as u64,
                    "discovered_unix_us": unix_us() as u64,
                    "after_s": start.elapsed().as_secs_f64(),
                })
            );
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    let (c0, s0, t0) = (cpu_ns(), node.stats().registration, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(args.window));
    let (c1, s1, secs) = (cpu_ns(), node.stats().registration, t0.elapsed().as_secs_f64());
    let entities = node.remote_entities().len();
    println!(
        "{}",
        serde_json::json!({
            "event": "window",
            "cpu_pct": (c1.saturating_sub(c0)) as f64 / 1e9 / secs * 100.0,
            "reg_datagrams_per_s": (s1.transport.received_datagrams - s0.transport.received_datagrams) as f64 / secs,
            "reg_bytes_per_s": (s1.transport.received_bytes - s0.transport.received_bytes) as f64 / secs,
            "peak_rss_kib": peak_rss_kib(),
            "remote_entities": entities,
            "remote_processes": node.remote_processes().len(),
            "reg_os_dropped": s1.transport.os_dropped,
            // Of those, in the steady-state window (the rest were lost in the start-up burst).
            "reg_os_dropped_in_window": s1.transport.os_dropped - s0.transport.os_dropped,
            "reg_bad_frame": s1.bad_frame,
            "reg_bad_protobuf": s1.bad_protobuf,
            "reg_table_full": s1.registration_table_full,
            "reg_over_budget": s1.registration_over_budget,
            "reg_lost_messages": s1.reassembly.lost_messages(),
            "reg_truncated": s1.transport.truncated,
            // Samples recognised as unchanged (not decoded), % of those received in the window.
            "reg_unchanged_pct": (s1.registration_unchanged - s0.registration_unchanged) as f64 * 100.0
                / (s1.transport.received_datagrams - s0.transport.received_datagrams).max(1) as f64,
            "receive_buffer_granted": s1.transport.receive_buffer_granted,
        })
    );
    while !stopping() && Instant::now() < end {
        println!(
            "{}",
            serde_json::json!({
                "event": "tick",
                "unix_us": unix_us() as u64,
                // Remote entities; a process that is gone takes its 2 M entities with it.
                "count": node.remote_entities().len(),
                "drop_per_process": 2 * args.topics,
            })
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((pubs, subs));
    Ok(())
}
