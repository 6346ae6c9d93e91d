//! Real sockets on this host, local mode only (broadcast to 127.255.255.255 stays on `lo`);
//! network-mode multicast is exercised in the interop harness's namespaces. Each test uses its
//! own port pair so tests can run in parallel.

use middleware_core::config::Config;
use middleware_core::{Node, Raw, Text};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

static NEXT: AtomicU16 = AtomicU16::new(0);

fn config() -> Config {
    // Ports unique per test and per process: 20000 + 2 * (pid mod 750 * 8 + n) <= 32000, below
    // Linux's ephemeral range (32768-60999), where any socket bound to port 0 may sit first.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 20_000 + 2 * ((std::process::id() % 750) as u16 * 8 + n);
    let mut c = Config::default();
    c.set("mode", "local").unwrap();
    c.set("ports.registration", &base.to_string()).unwrap();
    c.set("ports.data", &(base + 1).to_string()).unwrap();
    c.set("registration.refresh_ms", "100").unwrap();
    c.set("registration.timeout_ms", "1000").unwrap();
    c
}

fn node(c: &Config) -> Node {
    Node::new(c.clone(), &transport_udp_socket::factory).expect("socket transport opens")
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn two_processes_worth_of_nodes_exchange_large_messages() {
    let c = config();
    let (a, b) = (node(&c), node(&c));
    let sub = b.subscriber::<Raw>("big").unwrap();
    let publ = a.publisher::<Raw>("big").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let sizes = [1usize, 65_420, 1 << 20, 4 << 20];
    for (k, &n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|i| ((i + k) % 251) as u8).collect();
        assert!(publ.send(&payload).unwrap());
        let r = sub.recv_timeout(WAIT).unwrap_or_else(|| panic!("{n} bytes not received"));
        assert!(r.value == payload, "payload of {n} bytes differs");
    }
    let st = b.stats().data;
    assert_eq!(st.reassembly.lost_messages(), 0, "{st:?}");
    assert!(st.transport.receive_buffer_granted >= 1 << 20, "{st:?}");
}

/// `udp.send_mode = frames` over real sockets: 1472-byte datagrams sent with segmentation
/// offload (Linux) arrive as the same messages.
#[test]
fn frames_mode_messages_arrive_whole() {
    let c = config();
    let mut fc = c.clone();
    fc.set("udp.send_mode", "frames").unwrap();
    fc.set("udp.frame_size", "1472").unwrap();
    let (a, b) = (node(&fc), node(&c));
    assert_eq!(a.frame_size(), Some(1472));
    let sub = b.subscriber::<Raw>("frames").unwrap();
    let publ = a.publisher::<Raw>("frames").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let sizes = [10usize, 65_420, 1 << 20];
    for (k, &n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|i| ((i + k) % 251) as u8).collect();
        assert!(publ.send(&payload).unwrap());
        let r = sub.recv_timeout(WAIT).unwrap_or_else(|| panic!("{n} bytes not received"));
        assert!(r.value == payload, "payload of {n} bytes differs");
    }
    let (sa, sb) = (a.stats().data.transport, b.stats().data);
    assert_eq!(sb.reassembly.lost_messages(), 0, "{sb:?}");
    // 1 MiB alone is 725 fragments of 1448 bytes.
    assert!(sa.sent_datagrams > 770, "{sa:?}");
    assert!(sa.sent_bytes / sa.sent_datagrams <= 1472, "{sa:?}");
    if cfg!(target_os = "linux") {
        assert!(sa.details["send_offload_buffers"] >= 17, "{sa:?}");
        assert_eq!(sa.details["send_offload_refused"], 0, "{sa:?}");
        // lo carries the offload buffers uncut; the receive socket takes each as one buffer
        // (UDP_GRO) and cuts it at the kernel's segment size: the core sees plain datagrams.
        assert!(sb.transport.details["receive_gro_buffers"] >= 17, "{sb:?}");
        assert_eq!(sb.coalesced_datagrams, 0, "{sb:?}");
        assert!(sb.transport.received_datagrams >= sa.sent_datagrams, "{sb:?} {sa:?}");
    }
}

#[test]
fn strings_in_one_process() {
    let c = config();
    let n = node(&c);
    let sub = n.subscriber::<Text>("hello").unwrap();
    let publ = n.publisher::<Text>("hello").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    for i in 0..50 {
        publ.send(&format!("hello {i}")).unwrap();
    }
    for i in 0..50 {
        assert_eq!(sub.recv_timeout(WAIT).unwrap().value, format!("hello {i}"));
    }
    assert_eq!(sub.stats().sequence_gaps, 0);
}

