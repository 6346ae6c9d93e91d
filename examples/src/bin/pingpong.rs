//! Round-trip latency: `pingpong pong` echoes every message of topic `ping` on topic `pong`
//! (callback style, on the receive thread); `pingpong ping --size N --count C` sends one message,
//! waits for its echo, repeats, and prints the round-trip percentiles as one JSON line.

use clap::{Parser, Subcommand};
use examples::{init_logging, stop_on_ctrl_c, stopping, CommonArgs};
use middleware::Raw;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Round-trip latency between two processes")]
struct Args {
    #[command(subcommand)]
    role: Role,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Echo `ping` to `pong` until Ctrl-C or `--seconds`.
    Pong {
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Measure: `--count` round trips of `--size` bytes after `--warmup` unmeasured ones.
    Ping {
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// Seconds to wait for one echo before counting it lost.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
    },
}

fn main() -> anyhow::Result<()> {
    init_logging();
    stop_on_ctrl_c();
    let args = Args::parse();
    let node = middleware::open_node(args.common.load()?)?;
    match args.role {
        Role::Pong { seconds } => {
            let sub = node.subscriber::<Raw>("ping")?;
            let publ = Arc::new(node.publisher::<Raw>("pong")?);
            let p = Arc::clone(&publ);
            sub.on_receive(move |m| {
                let _ = p.send(&m.value);
            });
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            while Instant::now() < end && !stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Role::Ping { size, count, warmup, timeout } => {
            let publ = node.publisher::<Raw>("ping")?;
            let sub = node.subscriber::<Raw>("pong")?;
            anyhow::ensure!(publ.wait_for_subscriber(Duration::from_secs(20)), "no pong process within 20 s");
            // The pong side connects its publisher when it hears our subscriber.
            std::thread::sleep(Duration::from_millis(1500));
            let payload = vec![0xa5u8; size];
            let mut rtts = Vec::with_capacity(count);
            let mut lost = 0u64;
            for i in 0..warmup + count {
                let t0 = Instant::now();
                publ.send(&payload)?;
                match sub.recv_timeout(Duration::from_secs_f64(timeout)) {
                    Some(m) if m.value.len() == size => {
                        if i >= warmup {
                            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                        }
                    }
                    _ => lost += 1,
                }
            }
            rtts.sort_by(f64::total_cmp);
            let pct = |p: f64| rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize).copied();
            let line = serde_json::json!({
                "role": "ping", "size": size, "round_trips": rtts.len(), "lost": lost,
                "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": rtts.last(),
                "transport": node.transport().to_string(),
            });
            println!("{line}");
        }
    }
    Ok(())
}
