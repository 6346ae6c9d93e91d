//! Whole-node tests over the in-process loopback bus: registration, connection, delivery,
//! fragmentation, filters, faults and hostile input, all without sockets.

use middleware_core::config::Config;
use middleware_core::pb::DataTypeInformation;
use middleware_core::testing::{Faults, LoopbackBus};
use middleware_core::{Node, Proto, ProtoType, Raw, Text};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config() -> Config {
    let mut c = Config::default();
    c.set("registration.refresh_ms", "50").unwrap();
    c.set("registration.timeout_ms", "400").unwrap();
    c
}

fn node(bus: &LoopbackBus, cfg: Config) -> Node {
    let b = bus.clone();
    Node::new(cfg, &b).unwrap()
}

fn mod251(size: usize, k: usize) -> Vec<u8> {
    (0..size).map(|i| ((i + k) % 251) as u8).collect()
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn raw_messages_of_every_size_arrive_intact() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let b = node(&bus, config());
    let sub = b.subscriber::<Raw>("sizes").unwrap();
    let publ = a.publisher::<Raw>("sizes").unwrap();
    assert!(publ.wait_for_subscriber(WAIT), "publisher never saw the subscriber");
    let sizes = [0usize, 1, 10, 65_420, 65_483, 65_484, 1 << 20, 3 * (1 << 20) + 7];
    for (k, &size) in sizes.iter().enumerate() {
        assert!(publ.send(&mod251(size, k)).unwrap());
    }
    for (k, &size) in sizes.iter().enumerate() {
        let r = sub.recv_timeout(WAIT).unwrap_or_else(|| panic!("message {k} of {size} bytes missing"));
        assert_eq!(r.value.len(), size);
        assert!(r.value == mod251(size, k), "payload {k} differs");
        assert_eq!(r.publisher_id, publ.entity_id());
        assert_eq!(r.clock, k as i64 + 1);
    }
    let st = sub.stats();
    assert_eq!((st.delivered, st.duplicates, st.sequence_gaps), (sizes.len() as u64, 0, 0));
    let ns = b.stats();
    // Payloads from 65 420 bytes on need eCAL fragmentation once the sample header is added.
    assert_eq!(ns.data.reassembly.reassembled, 5, "{:?}", ns.data.reassembly);
}

/// `udp.send_mode = frames`: messages go out as frame-sized eCAL fragments handed to the
/// transport at once; over a bus that delivers each offload run as one datagram (what a capture
/// sees before the device cuts the buffer), the receiver splits them and every message arrives
/// whole. `auto` picks frames where the transport has offload, `ecal` where not.
#[test]
fn frames_mode_arrives_whole_also_when_a_capture_sees_offload_buffers_uncut() {
    for coalesce in [false, true] {
        let bus = LoopbackBus::with_faults(Faults { coalesce_batches: coalesce, ..Faults::default() });
        let mut cfg = config();
        cfg.set("udp.send_mode", "frames").unwrap();
        cfg.set("udp.frame_size", "1000").unwrap();
        let a = node(&bus, cfg);
        assert_eq!(a.frame_size(), Some(1000));
        let b = node(&bus, config());
        let sub = b.subscriber::<Raw>("frames").unwrap();
        let publ = a.publisher::<Raw>("frames").unwrap();
        assert!(publ.wait_for_subscriber(WAIT));
        // 1 MiB and 3 MiB in 1000-byte datagrams: more than one send window (1024 datagrams).
        let sizes = [0usize, 10, 900, 5_000, 65_420, 1 << 20, 3 << 20];
        for (k, &size) in sizes.iter().enumerate() {
            assert!(publ.send(&mod251(size, k)).unwrap());
        }
        for (k, &size) in sizes.iter().enumerate() {
            let r = sub.recv_timeout(WAIT).unwrap_or_else(|| panic!("{coalesce}: message {k} of {size} B missing"));
            assert!(r.value == mod251(size, k), "{coalesce}: payload {k} differs");
        }
        let (sa, sb) = (a.stats().data, b.stats().data);
        // Every datagram at most 1000 bytes: 4 MiB is > 4000 of them.
        assert!(sa.transport.sent_datagrams > 4300, "{sa:?}");
        assert!(sa.transport.sent_bytes / sa.transport.sent_datagrams <= 1000, "{sa:?}");
        assert_eq!(sb.reassembly.lost_messages(), 0, "{sb:?}");
        if coalesce {
            // 1 MiB in 1000-byte datagrams: about 17 buffers of 64 datagrams (the info datagram
            // is a run of its own); smaller fragmented messages one or more each.
            assert!(sb.coalesced_datagrams >= 17, "{sb:?}");
            assert!(sb.transport.received_datagrams < sa.transport.sent_datagrams / 10, "{sb:?} {sa:?}");
        } else {
            assert_eq!(sb.coalesced_datagrams, 0);
        }
    }
    for (coalesce, want) in [(false, None), (true, Some(1472))] {
        let bus = LoopbackBus::with_faults(Faults { coalesce_batches: coalesce, ..Faults::default() });
        let mut cfg = config();
        cfg.set("udp.send_mode", "auto").unwrap();
        assert_eq!(node(&bus, cfg).frame_size(), want, "auto with offload {coalesce}");
    }
}

