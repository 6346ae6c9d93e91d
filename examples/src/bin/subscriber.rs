//! Receives a topic, verifies `mod251` payloads and prints one JSON line per topic; exits 1 when
//! fewer than `--count` messages arrived or a payload failed verification.

use clap::Parser;
use examples::{init_logging, open_node, stop_on_ctrl_c, stopping, CommonArgs, StreamDigest};
use middleware_core::Raw;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Receive and verify messages")]
struct Args {
    /// Topic name; repeat for several topics.
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// Messages expected per topic; 0 = none expected: receive until `--timeout` (or `--idle`).
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Seconds to wait for all messages.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Stop this many seconds after the last message once at least one arrived (benchmarks
    /// with loss); 0 = wait for `--count` or `--timeout`.
    #[arg(long, default_value_t = 0.0)]
    idle: f64,
    /// Payload check: mod251 (message k is byte i = (i + k) mod 251, k counting received
    /// messages), mod251-clock (k = the publisher's clock - 1: still exact after a loss, for
    /// this project's publishers, whose first message has clock 1), counter (`msg-%06d`), none.
    #[arg(long, default_value = "mod251")]
    verify: String,
    /// Count messages without hashing them (benchmarks); the summary's sha256 is then empty.
    #[arg(long)]
    no_digest: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    stop_on_ctrl_c();
    let args = Args::parse();
    let config = args.common.load()?;
    let node = open_node(config)?;
    let subs = args.topics.iter().map(|t| node.subscriber::<Raw>(t)).collect::<Result<Vec<_>, _>>()?;
    let proto = if args.no_digest { StreamDigest::counting_only() } else { StreamDigest::default() };
    let mut digests = vec![proto; subs.len()];
    let mut verified = vec![true; subs.len()];
    let mut first_last: Vec<Option<(Instant, Instant)>> = vec![None; subs.len()];
    // Per topic and publisher: messages, first and last clock, verification failures.
    let mut per_publisher: Vec<BTreeMap<u64, (u64, i64, i64, u64)>> = vec![BTreeMap::new(); subs.len()];
    let mut most_publishers = 0usize;
    let end = Instant::now() + Duration::from_secs_f64(args.timeout);
    'outer: loop {
        let mut done = args.count > 0;
        for (i, s) in subs.iter().enumerate() {
            most_publishers = most_publishers.max(s.publishers().len());
            // Also bounded by the timeout: with `--count 0` a steady stream never leaves this loop.
            while (args.count == 0 || digests[i].count < args.count) && Instant::now() < end && !stopping() {
                let Some(r) = s.recv_timeout(Duration::from_millis(20)) else {
                    done = false;
                    break;
                };
                let k = digests[i].count as usize;
                let ok = match args.verify.as_str() {
                    "mod251" => r.value.iter().enumerate().all(|(j, b)| *b as usize == (j + k) % 251),
                    "mod251-clock" => {
                        let k = (r.clock - 1).rem_euclid(251) as usize;
                        r.value.iter().enumerate().all(|(j, b)| *b as usize == (j + k) % 251)
                    }
                    "counter" => r.value == format!("msg-{k:06}").as_bytes(),
                    _ => true,
                };
                let e = per_publisher[i].entry(r.publisher_id).or_insert((0, r.clock, r.clock, 0));
                (e.0, e.2, e.3) = (e.0 + 1, r.clock, e.3 + u64::from(!ok));
                if !ok {
                    tracing::warn!(topic = s.topic(), k, len = r.value.len(), "payload failed verification");
                    verified[i] = false;
                }
                digests[i].update(&r.value);
                let now = Instant::now();
                first_last[i] = Some(first_last[i].map_or((now, now), |(f, _)| (f, now)));
            }
        }
        let idle = args.idle > 0.0
            && first_last
                .iter()
                .flatten()
                .map(|(_, l)| l.elapsed().as_secs_f64())
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
                .is_some_and(|since_last| since_last >= args.idle);
        if done || idle || Instant::now() >= end || stopping() {
            break 'outer;
        }
    }
    let stats = node.stats();
    let mut ok = true;
    for (i, s) in subs.iter().enumerate() {
        let d = &digests[i];
        ok &= d.count >= args.count && verified[i];
        let line = serde_json::json!({
            "role": "sub", "topic": s.topic(), "received": d.count, "bytes": d.bytes, "sha256": d.hex(),
            "verified": verified[i],
            "transport": examples::TRANSPORT_CHOICE.get(),
            "first_to_last_s": first_last[i].map(|(f, l)| (l - f).as_secs_f64()),
            "cpu_s": examples::process_cpu_seconds(),
            "peak_rss_kib": examples::peak_rss_kib(),
            "publishers": per_publisher[i].iter().map(|(id, (n, first, last, bad))| serde_json::json!({
                "id": id.to_string(), "received": n, "first_clock": first, "last_clock": last, "verify_failures": bad,
            })).collect::<Vec<_>>(),
            "publishers_connected": { "most": most_publishers, "at_end": s.publishers().len() },
            "stats": { "subscriber": s.stats(), "data": stats.data, "registration": stats.registration },
        });
        println!("{line}");
    }
    drop(subs);
    drop(node);
    std::process::exit(if ok { 0 } else { 1 });
}
