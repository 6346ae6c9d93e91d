//! Every real eCAL 6.1.1 capture replayed through this crate's pipeline (frames read with
//! `pcap-file` -> frame decoder -> IPv4 reassembly -> UDP demux) and the core (eCAL reassembly,
//! sample frame, protobuf, and a whole node), compared with what the recording peers printed.
//! The run-time loaded libpcap binding's own reading (`pcap_open_offline` + `pcap_dispatch`) is
//! checked against `pcap-file` frame by frame.
//! No privileges needed: captures are read from files.

use middleware_core::fragment::{Outcome, Reassembler, ReassemblyConfig};
use middleware_core::pb::{CmdType, Sample};
use middleware_core::wire::SampleFrame;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use transport_udp_npcap::demux::{Demux, DemuxStats};
use transport_udp_npcap::frame::LinkType;
use transport_udp_npcap::ip_reassembly::{IpReassemblyConfig, IpReassemblyStats};

fn path(name: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let local = here.join("tests/data").join(name);
    if local.exists() {
        local
    } else {
        here.join("../middleware-core/tests/data/captures").join(name)
    }
}

struct Replay {
    /// (destination port, sample name, Sample) per eCAL message, in order.
    messages: Vec<(u16, String, Sample)>,
    /// UDP datagrams delivered: (destination, source, payload).
    datagrams: Vec<(SocketAddrV4, std::net::SocketAddr, Vec<u8>)>,
    demux: DemuxStats,
    ip: IpReassemblyStats,
}

/// The frames of a capture file as `pcap-file` reads them: (link type, timestamp µs, original
/// length, bytes).
fn frames(name: &str) -> Vec<(i32, i64, u32, Vec<u8>)> {
    let p = path(name);
    let file = std::fs::File::open(&p).unwrap_or_else(|e| panic!("missing test vector {}: {e}", p.display()));
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap_or_else(|e| panic!("{name}: not a pcap file: {e}"));
    let link = u32::from(r.header().datalink) as i32;
    let mut out = Vec::new();
    while let Some(pkt) = r.next_packet() {
        let pkt = pkt.unwrap_or_else(|e| panic!("{name}: corrupt record: {e}"));
        out.push((link, pkt.timestamp.as_micros() as i64, pkt.orig_len, pkt.data.into_owned()));
    }
    out
}

fn replay(name: &str) -> Replay {
    let frames_read = frames(name);
    let link = LinkType::from_dlt(frames_read.first().map_or(1, |f| f.0)).expect("supported link type");
    let mut demux = Demux::new(link, IpReassemblyConfig::default());
    let groups = [Ipv4Addr::new(239, 0, 0, 1), Ipv4Addr::new(127, 255, 255, 255)];
    let mut datagrams = Vec::new();
    let t0 = Instant::now();
    let mut frames = 0;
    for (_, timestamp_us, original_len, data) in &frames_read {
        frames += 1;
        assert!(*timestamp_us > 1_700_000_000_000_000, "{name}: capture time {timestamp_us}");
        assert!(*original_len as usize >= data.len());
        demux.on_frame(
            t0,
            data,
            |d| groups.contains(d.ip()) && matches!(d.port(), 14000 | 14002),
            |d| datagrams.push((d.destination, d.source, d.payload.to_vec())),
        );
    }
    assert_eq!(frames, demux.stats().frames, "{name}: every frame read was decoded once");
    let mut per_port: BTreeMap<u16, Reassembler> = BTreeMap::new();
    let mut messages = Vec::new();
    for (dst, src, payload) in &datagrams {
        let r = per_port.entry(dst.port()).or_insert_with(|| Reassembler::new(ReassemblyConfig::default()));
        if let Outcome::Message(m) = r.on_datagram(t0, *src, payload) {
            let f = SampleFrame::new_checked(&m).expect("sample frame");
            messages.push((dst.port(), f.name().to_string(), Sample::decode(f.body()).expect("protobuf")));
        }
    }
    for r in per_port.values() {
        let s = r.stats();
        assert_eq!((s.malformed, s.lost_messages(), s.duplicates), (0, 0, 0), "{name}: {s:?}");
    }
    Replay { messages, datagrams, demux: demux.stats(), ip: demux.ip_stats() }
}