#[test]
fn no_subscriber_means_nothing_sent_but_clock_advances() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let publ = a.publisher::<Text>("lonely").unwrap();
    assert!(!publ.send("x").unwrap());
    assert!(!publ.send("y").unwrap());
    assert_eq!(publ.stats().not_connected, 2);
    let sub = a.subscriber::<Text>("lonely").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    assert!(publ.send("z").unwrap());
    let r = sub.recv_timeout(WAIT).unwrap();
    assert_eq!((r.value.as_str(), r.clock), ("z", 3));
    // The first clock of a publisher is not a gap.
    assert_eq!(sub.stats().sequence_gaps, 0);
}

#[test]
fn topics_are_filtered_by_name() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let sa = a.subscriber::<Text>("alpha").unwrap();
    let sb = a.subscriber::<Text>("beta").unwrap();
    let pa = a.publisher::<Text>("alpha").unwrap();
    let pb = a.publisher::<Text>("beta").unwrap();
    assert!(pa.wait_for_subscriber(WAIT) && pb.wait_for_subscriber(WAIT));
    for i in 0..10 {
        pa.send(&format!("a{i}")).unwrap();
        pb.send(&format!("b{i}")).unwrap();
    }
    for i in 0..10 {
        assert_eq!(sa.recv_timeout(WAIT).unwrap().value, format!("a{i}"));
        assert_eq!(sb.recv_timeout(WAIT).unwrap().value, format!("b{i}"));
    }
    assert!(sa.recv_timeout(Duration::from_millis(100)).is_none());
}

#[test]
fn callback_style_and_datatype_in_registration() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = a.subscriber::<Text>("cb").unwrap();
    let g = Arc::clone(&got);
    sub.on_receive(move |r| g.lock().unwrap().push(r.value));
    let publ = a.publisher::<Text>("cb").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    for i in 0..5 {
        publ.send(&format!("m{i}")).unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while got.lock().unwrap().len() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*got.lock().unwrap(), vec!["m0", "m1", "m2", "m3", "m4"]);
    let pubs = sub.publishers();
    assert_eq!(pubs.len(), 1);
    assert_eq!((pubs[0].datatype_name.as_str(), pubs[0].datatype_encoding.as_str()), ("std::string", "base"));
}

#[derive(Clone, PartialEq, prost::Message)]
struct Person {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "2")]
    id: i32,
}

impl ProtoType for Person {
    fn full_name() -> String {
        "pb.People.Person".into()
    }
}

#[test]
fn typed_protobuf_messages() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let sub = a.subscriber::<Proto<Person>>("people").unwrap();
    let publ = a.publisher::<Proto<Person>>("people").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let p = Person { name: "Ada".into(), id: 7 };
    publ.send(&p).unwrap();
    assert_eq!(sub.recv_timeout(WAIT).unwrap().value, p);
    let info = &sub.publishers()[0];
    assert_eq!((info.datatype_name.as_str(), info.datatype_encoding.as_str()), ("pb.People.Person", "proto"));
    // A string publisher on the same topic: undecodable payloads are counted, not delivered.
    let bad = a.publisher_with_datatype::<Raw>("people", DataTypeInformation::default()).unwrap();
    assert!(bad.wait_for_subscriber(WAIT));
    bad.send(&[0xff, 0xff, 0xff]).unwrap();
    assert!(sub.recv_timeout(Duration::from_millis(300)).is_none());
    assert_eq!(sub.stats().decode_errors, 1);
}

#[test]
fn duplicates_are_filtered_and_losses_counted() {
    // 20% duplicated, 10% dropped datagrams, fixed seed.
    let bus =
        LoopbackBus::with_faults(Faults { drop_permille: 100, duplicate_permille: 200, seed: 7, ..Faults::default() });
    let a = node(&bus, config());
    let sub = a.subscriber::<Raw>("lossy").unwrap();
    let publ = a.publisher::<Raw>("lossy").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let n = 300;
    for k in 0..n {
        publ.send(&mod251(100, k)).unwrap();
    }
    let mut got = 0u64;
    while let Some(r) = sub.recv_timeout(Duration::from_millis(300)) {
        assert!(r.value == mod251(100, r.clock as usize - 1));
        got += 1;
    }
    let st = sub.stats();
    assert_eq!(st.delivered, got);
    assert!(st.duplicates > 0, "{st:?}");
    // Every message is delivered once or counted as lost: delivered + gaps covers the clocks
    // from the first to the last delivered (losses at the very end are invisible to any receiver).
    assert!(got < n as u64 && got > n as u64 / 2, "{got}");
    let first_to_last = st.delivered + st.sequence_gaps;
    assert!(first_to_last <= n as u64 && first_to_last >= n as u64 - 10, "{st:?}");
}

