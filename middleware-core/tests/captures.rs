//! Real eCAL 6.1.1 traffic (tests/data/captures, see its README) replayed through this crate:
//! datagram headers, sample frames, protobuf samples, registration and delivery, compared with
//! the counts and digests the recording peers printed.
//!
//! These captures have no IP fragmentation, so `pcap-file` + an Ethernet/IPv4/UDP parser is
//! enough here; the pcap transport has the full decoder.

use middleware_core::fragment::{Outcome, Reassembler, ReassemblyConfig};
use middleware_core::pb::{CmdType, Sample};
use middleware_core::registration::{Acceptance, Direction, RemoteTable};
use middleware_core::wire::{Datagram, DatagramRepr, SampleFrame};
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::{data, read_udp};

/// (port, sample name, decoded sample) of every eCAL message in the capture, in order.
fn messages(name: &str) -> Vec<(u16, String, Sample)> {
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let t = Instant::now();
    let mut out = Vec::new();
    for u in read_udp(name) {
        // Every datagram's header re-emits to the same 24 bytes.
        let d = Datagram::new_checked(&u.payload[..]).expect("valid ecaludp header");
        let repr = DatagramRepr::parse(&d).unwrap();
        assert_eq!(repr.to_bytes()[..], u.payload[..24], "{name}: header bytes differ after emit");
        if let Outcome::Message(m) = r.on_datagram(t, u.src, &u.payload) {
            let f = SampleFrame::new_checked(&m).expect("sample frame");
            let s = Sample::decode(f.body()).expect("protobuf Sample");
            out.push((u.dst.port(), f.name().to_string(), s));
        }
    }
    let st = r.stats();
    assert_eq!((st.malformed, st.duplicates, st.size_mismatch), (0, 0, 0), "{name}: {st:?}");
    out
}

fn stream_sha256<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for p in payloads {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn pub_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data(name)).expect("pub json")).unwrap()
}

fn cmd_counts(msgs: &[(u16, String, Sample)]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for (_, _, s) in msgs {
        *m.entry(s.cmd_type).or_default() += 1;
    }
    m
}

fn data_samples<'a>(msgs: &'a [(u16, String, Sample)], topic: &'a str) -> Vec<&'a Sample> {
    msgs.iter().filter(|(port, n, _)| *port == 14002 && n == topic).map(|(_, _, s)| s).collect()
}

#[test]
fn cap1_small_strings() {
    let msgs = messages("cap1_small_strings.pcap");
    let c = cmd_counts(&msgs);
    assert_eq!(c[&(CmdType::RegProcess as i32)], 8);
    assert_eq!(c[&(CmdType::RegSubscriber as i32)], 3);
    assert_eq!(c[&(CmdType::RegPublisher as i32)], 5);
    assert_eq!(c[&(CmdType::SetSample as i32)], 10);
    assert_eq!(c[&(CmdType::UnregPublisher as i32)], 1);
    assert_eq!(c[&(CmdType::UnregProcess as i32)], 1);
    let samples = data_samples(&msgs, "wire_small");
    assert_eq!(samples.len(), 10);
    let crcs: Vec<u32> = samples.iter().map(|s| crc32fast::hash(&s.content.as_ref().unwrap().payload)).collect();
    assert_eq!(
        crcs,
        [
            0xf27d4d1d, 0x857a7d8b, 0x1c732c31, 0x6b741ca7, 0xf5108904, 0x8217b992, 0x1b1ee828, 0x6c19d8be, 0xfca6c52f,
            0x8ba1f5b9
        ]
    );
    for (k, s) in samples.iter().enumerate() {
        let t = s.topic.as_ref().unwrap();
        let content = s.content.as_ref().unwrap();
        assert_eq!((t.topic_id.as_str(), t.process_id, t.host_name.as_str()), ("14431506724487168", 0, "hosta"));
        assert_eq!(content.clock, k as i64 + 1);
        assert_eq!(content.payload, format!("msg-{k:06}").as_bytes());
    }
    let sha = stream_sha256(samples.iter().map(|s| &s.content.as_ref().unwrap().payload[..]));
    assert_eq!(sha, pub_json("cap1_small_strings.pub.json")["topics"]["wire_small"]["sha256"]);
}