fn payloads<'a>(r: &'a Replay, topic: &str) -> Vec<&'a [u8]> {
    r.messages
        .iter()
        .filter(|(port, n, s)| *port == 14002 && n == topic && s.cmd_type == CmdType::SetSample as i32)
        .map(|(_, _, s)| &s.content.as_ref().unwrap().payload[..])
        .collect()
}

fn sha(msgs: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for m in msgs {
        h.update((m.len() as u64).to_le_bytes());
        h.update(m);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn expected(json: &str, topic: &str) -> (u64, String) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path(json)).unwrap()).unwrap();
    let t = &v["topics"][topic];
    (t["count"].as_u64().unwrap(), t["sha256"].as_str().unwrap().to_string())
}

fn mod251_ok(payloads: &[&[u8]]) -> bool {
    payloads.iter().enumerate().all(|(k, p)| p.iter().enumerate().all(|(i, b)| *b as usize == (i + k) % 251))
}

fn counts(r: &Replay) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for (_, _, s) in &r.messages {
        *m.entry(s.cmd_type).or_insert(0) += 1;
    }
    m
}

#[test]
fn cap2_just_over_one_datagram() {
    let r = replay("cap2_just_over_one_datagram.pcap");
    let p = payloads(&r, "wire_frag");
    let (n, digest) = expected("cap2_just_over_one_datagram.pub.json", "wire_frag");
    assert_eq!(p.len() as u64, n);
    assert!(p.iter().all(|x| x.len() == 65_420));
    assert_eq!(p.iter().map(|x| crc32fast::hash(x)).collect::<Vec<_>>(), [0xce754e7a, 0xe4d13415, 0x9791dd4d]);
    assert!(mod251_ok(&p));
    assert_eq!(sha(&p), digest);
    // One 65 507-byte datagram per message, 45 IP fragments each.
    assert_eq!((r.ip.completed, r.ip.fragments), (3, 135), "{:?}", r.ip);
    assert_eq!(r.ip.lost_datagrams(), 0);
    let c = counts(&r);
    assert_eq!((c[&1], c[&2], c[&3], c[&4]), (3, 6, 3, 8));
}

#[test]
fn cap3_one_mebibyte_messages() {
    let r = replay("cap3_1MiB_message.pcap");
    let p = payloads(&r, "wire_1mb");
    let (n, digest) = expected("cap3_1MiB_message.pub.json", "wire_1mb");
    assert_eq!(p.len() as u64, n);
    assert!(p.iter().all(|x| x.len() == 1 << 20));
    assert_eq!(p.iter().map(|x| crc32fast::hash(x)).collect::<Vec<_>>(), [0xef0e6054, 0x5f1272ff, 0x3544bbd5]);
    assert!(mod251_ok(&p));
    assert_eq!(sha(&p), digest);
    // 16 IP-fragmented datagrams of 45 frames per message.
    assert_eq!((r.ip.completed, r.ip.fragments), (48, 48 * 45), "{:?}", r.ip);
    assert_eq!(r.demux.frames_malformed + r.demux.udp_malformed, 0);
    let c = counts(&r);
    assert_eq!((c[&1], c[&2], c[&3], c[&4]), (3, 6, 4, 9));
}

#[test]
fn unfragmented_captures_match_their_peers() {
    for (file, json, topics, kinds) in [
        ("cap1_small_strings.pcap", "cap1_small_strings.pub.json", &["wire_small"][..], [10usize, 5, 3, 8]),
        ("cap4_two_topics.pcap", "cap4_two_topics.pub.json", &["wire_a", "wire_b"][..], [20, 10, 6, 7]),
        ("cap6_pub_first_late_sub.pcap", "cap6_pub_first_late_sub.pub.json", &["wire_late"][..], [5, 9, 3, 12]),
        ("cap7_local_mode_loopback.pcap", "cap7_local_mode_loopback.pub.json", &["wire_local"][..], [5, 5, 3, 7]),
    ] {
        let r = replay(file);
        for t in topics {
            let p = payloads(&r, t);
            let (n, digest) = expected(json, t);
            assert_eq!((p.len() as u64, sha(&p)), (n, digest), "{file} {t}");
        }
        let c = counts(&r);
        let got = [c[&1], c.get(&2).copied().unwrap_or(0), c[&3], c[&4]];
        assert_eq!(got, kinds, "{file}: set_sample, reg_publisher, reg_subscriber, reg_process");
        assert_eq!(r.ip.fragments, 0, "{file}");
        // IGMP reports are seen and set aside, never decoded as eCAL.
        if file != "cap7_local_mode_loopback.pcap" {
            assert!(r.demux.frames_not_udp > 0, "{file}: {:?}", r.demux);
        }
    }
    let r = replay("cap5_registration_only.pcap");
    let c = counts(&r);
    assert_eq!((c.get(&1), c[&2], c[&3], c[&4]), (None, 8, 9, 16));
}