#[test]
fn hostile_datagrams_do_not_disturb_delivery() {
    let bus = LoopbackBus::new();
    let cfg = config();
    let data_port = cfg.data_port();
    let a = node(&bus, cfg);
    let sub = a.subscriber::<Text>("victim").unwrap();
    let publ = a.publisher::<Text>("victim").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let evil: SocketAddr = "10.9.9.9:666".parse().unwrap();
    let whole = |body: &[u8]| {
        let mut d = middleware_core::wire::DatagramRepr::Whole { len: body.len() as u32 }.to_bytes().to_vec();
        d.extend_from_slice(body);
        d
    };
    let hostile: Vec<Vec<u8>> = vec![
        vec![],
        b"ECAL".to_vec(),
        vec![0xAA; 100],
        whole(&[0xff, 0xff, b'v', 0]), // name length beyond the message
        whole(&[7, 0, b'v', b'i', b'c', b't', b'i', b'm', 0]), // right name, no protobuf
        whole(&[7, 0, b'v', b'i', b'c', b't', b'i', b'm', 0, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), // bad protobuf
        middleware_core::wire::DatagramRepr::FragmentInfo { id: 1, count: u32::MAX, total_len: u32::MAX }
            .to_bytes()
            .to_vec(),
    ];
    for (i, h) in hostile.iter().enumerate() {
        bus.inject(data_port, evil, h);
        publ.send(&format!("ok{i}")).unwrap();
    }
    for i in 0..hostile.len() {
        assert_eq!(sub.recv_timeout(WAIT).unwrap().value, format!("ok{i}"));
    }
    let s = a.stats().data;
    assert_eq!(s.reassembly.malformed, 3, "{s:?}");
    assert_eq!(s.reassembly.rejected_too_large, 1, "{s:?}");
    assert_eq!(s.bad_frame, 1, "{s:?}");
    assert_eq!(s.bad_protobuf, 1, "{s:?}");
}

#[test]
fn unregistration_disconnects_and_timeout_expires() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let publ = a.publisher::<Text>("bye").unwrap();
    {
        let b = node(&bus, config());
        let _sub = b.subscriber::<Text>("bye").unwrap();
        assert!(publ.wait_for_subscriber(WAIT));
    }
    // The subscriber's node sent unregistrations on drop.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while publ.is_connected() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!publ.is_connected());
}

/// What a tap recorded: (topic, clock, payload) of data samples, and datagram/registration counts.
#[derive(Default)]
struct Recording {
    samples: Mutex<Vec<(String, i64, Vec<u8>)>>,
    datagrams: Mutex<[u64; 2]>,
    registrations: Mutex<u64>,
}

impl middleware_core::Tap for Recording {
    fn datagram(&self, channel: middleware_core::transport::Channel, _s: SocketAddr, _b: &[u8]) {
        let i = usize::from(channel == middleware_core::transport::Channel::Data);
        self.datagrams.lock().unwrap()[i] += 1;
    }
    fn registration(&self, _s: &middleware_core::pb::Sample, _src: SocketAddr) {
        *self.registrations.lock().unwrap() += 1;
    }
    fn data_sample(&self, s: &middleware_core::TappedSample<'_>) {
        self.samples.lock().unwrap().push((s.topic.to_string(), s.clock, s.payload.to_vec()));
    }
}

#[test]
fn a_tap_sees_every_sample_including_topics_nobody_here_subscribes() {
    let bus = LoopbackBus::new();
    let rec = Arc::new(Recording::default());
    let b2 = bus.clone();
    let watcher = Node::with_tap(config(), &b2, Some(rec.clone())).unwrap();
    let a = node(&bus, config());
    let b = node(&bus, config());
    // `watched` has a subscriber in the tapped node, `other` only in node b.
    let tapped_sub = watcher.subscriber::<Raw>("watched").unwrap();
    let sub = b.subscriber::<Raw>("other").unwrap();
    let p1 = a.publisher::<Raw>("watched").unwrap();
    let p2 = a.publisher::<Raw>("other").unwrap();
    assert!(p1.wait_for_subscriber(WAIT) && p2.wait_for_subscriber(WAIT));
    for k in 0..3 {
        p1.send(&mod251(100 + k, k)).unwrap();
        p2.send(&mod251(70_000, k)).unwrap();
    }
    for k in 0..3 {
        assert_eq!(tapped_sub.recv_timeout(WAIT).unwrap().value, mod251(100 + k, k));
        assert_eq!(sub.recv_timeout(WAIT).unwrap().value, mod251(70_000, k));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while rec.samples.lock().unwrap().len() < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut got = rec.samples.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<_> = (0..3)
        .flat_map(|k| {
            [
                ("other".to_string(), k as i64 + 1, mod251(70_000, k)),
                ("watched".to_string(), k as i64 + 1, mod251(100 + k, k)),
            ]
        })
        .collect();
    want.sort();
    assert!(got == want, "tap saw {} samples", got.len());
    // 3 whole datagrams + 3 x (info + 2 fragments) for the 70 kB messages.
    assert_eq!(rec.datagrams.lock().unwrap()[1], 3 + 9);
    assert!(*rec.registrations.lock().unwrap() > 0);
    // The tapped node still counts the other topic as unmatched: it does not subscribe to it.
    assert_eq!(watcher.stats().data.unmatched_topic, 3);
}

#[test]
fn a_callback_set_late_first_gets_the_queued_messages_in_order() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let sub = a.subscriber::<Text>("late").unwrap();
    let publ = a.publisher::<Text>("late").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    for i in 0..3 {
        publ.send(&format!("q{i}")).unwrap();
    }
    // Wait until all three sit in the queue (delivery is asynchronous).
    let deadline = std::time::Instant::now() + WAIT;
    while sub.stats().delivered < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    sub.on_receive(move |r| g.lock().unwrap().push(r.value));
    for i in 0..2 {
        publ.send(&format!("c{i}")).unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while got.lock().unwrap().len() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*got.lock().unwrap(), vec!["q0", "q1", "q2", "c0", "c1"]);
    assert!(sub.recv_timeout(Duration::from_millis(50)).is_none(), "nothing left in the queue");
}