#[test]
fn garbage_on_the_data_port_is_counted_and_receiving_goes_on() {
    let c = config();
    let n = node(&c);
    let sub = n.subscriber::<Text>("sturdy").unwrap();
    let publ = n.publisher::<Text>("sturdy").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    // "ECAL", version 5, type 3, id -1, num 1, len 4, then a name length of 0xffff.
    let mut bad_name =
        vec![b'E', b'C', b'A', b'L', 5, 0, 0, 0, 3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 4, 0, 0, 0];
    bad_name.extend_from_slice(&[0xff, 0xff, b's', 0]);
    for i in 0..20 {
        attacker.send_to(&[0xde, 0xad, 0xbe, 0xef], ("127.0.0.1", c.data_port())).unwrap();
        attacker.send_to(&bad_name, ("127.0.0.1", c.data_port())).unwrap();
        publ.send(&format!("m{i}")).unwrap();
    }
    for i in 0..20 {
        assert_eq!(sub.recv_timeout(WAIT).unwrap().value, format!("m{i}"));
    }
    let st = n.stats().data;
    assert_eq!((st.reassembly.malformed, st.bad_frame), (20, 20), "{st:?}");
}

#[test]
fn unknown_interface_is_a_clear_error() {
    let mut c = config();
    c.set("network.interface", "no-such-if0").unwrap();
    let e = Node::new(c, &transport_udp_socket::factory).unwrap_err().to_string();
    assert!(e.contains("no-such-if0") && e.contains("ip -4 addr"), "{e}");
}

/// A receive buffer overrun is counted: every datagram sent is either received or in
/// `os_dropped` (the kernel's drop counter for this socket).
#[cfg(target_os = "linux")]
#[test]
fn kernel_receive_buffer_drops_are_counted() {
    use middleware_core::transport::{Channel, Endpoint};
    let c = config();
    let mut ep = Endpoint::from_config(&c, Channel::Data);
    ep.receive_buffer = 4096; // the kernel rounds up to its minimum: a few datagrams fit
                              // The receive thread blocks in the sink on the first datagram, so the socket buffer fills.
    struct Gate {
        first: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        got: std::sync::atomic::AtomicU64,
    }
    impl middleware_core::DatagramSink for Gate {
        fn datagram(&self, _d: &[u8], _s: std::net::SocketAddr, _n: std::time::Instant) {
            if let Some(rx) = self.first.lock().unwrap().take() {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
            self.got.fetch_add(1, Ordering::SeqCst);
        }
        fn tick(&self, _n: std::time::Instant) {}
    }
    let (release, wait) = std::sync::mpsc::channel();
    let gate = std::sync::Arc::new(Gate { first: std::sync::Mutex::new(Some(wait)), got: Default::default() });
    let t = transport_udp_socket::factory(&ep, gate.clone()).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = 300u64;
    for i in 0..sent {
        tx.send_to(&[i as u8; 1000], ("127.0.0.1", ep.port)).unwrap();
    }
    release.send(()).unwrap();
    // Received and dropped add up to what was sent (within 10 s: the watchdog).
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while gate.got.load(Ordering::SeqCst) + t.stats().os_dropped < sent && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = t.stats();
    assert!(s.os_dropped > 0, "{s:?}");
    assert_eq!(gate.got.load(Ordering::SeqCst) + s.os_dropped, sent, "{s:?}");
    assert_eq!(s.received_datagrams, gate.got.load(Ordering::SeqCst));
}

/// A process that only publishes takes no copy of its own data (nor of anyone's): its data
/// channel opens no receive socket until a subscriber exists.
#[test]
fn a_publisher_only_node_receives_no_data_until_it_subscribes() {
    let c = config();
    let (a, b) = (node(&c), node(&c));
    let sub = b.subscriber::<Raw>("only").unwrap();
    let publ = a.publisher::<Raw>("only").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    for i in 0..20u8 {
        assert!(publ.send(&vec![i; 3000]).unwrap());
        assert_eq!(sub.recv_timeout(WAIT).expect("delivered").value, vec![i; 3000]);
    }
    assert_eq!(a.stats().data.transport.received_datagrams, 0, "{:?}", a.stats().data);
    assert_eq!(b.stats().data.transport.received_datagrams, 20, "{:?}", b.stats().data);
    // Subscribing starts receiving (the socket exists when `subscriber` returns): now a sees
    // its own messages too.
    let own = a.subscriber::<Raw>("only").unwrap();
    assert!(publ.send(&[7; 10]).unwrap());
    assert_eq!(own.recv_timeout(WAIT).expect("own message").value, vec![7; 10]);
    assert_eq!(a.stats().data.transport.received_datagrams, 1, "{:?}", a.stats().data);
}

/// The transport contract: with `receive_on_demand` nothing is received before the first
/// `join`, everything after it.
#[test]
fn receive_on_demand_starts_at_the_first_join() {
    use middleware_core::transport::{Channel, Endpoint};
    let c = config();
    let mut ep = Endpoint::from_config(&c, Channel::Data);
    ep.receive_on_demand = true;
    let (sink, got) = middleware_core::testing::CollectSink::new();
    let t = transport_udp_socket::factory(&ep, sink).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = tx.send_to(b"before", ("127.0.0.1", ep.port)); // nobody bound: refused or lost
    assert!(got.recv_timeout(Duration::from_millis(100)).is_err());
    t.join(ep.group).unwrap();
    tx.send_to(b"after", ("127.0.0.1", ep.port)).unwrap();
    let (d, from) = got.recv_timeout(WAIT).expect("received after join");
    assert_eq!(d, b"after");
    assert_eq!(from, tx.local_addr().unwrap());
    assert_eq!(t.stats().received_datagrams, 1);
}