/// The whole node above the transport: cap3's datagrams as a capture delivers them, injected
/// into a subscriber's node, arrive as the three 1 MiB messages with the recorded digest.
#[test]
fn cap3_through_a_node() {
    use middleware_core::testing::LoopbackBus;
    use middleware_core::{Config, Node, Raw};
    let r = replay("cap3_1MiB_message.pcap");
    let bus = LoopbackBus::new();
    let b = bus.clone();
    let node = Node::new(Config::default(), &b).unwrap();
    let sub = node.subscriber::<Raw>("wire_1mb").unwrap();
    for (dst, src, payload) in &r.datagrams {
        bus.inject(dst.port(), *src, payload);
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let Some(m) = sub.recv_timeout(Duration::from_secs(5)) else { break };
        got.push(m.value);
    }
    let refs: Vec<&[u8]> = got.iter().map(|v| &v[..]).collect();
    assert_eq!(sha(&refs), expected("cap3_1MiB_message.pub.json", "wire_1mb").1);
    // Real eCAL messages took the one-copy path: payload reassembled apart, handed over as is.
    let st = node.stats().data.reassembly;
    assert_eq!((st.reassembled, st.split), (3, 3), "{st:?}");
}

/// A splitter as the node's data channel uses: the payload located in the first fragment.
fn payload_splitter(first: &[u8]) -> Option<std::ops::Range<usize>> {
    middleware_core::pb::locate_payload(first).map(|s| s.payload_range())
}

#[test]
fn real_ecal_messages_split_around_their_payload_decode_as_whole_ones() {
    for (file, topic, n) in
        [("cap2_just_over_one_datagram.pcap", "wire_frag", 3), ("cap3_1MiB_message.pcap", "wire_1mb", 3)]
    {
        let r = replay(file);
        let t0 = Instant::now();
        let mut rs = Reassembler::with_splitter(ReassemblyConfig::default(), payload_splitter);
        let mut split = 0;
        for (_, src, payload) in r.datagrams.iter().filter(|(d, _, _)| d.port() == 14002) {
            if let Outcome::Split(m) = rs.on_datagram(t0, *src, payload) {
                let span = middleware_core::pb::locate_payload(&m.head).expect("located again in the head");
                let mut sample = middleware_core::pb::decode_without_payload(&m.head, &span, &m.tail)
                    .expect("splittable")
                    .expect("decodes");
                let joined = m.joined();
                let f = SampleFrame::new_checked(&joined[..]).unwrap();
                let whole = Sample::decode(f.body()).unwrap();
                sample.content.as_mut().unwrap().payload = m.payload.into();
                assert_eq!(sample, whole, "{file}");
                assert_eq!(f.name(), topic);
                split += 1;
            }
        }
        assert_eq!((split, rs.stats().split), (n, n as u64), "{file}");
    }
}