/// The queue of a subscriber nobody reads is bounded in bytes, not only in messages: 1 MiB
/// messages with a 4 MiB bound keep at most four queued, every drop counted.
#[test]
fn an_unread_queue_is_bounded_in_bytes() {
    let bus = LoopbackBus::new();
    let mut c = config();
    c.set("subscriber.queue_bytes", "4MiB").unwrap();
    let a = node(&bus, c);
    let sub = a.subscriber::<Raw>("big").unwrap();
    let publ = a.publisher::<Raw>("big").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    for k in 0..20 {
        assert!(publ.send(&mod251(1 << 20, k)).unwrap());
    }
    let deadline = std::time::Instant::now() + WAIT;
    while sub.stats().delivered < 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (n, bytes) = sub.queued();
    assert!(bytes <= 4 << 20, "{bytes} bytes queued");
    assert_eq!(n, 3, "three 1 MiB messages (+64 bytes each) fit in 4 MiB");
    assert_eq!(sub.stats().queue_overflow, 17, "{:?}", sub.stats());
    // The newest ones were kept.
    for k in 17..20 {
        assert_eq!(sub.recv_timeout(WAIT).unwrap().value, mod251(1 << 20, k));
    }
}

/// A send the transport holds up (the OS saying ENOBUFS, bounded by udp.send_timeout_ms) holds
/// up no other sender of the same publisher: no lock is held across the transport's send.
#[test]
fn a_stalled_send_does_not_block_other_senders_of_the_publisher() {
    use middleware_core::transport::{DatagramSink, Endpoint, Transport, TransportError, TransportStats};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{channel, Receiver, Sender};

    #[derive(Debug)]
    struct Stalling {
        inner: Box<dyn Transport>,
        stall_next: Arc<AtomicBool>,
        stalled: Mutex<Sender<()>>,
        release: Arc<Mutex<Receiver<()>>>,
    }
    impl Transport for Stalling {
        fn name(&self) -> &'static str {
            "stalling"
        }
        fn send(&self, h: &[u8], b: &[u8]) -> Result<(), TransportError> {
            if self.stall_next.swap(false, Ordering::SeqCst) {
                self.stalled.lock().unwrap().send(()).unwrap();
                let _ = self.release.lock().unwrap().recv_timeout(Duration::from_secs(20));
            }
            self.inner.send(h, b)
        }
        fn join(&self, g: std::net::Ipv4Addr) -> Result<(), TransportError> {
            self.inner.join(g)
        }
        fn stats(&self) -> TransportStats {
            self.inner.stats()
        }
        fn close(&self) {
            self.inner.close();
        }
    }

    let bus = LoopbackBus::new();
    let stall_next = Arc::new(AtomicBool::new(false));
    let (stalled_tx, stalled) = channel();
    let (release, release_rx) = channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let stalled_tx = Mutex::new(stalled_tx);
    let data_port = config().data_port();
    let (b, sn, rr) = (bus.clone(), Arc::clone(&stall_next), Arc::clone(&release_rx));
    let factory = move |ep: &Endpoint, sink: Arc<dyn DatagramSink>| -> Result<Box<dyn Transport>, TransportError> {
        let inner = b.open(ep, sink)?;
        if ep.port != data_port {
            return Ok(inner);
        }
        Ok(Box::new(Stalling {
            inner,
            stall_next: Arc::clone(&sn),
            stalled: Mutex::new(stalled_tx.lock().unwrap().clone()),
            release: Arc::clone(&rr),
        }))
    };
    // The second message overtakes the first: keep both (eCAL's default drops the older).
    let mut c = config();
    c.set("subscriber.drop_out_of_order", "false").unwrap();
    let a = Node::new(c, &factory).unwrap();
    let sub = a.subscriber::<Raw>("stall").unwrap();
    let publ = Arc::new(a.publisher::<Raw>("stall").unwrap());
    assert!(publ.wait_for_subscriber(WAIT));
    stall_next.store(true, Ordering::SeqCst);
    let p1 = Arc::clone(&publ);
    let first = std::thread::spawn(move || p1.send(b"first").unwrap());
    stalled.recv_timeout(WAIT).expect("the first send reached the transport");
    // The first send is stuck inside the transport; a second sender goes through.
    let p2 = Arc::clone(&publ);
    let (done_tx, done) = channel();
    std::thread::spawn(move || done_tx.send(p2.send(b"second").unwrap()).unwrap());
    let second = done.recv_timeout(WAIT);
    release.send(()).unwrap();
    assert_eq!(second, Ok(true), "the second send waited for the stalled one");
    assert!(first.join().unwrap());
    let mut got: Vec<Vec<u8>> = (0..2).map(|_| sub.recv_timeout(WAIT).expect("both arrive").value).collect();
    got.sort();
    assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
}