#[test]
fn cap4_two_topics_interleaved() {
    let msgs = messages("cap4_two_topics.pcap");
    let j = pub_json("cap4_two_topics.pub.json");
    for (topic, id) in [("wire_a", "12053766934560768"), ("wire_b", "12053766934560769")] {
        let samples = data_samples(&msgs, topic);
        assert_eq!(samples.len(), 10, "{topic}");
        for (k, s) in samples.iter().enumerate() {
            assert_eq!(s.topic.as_ref().unwrap().topic_id, id);
            assert_eq!(s.content.as_ref().unwrap().payload, format!("{topic}#{k:06}").as_bytes());
        }
        let sha = stream_sha256(samples.iter().map(|s| &s.content.as_ref().unwrap().payload[..]));
        assert_eq!(sha, j["topics"][topic]["sha256"], "{topic}");
    }
    // Both topics go to the base group, not to their hashed groups (SPEC §8.3).
    for u in read_udp("cap4_two_topics.pcap").iter().filter(|u| u.dst.port() == 14002) {
        assert_eq!(u.dst.ip().to_string(), "239.0.0.1");
    }
}

#[test]
fn cap5_registration_builds_the_remote_table() {
    let msgs = messages("cap5_registration_only.pcap");
    let c = cmd_counts(&msgs);
    assert_eq!(c[&(CmdType::RegProcess as i32)], 16);
    assert_eq!(c[&(CmdType::RegSubscriber as i32)], 9);
    assert_eq!(c[&(CmdType::RegPublisher as i32)], 8);
    assert!(msgs.iter().all(|(port, name, _)| *port == 14000 && name == "reg_sample"));
    // As a third host in network mode we accept everything.
    let accept = Acceptance { host_name: "hostc".into(), process_id: 1, network_mode: true, loopback: true };
    let mut table = RemoteTable::default();
    let t0 = Instant::now();
    for (_, _, s) in &msgs {
        table.on_sample(t0, s, &accept).expect("accepted");
    }
    let sub = table.entity(12227139674636288).expect("subscriber known");
    assert_eq!(sub.direction, Direction::Subscriber);
    assert_eq!((sub.topic_name.as_str(), sub.host_name.as_str(), sub.process_id), ("wire_idle", "hostb", 11120));
    assert_eq!(sub.unit_name, "ecal_peer_sub");
    assert!(sub.udp, "subscriber lists an enabled UDP layer");
    assert_eq!(sub.samples, 9);
    let publ = table.entity(12246265439125504).expect("publisher known");
    assert_eq!(publ.direction, Direction::Publisher);
    assert_eq!((publ.datatype_name.as_str(), publ.datatype_encoding.as_str()), ("std::string", "base"));
    assert_eq!(publ.connections_external, 1);
    assert_eq!(table.processes().count(), 2);
    let versions: Vec<_> = table.processes().map(|p| p.runtime_version.clone()).collect();
    assert!(versions.iter().all(|v| v == "v6.1.1"), "{versions:?}");
    // Local mode on hostc rejects both foreign hosts.
    let local = Acceptance { network_mode: false, ..accept };
    assert!(RemoteTable::default().on_sample(t0, &msgs[0].2, &local).is_err());
    // Not refreshed for 10 s: everything times out.
    assert_eq!(table.expire(t0 + Duration::from_secs(10), Duration::from_secs(10)).len(), 2);
}

