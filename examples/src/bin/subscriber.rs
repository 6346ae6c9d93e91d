//! Receives a topic, verifies `mod251` payloads and prints one JSON line per topic; exits 1 when
//! fewer than `--count` messages arrived or a payload failed verification.

use clap::Parser;
use examples::{init_logging, stop_on_ctrl_c, stopping, CommonArgs, StreamDigest};
use middleware::{Raw, Received};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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
    /// Take messages in a callback on the node's receive thread (as eCAL's subscribers do)
    /// instead of from the subscriber's queue: no thread hop, no queue to overflow.
    #[arg(long)]
    callback: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// What one topic received so far.
#[derive(Clone)]
struct Tally {
    digest: StreamDigest,
    verified: bool,
    first_last: Option<(Instant, Instant)>,
    /// Per publisher: messages, first and last clock, verification failures.
    per_publisher: BTreeMap<u64, (u64, i64, i64, u64)>,
}

impl Tally {
    fn take(&mut self, verify: &str, topic: &str, r: &Received<Vec<u8>>) {
        let k = self.digest.count as usize;
        let ok = match verify {
            "mod251" => r.value.iter().enumerate().all(|(j, b)| *b as usize == (j + k) % 251),
            "mod251-clock" => {
                let k = (r.clock - 1).rem_euclid(251) as usize;
                r.value.iter().enumerate().all(|(j, b)| *b as usize == (j + k) % 251)
            }
            "counter" => r.value == format!("msg-{k:06}").as_bytes(),
            _ => true,
        };
        let e = self.per_publisher.entry(r.publisher_id).or_insert((0, r.clock, r.clock, 0));
        (e.0, e.2, e.3) = (e.0 + 1, r.clock, e.3 + u64::from(!ok));
        if !ok {
            tracing::warn!(topic, k, len = r.value.len(), "payload failed verification");
            self.verified = false;
        }
        self.digest.update(&r.value);
        let now = Instant::now();
        self.first_last = Some(self.first_last.map_or((now, now), |(f, _)| (f, now)));
    }
}

fn main() -> anyhow::Result<()> {
    init_logging();
    stop_on_ctrl_c();
    let args = Args::parse();
    let config = args.common.load()?;
    let node = middleware::open_node(config)?;
    let subs = args.topics.iter().map(|t| node.subscriber::<Raw>(t)).collect::<Result<Vec<_>, _>>()?;
    let proto = Tally {
        digest: if args.no_digest { StreamDigest::counting_only() } else { StreamDigest::default() },
        verified: true,
        first_last: None,
        per_publisher: BTreeMap::new(),
    };
    let tallies: Vec<Arc<Mutex<Tally>>> = subs.iter().map(|_| Arc::new(Mutex::new(proto.clone()))).collect();
    if args.callback {
        for (s, t) in subs.iter().zip(&tallies) {
            let (t, verify, topic) = (Arc::clone(t), args.verify.clone(), s.topic().to_string());
            s.on_receive(move |r| t.lock().expect("poisoned").take(&verify, &topic, &r));
        }
    }
    let mut most_publishers = 0usize;
    let end = Instant::now() + Duration::from_secs_f64(args.timeout);
    loop {
        let mut done = args.count > 0;
        for (s, t) in subs.iter().zip(&tallies) {
            most_publishers = most_publishers.max(s.publishers().len());
            if args.callback {
                done &= t.lock().expect("poisoned").digest.count >= args.count;
                continue;
            }
            let mut t = t.lock().expect("poisoned");
            // Also bounded by the timeout: with `--count 0` a steady stream never leaves this loop.
            while (args.count == 0 || t.digest.count < args.count) && Instant::now() < end && !stopping() {
                let Some(r) = s.recv_timeout(Duration::from_millis(20)) else {
                    done = false;
                    break;
                };
                t.take(&args.verify, s.topic(), &r);
            }
        }
        let idle = args.idle > 0.0
            && tallies
                .iter()
                .filter_map(|t| t.lock().expect("poisoned").first_last)
                .map(|(_, l)| l.elapsed().as_secs_f64())
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
                .is_some_and(|since_last| since_last >= args.idle);
        if done || idle || Instant::now() >= end || stopping() {
            break;
        }
        if args.callback {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stats = node.stats();
    let mut ok = true;
    for (s, t) in subs.iter().zip(&tallies) {
        let t = t.lock().expect("poisoned");
        let d = &t.digest;
        ok &= d.count >= args.count && t.verified;
        let line = serde_json::json!({
            "role": "sub", "topic": s.topic(), "received": d.count, "bytes": d.bytes, "sha256": d.hex(),
            "verified": t.verified,
            "transport": node.transport().to_string(),
            "first_to_last_s": t.first_last.map(|(f, l)| (l - f).as_secs_f64()),
            "cpu_s": examples::process_cpu_seconds(),
            "peak_rss_kib": examples::peak_rss_kib(),
            "publishers": t.per_publisher.iter().map(|(id, (n, first, last, bad))| serde_json::json!({
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