/// A tiny payload inside a huge message (1 MiB of padding, which eCAL ignores) does not keep
/// the message's buffer alive in the queue: the queue holds, and charges, the payload.
#[test]
fn a_small_payload_in_a_huge_message_costs_its_own_size_in_the_queue() {
    use middleware_core::pb::{CmdType, Content, Sample, Topic};
    use middleware_core::wire::SampleFrameRepr;
    use prost::Message;
    let bus = LoopbackBus::new();
    let mut c = config();
    c.set("subscriber.queue_bytes", "4MiB").unwrap();
    let data_port = c.data_port();
    let a = node(&bus, c);
    let sub = a.subscriber::<Raw>("padded").unwrap();
    for k in 1..=100i64 {
        let sample = Sample {
            cmd_type: CmdType::SetSample as i32,
            topic: Some(Topic { topic_name: "padded".into(), topic_id: "77".into(), ..Default::default() }),
            content: Some(Content { clock: k, payload: vec![k as u8; 10].into(), ..Default::default() }),
            padding: vec![0; 1 << 20],
            ..Default::default()
        };
        let mut msg = Vec::new();
        SampleFrameRepr { name: "padded" }.emit_prefix(&mut msg);
        sample.encode_raw(&mut msg);
        let from: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        for p in middleware_core::fragment::split(&msg, 65_507, k as i32).unwrap() {
            bus.inject(data_port, from, &[&p.header[..], p.body].concat());
        }
    }
    let deadline = std::time::Instant::now() + WAIT;
    while sub.stats().delivered < 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sub.stats().delivered, 100, "{:?}", a.stats().data);
    let (n, bytes) = sub.queued();
    assert_eq!(n, 100, "all fit: {bytes} bytes charged, {:?}", sub.stats());
    assert!(bytes <= 100 * (10 + 64 + 16), "{bytes} bytes charged for 100 payloads of 10 bytes");
    assert_eq!(sub.stats().queue_overflow, 0);
}

/// `on_receive` on a subscriber with queued messages: they go to the new callback first, then
/// the messages that arrive while it is still handing them over, all in order, and a callback
/// that replaces itself during the hand-over keeps the order too.
#[test]
fn on_receive_keeps_order_while_messages_arrive_during_the_hand_over() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let sub = Arc::new(a.subscriber::<Text>("handover").unwrap());
    let publ = a.publisher::<Text>("handover").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    for i in 0..3 {
        publ.send(&format!("q{i}")).unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while sub.queued().0 < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let (g, gate) = (Arc::clone(&got), Mutex::new(Some((entered_tx, release_rx))));
    let s2 = Arc::clone(&sub);
    let setter = std::thread::spawn(move || {
        s2.on_receive(move |r| {
            // The first message blocks the hand-over until the test has sent more.
            if let Some((entered, release)) = gate.lock().unwrap().take() {
                entered.send(()).unwrap();
                let _ = release.recv_timeout(Duration::from_secs(10));
            }
            g.lock().unwrap().push(format!("first:{}", r.value));
        });
    });
    entered.recv_timeout(WAIT).expect("the hand-over started");
    for i in 0..3 {
        publ.send(&format!("c{i}")).unwrap();
    }
    // Let c0..c2 reach the subscriber (queued behind q1, q2) before releasing.
    let deadline = std::time::Instant::now() + WAIT;
    while sub.stats().delivered < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    release.send(()).unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(setter.join().is_ok()).unwrap());
    assert!(done.recv_timeout(WAIT).expect("on_receive returned"));
    // Now a callback that replaces itself on its first message.
    let g2 = Arc::clone(&got);
    let s3 = Arc::clone(&sub);
    sub.on_receive(move |r| {
        g2.lock().unwrap().push(format!("second:{}", r.value));
        let g3 = Arc::clone(&g2);
        s3.on_receive(move |r| g3.lock().unwrap().push(format!("third:{}", r.value)));
    });
    for i in 0..3 {
        publ.send(&format!("d{i}")).unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while got.lock().unwrap().len() < 9 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        *got.lock().unwrap(),
        ["first:q0", "first:q1", "first:q2", "first:c0", "first:c1", "first:c2", "second:d0", "third:d1", "third:d2"]
    );
}

