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
    // Linux's ephemeral range.
    let base = 18_100 + 16 * (std::process::id() % 100) as u16;
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
