//! Publishes `mod251` payloads on one or more topics and prints one JSON line per topic.

use anyhow::Context;
use clap::Parser;
use examples::{init_logging, mod251, stop_on_ctrl_c, stopping, CommonArgs, StreamDigest};
use middleware::Raw;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Publish mod251 payloads (byte i of message k = (i + k) mod 251)")]
struct Args {
    /// Topic name; repeat for several topics (messages are interleaved).
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 10)]
    size: usize,
    /// Messages per topic.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Rounds per second (one message per topic per round); 0 = as fast as possible.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds to wait for a subscriber on every topic before sending.
    #[arg(long, default_value_t = 20.0)]
    wait_subscriber: f64,
    /// Seconds to stay after the last message so it can be received and registration seen.
    #[arg(long, default_value_t = 1.0)]
    linger: f64,
    /// Send payload 0 every time instead of regenerating payload k (benchmarks: regenerating a
    /// 1 MiB payload byte by byte costs more than sending it). Receivers must not verify.
    #[arg(long)]
    same_payload: bool,
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
    let node = middleware::open_node(config)?;
    let pubs = args
        .topics
        .iter()
        .map(|t| node.publisher::<Raw>(t).with_context(|| format!("publisher for {t}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wait = Duration::from_secs_f64(args.wait_subscriber);
    for p in &pubs {
        if !p.wait_for_subscriber(wait) {
            anyhow::bail!("no subscriber for topic {} within {:.1} s", p.topic(), args.wait_subscriber);
        }
    }
    let proto = if args.no_digest { StreamDigest::counting_only() } else { StreamDigest::default() };
    let mut digests = vec![proto; pubs.len()];
    let period = if args.rate > 0.0 { Some(Duration::from_secs_f64(1.0 / args.rate)) } else { None };
    let start = Instant::now();
    // One buffer per round, regenerated in place: (i + k) mod 251.
    let mut payload = mod251(args.size, 0);
    for k in 0..args.count {
        if stopping() {
            break;
        }
        if k > 0 && !args.same_payload {
            for b in payload.iter_mut() {
                *b = if *b == 250 { 0 } else { *b + 1 };
            }
        }
        for (p, d) in pubs.iter().zip(digests.iter_mut()) {
            if p.send(&payload)? {
                d.update(&payload);
            } else {
                tracing::warn!(topic = p.topic(), k, "subscriber gone; message not sent");
            }
        }
        if let Some(period) = period {
            let next = start + period * (k as u32 + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    }
    std::thread::sleep(Duration::from_secs_f64(args.linger));
    for (p, d) in pubs.iter().zip(&digests) {
        let line = serde_json::json!({
            "role": "pub", "topic": p.topic(), "sent": d.count, "bytes": d.bytes, "sha256": d.hex(),
            "entity_id": p.entity_id().to_string(), "stats": p.stats(),
            "frame_size": node.frame_size(), "data_transport": node.stats().data.transport,
            "transport": node.transport().to_string(),
            "cpu_s": examples::process_cpu_seconds(),
        });
        println!("{line}");
    }
    Ok(())
}