/// What a monitor sees of our entities, as eCAL's monitoring sees eCAL's (SPEC §5.2): the send
/// and receive rates in mHz, the subscriber's last message size and accepted-message clock, its
/// drops as eCAL counts them (clock gaps), and the process state set by the application.
#[test]
fn registration_reports_rates_sizes_clocks_drops_and_state() {
    use middleware_core::registration::{Direction, Severity};
    // 10% of data datagrams dropped (registration too, which only delays it).
    let bus =
        LoopbackBus::with_faults(Faults { drop_permille: 100, duplicate_permille: 0, seed: 11, ..Faults::default() });
    let mut cfg = config();
    cfg.set("registration.refresh_ms", "200").unwrap();
    cfg.set("registration.timeout_ms", "2000").unwrap();
    cfg.set("mode", "network").unwrap();
    let mut watch = cfg.clone();
    // Two hosts in one test process: the monitor keeps the observed process apart from itself.
    cfg.set("host_name", "observed").unwrap();
    let a = node(&bus, cfg);
    watch.set("registration.loopback", "true").unwrap();
    let monitor = node(&bus, watch);
    let sub = a.subscriber::<Raw>("rates").unwrap();
    let publ = a.publisher::<Raw>("rates").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    a.set_state(Severity::Warning, 2, "calibrating");
    let find = |dir| {
        monitor
            .remote_entities()
            .into_iter()
            .find(|e| e.direction == dir && e.topic_name == "rates")
            .unwrap_or_else(|| panic!("{dir:?} not seen"))
    };
    // 50 Hz for 1.6 s; the rates are read while sending (after 3 silent periods, 60 ms here,
    // eCAL's rule resets them to 0).
    let start = std::time::Instant::now();
    let n = 80;
    let mut rates = None;
    for k in 0..n {
        publ.send(&mod251(333, k)).unwrap();
        if k == 70 {
            rates =
                Some((find(Direction::Publisher).data_frequency_mhz, find(Direction::Subscriber).data_frequency_mhz));
        }
        let next = start + Duration::from_millis(20 * (k as u64 + 1));
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
    let (p_mhz, s_mhz) = rates.unwrap();
    // Sleep-paced sending is at most 50 Hz and, on a loaded machine, somewhat less.
    for (who, mhz) in [("publisher", p_mhz), ("subscriber", s_mhz)] {
        assert!((25_000..=52_000).contains(&mhz), "{who} data_frequency {mhz} mHz, expected about 50 000");
    }
    // The final figures arrive with later rounds (registration datagrams are dropped too, and
    // a rate reads 0 only from the second round after the last tick): wait for them, bounded.
    let st = sub.stats();
    let deadline = std::time::Instant::now() + WAIT;
    let (p, s) = loop {
        let (p, s) = (find(Direction::Publisher), find(Direction::Subscriber));
        let settled = p.data_clock == n as i64
            && s.data_clock == st.delivered as i64
            && (p.data_frequency_mhz, s.data_frequency_mhz) == (0, 0);
        if settled || std::time::Instant::now() > deadline {
            break (p, s);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(p.topic_size, 333);
    assert_eq!(s.topic_size, 333, "a subscriber reports the size of the last message it received");
    assert_eq!(p.data_clock, n as i64);
    assert_eq!(s.data_clock, st.delivered as i64, "a subscriber's clock counts accepted messages");
    assert!(st.sequence_gaps > 0, "the bus dropped some: {st:?}");
    assert_eq!(s.message_drops as u64, st.sequence_gaps + st.queue_overflow);
    assert_eq!((s.connections_local, s.connections_external), (0, 0));
    assert_eq!((p.connections_local, p.connections_external), (1, 0));
    let proc = monitor
        .remote_processes()
        .into_iter()
        .find(|p| p.host_name == "observed" && p.process_id == a.identity().process_id)
        .expect("process seen");
    assert_eq!((proc.state_severity, proc.state_level, proc.state_info.as_str()), (2, 2, "calibrating"));
    // The sender stopped more than three periods ago: both rates read 0, as eCAL's would.
    assert_eq!((p.data_frequency_mhz, s.data_frequency_mhz), (0, 0));
}

#[test]
fn unchanged_registration_refreshes_without_decoding_but_a_tap_sees_every_sample() {
    let bus = LoopbackBus::new();
    let rec = Arc::new(Recording::default());
    let b2 = bus.clone();
    let watcher = Node::with_tap(config(), &b2, Some(rec.clone())).unwrap();
    let a = node(&bus, config());
    let b = node(&bus, config());
    let publ = a.publisher::<Raw>("steady").unwrap();
    let _sub = b.subscriber::<Raw>("steady").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    // Refresh every 50 ms, timeout 400 ms: 1.2 s is three timeouts of resent, unchanged samples.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(publ.is_connected(), "the fast path must keep refreshing the subscriber's entry");
    assert_eq!(watcher.remote_entities().len(), 2);
    let (rb, rw) = (b.stats().registration, watcher.stats().registration);
    // Node b heard a's process and publisher (and the watcher's process) some 20 times each.
    assert!(rb.registration_unchanged >= 30, "{rb:?}");
    assert_eq!(rb.bad_protobuf + rb.rejected_registration, 0, "{rb:?}");
    // The tapped node decodes every sample for its tap.
    assert_eq!(rw.registration_unchanged, 0);
    assert!(*rec.registrations.lock().unwrap() >= 60);
}

#[test]
fn a_new_process_wakes_a_registration_round_but_new_entities_of_a_known_one_do_not() {
    // Refresh 12 s: woken rounds are at least a quarter of it (3 s) apart, regular ones 12 s, so
    // every round counted below before 11.5 s was woken, with seconds to spare on a slow machine.
    let mut cfg = Config::default();
    cfg.set("registration.timeout_ms", "60000").unwrap();
    cfg.set("registration.refresh_ms", "12000").unwrap();
    // Nodes of one test process share its process id: b is "another process" by its host name.
    cfg.set("mode", "network").unwrap();
    let mut cfg_b = cfg.clone();
    cfg_b.set("host_name", "elsewhere").unwrap();
    let bus = LoopbackBus::new();
    let a = node(&bus, cfg.clone());
    let t0 = std::time::Instant::now();
    let sent = |n: &Node| n.stats().registrations_sent;
    // a's first round (its process sample) goes out at once.
    let deadline = t0 + Duration::from_secs(10);
    while sent(&a) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sent(&a), 1);
    // A new process: a answers with a round, a gap (3 s) after its first, not at its refresh (12 s).
    let b = node(&bus, cfg_b);
    while sent(&a) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sent(&a), 2, "no woken round for a new process");
    assert!(t0.elapsed() < Duration::from_millis(8_000), "woken round came at {:?}", t0.elapsed());
    // New entities of the process a knows: a sends nothing more until its refresh.
    let pubs: Vec<_> = (0..5).map(|k| b.publisher::<Raw>(&format!("t{k}")).unwrap()).collect();
    let b_entities = |n: &Node| n.remote_entities().len();
    while b_entities(&a) < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b_entities(&a), 5);
    let heard = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sent(&a), 2, "a round was woken by new entities of a known process ({:?})", heard - t0);
    // Only meaningful before a's regular round (12 s): fail rather than pass vacuously.
    assert!(t0.elapsed() < Duration::from_millis(11_500), "too slow to tell: {:?}", t0.elapsed());
    drop(pubs);
}