/// Our registration samples, beside eCAL 6.1.1's from cap5: the subscriber lists the same three
/// layers with the same flags (UDP on, SHM and TCP off, TCP with its port parameter), a
/// subscriber's connection counts are 0 as eCAL writes them, both send latency statistics, and
/// the process sample fills the same fields (components, time source, state). Differences that
/// are deliberate are asserted as such.
#[test]
fn cap5_our_registration_fills_what_ecal_fills() {
    use middleware_core::registration::{process_sample, topic_sample, Identity, ProcessState, TopicReport};
    let msgs = messages("cap5_registration_only.pcap");
    let find = |cmd: CmdType| msgs.iter().map(|m| &m.2).find(|s| s.cmd_type == cmd as i32).cloned().unwrap();
    let (e_sub, e_pub, e_proc) = (find(CmdType::RegSubscriber), find(CmdType::RegPublisher), find(CmdType::RegProcess));
    let me = Identity {
        host_name: "hostb".into(),
        process_id: 11120,
        process_name: "/bin/sub".into(),
        unit_name: "sub".into(),
        process_parameter: "sub --x".into(),
        config_file_path: "/etc/mw.toml".into(),
    };
    let report = TopicReport { entity_id: 1, topic_name: "wire_idle".into(), ..Default::default() };
    let o_sub = topic_sample(&me, Direction::Subscriber, &report, false);
    let (et, ot) = (e_sub.topic.as_ref().unwrap(), o_sub.topic.as_ref().unwrap());
    assert_eq!(ot.transport_layer, et.transport_layer, "subscriber layers as eCAL lists them");
    assert_eq!((ot.connections_local, ot.connections_external), (0, 0));
    assert_eq!(ot.data_latency_us, et.data_latency_us, "no message yet: eCAL's empty statistics");
    let o_pub = topic_sample(&me, Direction::Publisher, &report, false);
    let (et, ot) = (e_pub.topic.as_ref().unwrap(), o_pub.topic.as_ref().unwrap());
    assert_eq!(ot.transport_layer, et.transport_layer, "publisher: the UDP writer, not yet active");
    assert_eq!(ot.data_latency_us, et.data_latency_us);
    let o_proc = process_sample(&me, &ProcessState::default(), false);
    let (ep, op) = (e_proc.process.as_ref().unwrap(), o_proc.process.as_ref().unwrap());
    assert_eq!(op.state, ep.state, "default state: unknown, level 1, no text");
    assert_eq!(op.time_sync_module_name, ep.time_sync_module_name);
    assert_eq!(op.shm_transport_domain, op.host_name);
    assert_eq!(op.config_file_path, "/etc/mw.toml");
    // Deliberate: eCAL's wheel has no time plugin (state 0, "none"); our clock is the local
    // system clock, reported as eCAL reports it with that plugin loaded (1, realtime).
    assert_eq!((ep.time_sync_state, op.time_sync_state), (0, 1));
    // Deliberate: we claim the components we have: pub|sub|time, not eCAL's service and log.
    assert_eq!((ep.component_init_state, ep.component_init_info.as_str()), (55, "pub|sub|log|time"));
    assert_eq!((op.component_init_state, op.component_init_info.as_str()), (0x23, "pub|sub|time"));
    assert_eq!(op.component_init_state & ep.component_init_state, op.component_init_state);
    // Deliberate: the runtime version says which implementation speaks v6.1.1.
    assert!(op.ecal_runtime_version.starts_with(&ep.ecal_runtime_version), "{}", op.ecal_runtime_version);
}

#[test]
fn cap6_publisher_without_layers_then_data() {
    let msgs = messages("cap6_pub_first_late_sub.pcap");
    let first_pub = msgs.iter().find(|(_, _, s)| s.cmd_type == CmdType::RegPublisher as i32).unwrap();
    assert!(first_pub.2.topic.as_ref().unwrap().transport_layer.is_empty());
    let samples = data_samples(&msgs, "wire_late");
    let sha = stream_sha256(samples.iter().map(|s| &s.content.as_ref().unwrap().payload[..]));
    assert_eq!(sha, pub_json("cap6_pub_first_late_sub.pub.json")["topics"]["wire_late"]["sha256"]);
    assert_eq!(cmd_counts(&msgs)[&(CmdType::UnregSubscriber as i32)], 1);
}

#[test]
fn cap7_local_mode() {
    let udp = read_udp("cap7_local_mode_loopback.pcap");
    assert!(udp.iter().all(|u| u.dst.ip().to_string() == "127.255.255.255" && u.ttl == 1));
    let msgs = messages("cap7_local_mode_loopback.pcap");
    let samples = data_samples(&msgs, "wire_local");
    assert_eq!(samples.len(), 5);
    let sha = stream_sha256(samples.iter().map(|s| &s.content.as_ref().unwrap().payload[..]));
    assert_eq!(sha, pub_json("cap7_local_mode_loopback.pub.json")["topics"]["wire_local"]["sha256"]);
}

