//! The raw UDP baseline of `cargo xtask bench`: the same datagrams a publisher sends for a
//! message of `--size` bytes (24-byte header + up to 65 483 bytes each), through the same socket
//! set-up (multicast, 64 MiB receive buffer), with no middleware: no framing, reassembly,
//! protobuf, registration or dispatch. The ceiling the middleware is compared with.
//!
//! ```text
//! raw_udp send --group 239.0.0.1 --port 14102 --size N --count C
//! raw_udp recv --group 239.0.0.1 --port 14102 --size N --count C --timeout S --idle S
//! ```
//! Each prints one JSON line (`sent` / `received` messages, bytes, `first_to_last_s`, `cpu_s`).

use middleware_core::config::{Config, Mode};
use middleware_core::transport::{Channel, DatagramSink, Endpoint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

/// CPU seconds of this process (the process CPU clock, nanoseconds), as the example programs
/// measure it.
fn cpu_seconds() -> Option<f64> {
    cpu_time::ProcessTime::try_now().ok().map(|t| t.as_duration().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let size: usize = arg(&args, "--size", "64").parse().expect("--size");
    let count: u64 = arg(&args, "--count", "1000").parse().expect("--count");
    let mut cfg = Config::default();
    cfg.set("mode", "network").unwrap();
    cfg.set("network.group", &arg(&args, "--group", "239.0.0.1")).unwrap();
    cfg.set("ports.data", &arg(&args, "--port", "14102")).unwrap();
    let mut ep = Endpoint::from_config(&cfg, Channel::Data);
    ep.mode = Mode::Network;
    // Datagram sizes exactly as the middleware frames a message of `size` payload bytes
    // (payload plus ~70 bytes of sample header, cut at 65 483 bytes per datagram).
    let per = middleware_core::wire::MAX_DATAGRAM_LEN - middleware_core::wire::HEADER_LEN;
    let message = size + 70;
    let chunks: Vec<usize> = if message <= per {
        vec![message]
    } else {
        let mut v = vec![0]; // the info datagram: header only
        let mut left = message;
        while left > 0 {
            v.push(left.min(per));
            left -= left.min(per);
        }
        v
    };
    let header = [0u8; 24];
    match role.as_str() {
        "send" => {
            let tx = transport_udp_socket::UdpSender::open(&ep).expect("sender");
            let body = vec![0x5au8; per];
            let t0 = Instant::now();
            for _ in 0..count {
                for &c in &chunks {
                    tx.send(&header, &body[..c]).expect("send");
                }
            }
            let line = serde_json::json!({"role": "pub", "impl": "raw", "sent": count, "bytes": count * size as u64,
                "elapsed_s": t0.elapsed().as_secs_f64(), "datagrams_per_message": chunks.len(), "cpu_s": cpu_seconds()});
            println!("{line}");
        }
        "recv" => {
            let timeout: f64 = arg(&args, "--timeout", "30").parse().unwrap();
            let idle: f64 = arg(&args, "--idle", "2").parse().unwrap();
            // Counts on the transport's receive thread; this thread only watches.
            struct Count {
                datagrams: AtomicU64,
                times: Mutex<(Option<Instant>, Instant)>,
            }
            impl DatagramSink for Count {
                fn datagram(&self, _d: &[u8], _s: std::net::SocketAddr, now: Instant) {
                    self.datagrams.fetch_add(1, Ordering::Relaxed);
                    let mut t = self.times.lock().unwrap();
                    t.0.get_or_insert(now);
                    t.1 = now;
                }
                fn tick(&self, _now: Instant) {}
            }
            let count_sink =
                Arc::new(Count { datagrams: AtomicU64::new(0), times: Mutex::new((None, Instant::now())) });
            let _rx = transport_udp_socket::UdpSocketTransport::open(&ep, count_sink.clone()).expect("receiver");
            let end = Instant::now() + Duration::from_secs_f64(timeout);
            let want = count * chunks.len() as u64;
            while count_sink.datagrams.load(Ordering::Relaxed) < want && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
                let (first, last) = *count_sink.times.lock().unwrap();
                if first.is_some() && last.elapsed().as_secs_f64() >= idle {
                    break;
                }
            }
            let datagrams = count_sink.datagrams.load(Ordering::Relaxed);
            let (first, last) = *count_sink.times.lock().unwrap();
            let messages = datagrams / chunks.len() as u64;
            let line = serde_json::json!({"role": "sub", "impl": "raw", "received": messages,
                "bytes": messages * size as u64, "datagrams": datagrams,
                "first_to_last_s": first.map(|f| (last - f).as_secs_f64()), "cpu_s": cpu_seconds()});
            println!("{line}");
        }
        _ => {
            eprintln!("usage: raw_udp send|recv --size N --count C [--group G --port P --timeout S --idle S]");
            std::process::exit(2);
        }
    }
}