#[test]
fn data_multicast_loopback_is_on_only_while_a_same_host_subscriber_is_registered() {
    let mut cfg = config();
    cfg.set("mode", "network").unwrap();
    cfg.set("host_name", "ha").unwrap();
    let mut other_host = cfg.clone();
    other_host.set("host_name", "hb").unwrap();
    let bus = LoopbackBus::new();
    let a = node(&bus, cfg.clone());
    let b = node(&bus, other_host);
    let publ = a.publisher::<Raw>("looped").unwrap();
    let remote = b.subscriber::<Raw>("looped").unwrap();
    assert!(publ.wait_for_subscriber(WAIT));
    let looped = |n: &Node| n.stats().data.transport.details.get("multicast_loopback").copied();
    // Only a subscriber on another host: sent without loopback.
    assert!(publ.send(&[1]).unwrap());
    assert_eq!(looped(&a), Some(0));
    assert_eq!(remote.recv_timeout(WAIT).unwrap().value, vec![1]);
    // A subscriber on this host (another node of host "ha"): loopback on for the next send.
    let c = node(&bus, cfg);
    let local = c.subscriber::<Raw>("looped").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while publ.connections().0 == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(publ.send(&[2]).unwrap());
    assert_eq!(looped(&a), Some(1));
    assert_eq!(local.recv_timeout(WAIT).unwrap().value, vec![2]);
    // It unregisters: off again.
    drop((local, c));
    while publ.connections().0 > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(publ.send(&[3]).unwrap());
    assert_eq!(looped(&a), Some(0));
    // `always`: on without any same-host subscriber.
    let mut always = config();
    always.set("mode", "network").unwrap();
    always.set("network.multicast_loopback", "always").unwrap();
    let d = node(&bus, always);
    let p2 = d.publisher::<Raw>("looped").unwrap();
    assert!(p2.wait_for_subscriber(WAIT));
    assert!(p2.send(&[4]).unwrap());
    assert_eq!(looped(&d), Some(1));
}

/// `Duration::MAX` (and any timeout past what the clock represents) means no deadline: it
/// neither panics nor returns early; a receive without deadline ends when the node is dropped,
/// and the largest configurable timeouts open a node.
#[test]
fn duration_max_means_no_deadline() {
    let bus = LoopbackBus::new();
    let a = node(&bus, config());
    let b = node(&bus, config());
    let sub = b.subscriber::<Raw>("forever").unwrap();
    let publ = a.publisher::<Raw>("forever").unwrap();
    assert!(publ.wait_for_subscriber(Duration::MAX));
    assert!(publ.send(&b"x".to_vec()).unwrap());
    assert_eq!(sub.recv_timeout(Duration::MAX).expect("the message").value, b"x");
    // A receive with no deadline on another thread ends when the node goes.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = sub.recv_timeout(Duration::MAX);
        tx.send(r.is_none()).unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(b);
    assert_eq!(rx.recv_timeout(WAIT), Ok(true), "recv_timeout(Duration::MAX) did not end with the node");
    waiter.join().unwrap();
    // A bounded wait for nobody still ends.
    let lonely = a.publisher::<Raw>("nobody").unwrap();
    assert!(!lonely.wait_for_subscriber(Duration::from_millis(50)));
    let mut big = Config::default();
    big.set("registration.refresh_ms", "1000000000000").unwrap_err(); // not below the timeout
    assert_eq!(big, Config::default(), "a refused value is not kept");
    big.set("registration.timeout_ms", "1000000000000").unwrap();
    big.set("registration.refresh_ms", "999999999999").unwrap();
    big.set("reassembly.timeout_ms", "1000000000000").unwrap();
    big.set("udp.send_timeout_ms", "1000000000000").unwrap();
    assert!(big.set("udp.send_timeout_ms", "1000000000001").is_err());
    let n = node(&bus, big);
    let _s = n.subscriber::<Raw>("forever").unwrap();
}