/// The capture filter as libpcap compiles and runs it, over real eCAL traffic to 239.0.0.1
/// (ports 14000 and 14002, IP-fragmented in cap3): the topic-group range passes what the group
/// passes; a range and a group elsewhere pass nothing; a port elsewhere passes only the
/// fragments after the first (which carry no port).
#[test]
fn the_capture_filter_compiles_and_passes_what_it_should() {
    use transport_udp_npcap::filter::bpf;
    let lib = transport_udp_npcap::libpcap::load(None).expect("libpcap installed (CI installs libpcap0.8)");
    let count = |name: &str, filter: &str| {
        let mut cap = transport_udp_npcap::libpcap::Handle::open_file(lib, &path(name)).expect("pcap file opens");
        cap.set_filter(filter).unwrap_or_else(|e| panic!("`{filter}`: {e}"));
        let mut n = 0usize;
        while cap.dispatch(|_| n += 1).unwrap_or_else(|e| panic!("{name}: {e}")) > 0 {}
        n
    };
    let mask = Ipv4Addr::new(255, 255, 255, 240);
    let (group, ports) = (Ipv4Addr::new(239, 0, 0, 1), [14000, 14002]);
    for name in ["cap3_1MiB_message.pcap", "cap4_two_topics.pcap"] {
        let listed = count(name, &bpf(&[group], None, &ports));
        assert!(listed > 0, "{name}");
        assert_eq!(count(name, &bpf(&[group], Some((Ipv4Addr::new(239, 0, 0, 0), mask)), &ports)), listed, "{name}");
        let elsewhere = Ipv4Addr::new(239, 0, 1, 1);
        assert_eq!(count(name, &bpf(&[elsewhere], Some((Ipv4Addr::new(239, 0, 1, 0), mask)), &ports)), 0, "{name}");
        let other_port = count(name, &bpf(&[group], Some((Ipv4Addr::new(239, 0, 0, 0), mask)), &[9]));
        assert!(other_port < listed, "{name}: {other_port} of {listed}");
        if name.starts_with("cap3") {
            assert!(other_port > 0, "cap3's fragments after the first pass whatever the port");
        }
        // The empty filter, which a capture installs when the wanted one is refused, passes
        // every frame.
        assert_eq!(count(name, ""), frames(name).len(), "{name}");
    }
}

/// A panic in the frame callback must not cost the frames after it in the same batch: libpcap
/// has taken them from its buffer, so skipping them would lose them uncounted. Each panicking
/// frame is counted, and the first panic is raised again once the batch is through.
#[test]
fn a_panicking_frame_callback_still_gets_the_rest_of_its_batch() {
    let lib = transport_udp_npcap::libpcap::load(None).expect("libpcap installed (CI installs libpcap0.8)");
    let name = "cap3_1MiB_message.pcap";
    let expected: Vec<Vec<u8>> = frames(name).into_iter().map(|f| f.3).collect();
    assert!(expected.len() > 3, "{name}");
    let mut cap = transport_udp_npcap::libpcap::Handle::open_file(lib, &path(name)).expect("pcap file opens");
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut raised = 0;
    loop {
        // Every third frame panics (after it was seen).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cap.dispatch(|pkt| {
                got.push(pkt.data.to_vec());
                if got.len() % 3 == 1 {
                    panic!("frame {} (test)", got.len());
                }
            })
        }));
        match r {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{name}: {e}"),
            Err(p) => {
                raised += 1;
                // The first panic of the batch is the one raised.
                let text = p.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(text.starts_with("frame ") && text.ends_with(" (test)"), "{text}");
            }
        }
    }
    assert_eq!(got, expected, "every frame handed over, in order, byte for byte");
    let panicking = expected.len().div_ceil(3) as u64;
    assert_eq!(cap.panicked_frames(), panicking);
    assert!(raised >= 1 && raised as u64 <= panicking, "one raised per batch with a panic: {raised}");
}

#[test]
fn the_libpcap_binding_reads_every_capture_as_pcap_file_does() {
    let lib = transport_udp_npcap::libpcap::load(None).expect("libpcap installed (CI installs libpcap0.8)");
    for name in [
        "cap1_small_strings.pcap",
        "cap2_just_over_one_datagram.pcap",
        "cap3_1MiB_message.pcap",
        "cap4_two_topics.pcap",
        "cap5_registration_only.pcap",
        "cap6_pub_first_late_sub.pcap",
        "cap7_local_mode_loopback.pcap",
    ] {
        let expected = frames(name);
        let link = expected[0].0;
        let mut cap = transport_udp_npcap::libpcap::Handle::open_file(lib, &path(name)).expect("pcap file opens");
        let mut got = Vec::new();
        loop {
            let n = cap
                .dispatch(|pkt| {
                    got.push((link, pkt.timestamp_us, pkt.original_len, pkt.data.to_vec()));
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if n == 0 {
                break;
            }
        }
        assert_eq!(cap.datalink(), link, "{name}: link type");
        assert_eq!(got.len(), expected.len(), "{name}: frame count");
        assert!(got == expected, "{name}: frames differ between libpcap and pcap-file");
    }
}
