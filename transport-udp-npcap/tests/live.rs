//! Live capture on the loopback device (local mode). Needs root or CAP_NET_RAW + CAP_NET_ADMIN,
//! which CI has: without them this test fails and says so.

use middleware_core::transport::{Channel, DatagramSink, Endpoint, TransportFactory};
use middleware_core::Config;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport_udp_npcap::NpcapFactory;

#[derive(Default)]
struct Collect(Mutex<Vec<Vec<u8>>>);

impl DatagramSink for Collect {
    fn datagram(&self, d: &[u8], _source: SocketAddr, _now: Instant) {
        self.0.lock().unwrap().push(d.to_vec());
    }
    fn tick(&self, _now: Instant) {}
}

/// Receiving starts when `join` returns: a datagram sent right after it is captured. Before,
/// the capture thread installed the filter for a new port on its next pass (after the next
/// frame it captured, or up to 100 ms later) and the kernel dropped what came first: a
/// publisher that saw a new subscriber's registration could send its first message into that gap.
/// Each round is a new capture with nothing else on its ports, so the thread is idle in its wait
/// when the port is joined.
#[test]
fn a_datagram_sent_right_after_join_is_captured() {
    // Ports no other test uses (callback tests end at 17998, socket tests start at 20000), below
    // Linux's ephemeral range: 18 per process, 16 for this test, 2 for the next.
    let base = 18_100 + 18 * (std::process::id() % 100) as u16;
    for round in 0..8u16 {
        let mut c = Config::default();
        c.set("mode", "local").unwrap();
        c.set("ports.registration", &(base + 2 * round).to_string()).unwrap();
        c.set("ports.data", &(base + 2 * round + 1).to_string()).unwrap();
        let factory = NpcapFactory::new(&c).unwrap();
        let mut ep = Endpoint::from_config(&c, Channel::Data);
        ep.receive_on_demand = true;
        let sink = Arc::new(Collect::default());
        let t = factory.open(&ep, Arc::clone(&sink) as Arc<dyn DatagramSink>).unwrap_or_else(|e| {
            panic!("the capture transport cannot open here ({e}); this test needs root or CAP_NET_RAW+CAP_NET_ADMIN (CI runs as root)")
        });
        // Idle before the join: the capture thread is in its wait for frames.
        std::thread::sleep(Duration::from_millis(20));
        t.join(ep.group).unwrap();
        let payload = format!("first after join, round {round}");
        t.send(b"", payload.as_bytes()).unwrap();
        let heard = || sink.0.lock().unwrap().iter().any(|d| d == payload.as_bytes());
        let end = Instant::now() + Duration::from_secs(2);
        while !heard() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(heard(), "round {round}: not captured; {:?}", t.stats());
        t.close();
    }
}

/// The frame tap is user code (`mwctl record` is one): a tap that panics on every frame costs
/// nothing but its own work. Each panic is counted (`tap_panics`) and every frame is still
/// received, the ones after it in the same batch included.
#[test]
fn a_panicking_frame_tap_is_counted_and_every_frame_still_received() {
    let base = 18_100 + 18 * (std::process::id() % 100) as u16 + 16;
    let mut c = Config::default();
    c.set("mode", "local").unwrap();
    c.set("ports.registration", &base.to_string()).unwrap();
    c.set("ports.data", &(base + 1).to_string()).unwrap();
    let tapped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t2 = Arc::clone(&tapped);
    let tap: transport_udp_npcap::FrameTap = Arc::new(move |_f: &transport_udp_npcap::CapturedFrame<'_>| {
        t2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        panic!("tap panic (test)");
    });
    let factory = NpcapFactory::new(&c).unwrap().with_frame_tap(tap);
    let ep = Endpoint::from_config(&c, Channel::Data);
    let sink = Arc::new(Collect::default());
    let t = factory.open(&ep, Arc::clone(&sink) as Arc<dyn DatagramSink>).unwrap_or_else(|e| {
        panic!("the capture transport cannot open here ({e}); this test needs root or CAP_NET_RAW+CAP_NET_ADMIN (CI runs as root)")
    });
    t.join(ep.group).unwrap();
    const N: usize = 20;
    // Sent back to back, so that several land in one batch of the ring.
    for k in 0..N {
        t.send(b"", format!("tapped {k}").as_bytes()).unwrap();
    }
    let received = || {
        let mut v: Vec<Vec<u8>> =
            sink.0.lock().unwrap().iter().filter(|d| d.starts_with(b"tapped ")).cloned().collect();
        v.sort();
        v
    };
    let end = Instant::now() + Duration::from_secs(3);
    while received().len() < N && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut sent: Vec<Vec<u8>> = (0..N).map(|k| format!("tapped {k}").into_bytes()).collect();
    sent.sort();
    assert_eq!(received(), sent, "every datagram received, byte for byte, despite the tap's panics; {:?}", t.stats());
    // The counters reach the stats about every 100 ms.
    let tap_panics = || t.stats().details.get("tap_panics").copied().unwrap_or(0);
    let end = Instant::now() + Duration::from_secs(3);
    let seen = || tapped.load(std::sync::atomic::Ordering::SeqCst);
    while (tap_panics() < N as u64 || tap_panics() != seen()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen();
    assert!(seen >= N as u64, "the tap saw {seen} frames");
    assert_eq!(tap_panics(), seen, "each tap panic counted; {:?}", t.stats());
    assert_eq!(t.stats().details.get("capture_panics").copied(), Some(0), "{:?}", t.stats());
    t.close();
}