/// A tap is user code: one that panics on every call is caught and counted per channel, and
/// the node receives exactly as without it (before, the panic escaped to the transport's
/// guard, which dropped the datagram and the rest of its batch).
#[test]
fn a_panicking_tap_is_contained_and_counted() {
    struct Panicky;
    impl middleware_core::Tap for Panicky {
        fn datagram(&self, _c: middleware_core::transport::Channel, _s: SocketAddr, _b: &[u8]) {
            panic!("tap: datagram");
        }
        fn registration(&self, _s: &middleware_core::pb::Sample, _src: SocketAddr) {
            panic!("tap: registration");
        }
        fn data_sample(&self, _s: &middleware_core::TappedSample<'_>) {
            panic!("tap: data sample");
        }
    }
    let bus = LoopbackBus::new();
    let b2 = bus.clone();
    let watcher = Node::with_tap(config(), &b2, Some(Arc::new(Panicky))).unwrap();
    let a = node(&bus, config());
    let sub = watcher.subscriber::<Raw>("panicky").unwrap();
    let publ = a.publisher::<Raw>("panicky").unwrap();
    assert!(publ.wait_for_subscriber(WAIT), "the tapped node's registration went out and was heard");
    let n = 40usize;
    for k in 0..n {
        assert!(publ.send(&mod251(if k % 2 == 0 { 100 } else { 70_000 }, k)).unwrap());
    }
    for k in 0..n {
        let r = sub.recv_timeout(WAIT).unwrap_or_else(|| panic!("message {k} lost behind a panicking tap"));
        assert!(r.value == mod251(if k % 2 == 0 { 100 } else { 70_000 }, k), "message {k} differs");
    }
    let st = watcher.stats();
    // Every data datagram (a 70 000 B message is several) and every sample panicked once each.
    assert!(st.data.transport.received_datagrams > n as u64);
    assert_eq!(st.data.tap_panics, st.data.transport.received_datagrams + n as u64, "{:?}", st.data);
    assert!(st.registration.tap_panics > 0, "{:?}", st.registration);
    assert_eq!(st.data.transport.details.get("sink_panics").copied().unwrap_or(0), 0);
}

/// The registration channel reassembles under bounds of its own: a registration message larger
/// than `registration.max_message_size` is refused there while the data channel would take it,
/// and a flood of large made-up registrations stays within `registration.max_table_bytes`.
#[test]
fn registration_is_bounded_in_bytes_apart_from_data() {
    use middleware_core::pb::{CmdType, DataTypeInformation as Dt, Sample, Topic};
    use middleware_core::wire::SampleFrameRepr;
    use prost::Message;
    let bus = LoopbackBus::new();
    let mut c = config();
    c.set_all([("registration.max_message_size", "1MiB"), ("registration.max_table_bytes", "2MiB")]).unwrap();
    c.set("mode", "network").unwrap();
    let reg_port = c.registration_port();
    let a = node(&bus, c);
    let from: SocketAddr = "10.0.0.9:5000".parse().unwrap();
    let send = |id: i32, descriptor: usize| {
        let sample = Sample {
            cmd_type: CmdType::RegPublisher as i32,
            topic: Some(Topic {
                topic_name: format!("flood{id}"),
                topic_id: (1000 + id).to_string(),
                host_name: "liar".into(),
                process_id: 666,
                datatype_information: Some(Dt {
                    name: "x".into(),
                    encoding: "proto".into(),
                    descriptor_information: vec![9; descriptor].into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut msg = Vec::new();
        SampleFrameRepr { name: "reg_sample" }.emit_prefix(&mut msg);
        sample.encode_raw(&mut msg);
        for p in middleware_core::fragment::split(&msg, 65_507, id).unwrap() {
            bus.inject(reg_port, from, &[&p.header[..], p.body].concat());
        }
    };
    // Over the registration message size: refused at reassembly, whatever the data channel takes.
    send(1, 1_200_000);
    // A flood of 100 KB descriptors: the table keeps what fits in 2 MiB, refuses the rest.
    for id in 2..62 {
        send(id, 100_000);
    }
    let deadline = std::time::Instant::now() + WAIT;
    let seen = |a: &Node| {
        let s = a.stats().registration;
        s.reassembly.rejected_too_large + s.registration_over_budget + a.remote_entities().len() as u64
    };
    while seen(&a) < 61 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = a.stats();
    assert_eq!(st.registration.reassembly.rejected_too_large, 1, "{:?}", st.registration.reassembly);
    let held = a.remote_entities().iter().filter(|e| e.host_name == "liar").count() as u64;
    assert!(held > 0 && held < 60, "{held} held");
    assert_eq!(held + st.registration.registration_over_budget, 60, "{:?}", st.registration);
    assert!(st.remote_table_bytes <= 2 << 20, "{}", st.remote_table_bytes);
    assert!(st.remote_table_bytes >= held * 100_000);
    assert_eq!(st.data.reassembly.rejected_too_large, 0);
}