/// The whole node: cap1's datagrams injected into a subscriber's data channel are delivered
/// exactly once each, in order, with the recorded digest.
#[test]
fn cap1_replayed_into_a_node() {
    use middleware_core::testing::LoopbackBus;
    use middleware_core::{Config, Node, Text};
    let bus = LoopbackBus::new();
    let b = bus.clone();
    let mut cfg = Config::default();
    cfg.set("mode", "network").unwrap(); // accept hosta's and hostb's registrations
    let node = Node::new(cfg, &b).unwrap();
    let sub = node.subscriber::<Text>("wire_small").unwrap();
    let other = node.subscriber::<Text>("unrelated").unwrap();
    for u in read_udp("cap1_small_strings.pcap") {
        bus.inject(u.dst.port(), u.src, &u.payload);
    }
    let mut got = Vec::new();
    while let Some(r) = sub.recv_timeout(Duration::from_secs(2)) {
        got.push(r.value);
        if got.len() == 10 {
            break;
        }
    }
    assert_eq!(got, (0..10).map(|k| format!("msg-{k:06}")).collect::<Vec<_>>());
    assert!(other.recv_timeout(Duration::from_millis(50)).is_none());
    // Registration was accepted (network mode), and the recording's publisher unregistered
    // at the end of cap1, so it is known as a process no more and as a publisher not at all.
    let reg = node.stats().registration;
    assert_eq!((reg.rejected_registration, reg.bad_protobuf, reg.bad_frame), (0, 0, 0), "{reg:?}");
    assert!(sub.publishers().is_empty());
    let hosts: Vec<_> = node.remote_processes().into_iter().map(|p| p.host_name).collect();
    assert!(hosts.contains(&"hostb".to_string()) && !hosts.contains(&"hosta".to_string()), "{hosts:?}");
    assert_eq!(sub.stats().delivered, 10);
}

/// cap1 replayed into our subscriber: its registration after the 10 messages against eCAL's
/// subscriber's in the same recording, after the same 10: the same layers (UDP now active),
/// receive clock, last message size, drops, connection counts, and latency statistics over the
/// same number of messages (their values differ: the replay is years after the send times).
#[test]
fn cap1_our_subscriber_registers_what_ecals_registered() {
    use middleware_core::pb::{Sample, Topic};
    use middleware_core::testing::LoopbackBus;
    use middleware_core::{Config, Node, NodeOptions, Tap, Text};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Last(Mutex<Option<Topic>>);
    impl Tap for Last {
        fn registration(&self, s: &Sample, _: SocketAddr) {
            let own = s.topic.as_ref().filter(|t| t.process_id == std::process::id() as i32);
            if let (Some(t), true) = (own, s.cmd_type == CmdType::RegSubscriber as i32) {
                *self.0.lock().unwrap() = Some(t.clone());
            }
        }
    }
    let msgs = messages("cap1_small_strings.pcap");
    let ecal = msgs
        .iter()
        .rev()
        .filter(|(_, _, s)| s.cmd_type == CmdType::RegSubscriber as i32)
        .filter_map(|(_, _, s)| s.topic.clone())
        .find(|t| t.topic_name == "wire_small" && t.data_clock == 10)
        .expect("eCAL's subscriber registered after its 10 messages");

    let bus = LoopbackBus::new();
    let tap = Arc::new(Last::default());
    let mut cfg = Config::default();
    cfg.set("mode", "network").unwrap();
    cfg.set("registration.refresh_ms", "50").unwrap();
    let opts = NodeOptions { tap: Some(tap.clone() as Arc<dyn Tap>), ..Default::default() };
    let node = Node::open(cfg, &bus.clone(), opts).unwrap();
    let sub = node.subscriber::<Text>("wire_small").unwrap();
    for u in read_udp("cap1_small_strings.pcap") {
        bus.inject(u.dst.port(), u.src, &u.payload);
    }
    for _ in 0..10 {
        sub.recv_timeout(Duration::from_secs(2)).expect("10 messages");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let ours = loop {
        let t = tap.0.lock().unwrap().clone();
        if let Some(t) = t.filter(|t| t.data_clock == 10) {
            break t;
        }
        assert!(Instant::now() < deadline, "our subscriber never registered 10 received messages");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(ours.transport_layer, ecal.transport_layer, "layers (UDP active after data)");
    assert_eq!(
        (ours.data_clock, ours.topic_size, ours.message_drops, ours.connections_local, ours.connections_external),
        (ecal.data_clock, ecal.topic_size, ecal.message_drops, ecal.connections_local, ecal.connections_external)
    );
    let (o, e) = (ours.data_latency_us.unwrap(), ecal.data_latency_us.unwrap());
    assert_eq!((o.count, e.count), (10, 10));
    assert!(o.min <= o.mean && o.mean <= o.max && o.variance >= 0.0, "{o:?}");
}
