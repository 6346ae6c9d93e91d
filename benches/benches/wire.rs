//! Pure-path benchmarks: header parse/emit, message split, reassembly (in order, reversed,
//! shuffled) for 64 KiB / 1 MiB / 16 MiB messages, reassembly of `frames` send mode's
//! frame-sized datagrams as a capture sees them (segmentation offload buffers uncut), a flood
//! forcing an eviction per datagram from full tables, topic hash.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use middleware_core::fragment::{split, Outcome, Reassembler, ReassemblyConfig};
use middleware_core::topic_group::fnv1_32;
use middleware_core::wire::{coalesced_segment_len, Datagram, DatagramRepr, MAX_DATAGRAM_LEN};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

fn header(c: &mut Criterion) {
    let bytes = DatagramRepr::Fragment { id: 7, index: 3, len: 0 }.to_bytes();
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| DatagramRepr::parse(&Datagram::new_checked(black_box(&bytes[..])).unwrap()).unwrap())
    });
    g.bench_function("emit", |b| b.iter(|| black_box(DatagramRepr::Whole { len: black_box(97) }).to_bytes()));
    g.finish();
}

fn datagrams(len: usize) -> Vec<Vec<u8>> {
    let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
    split(&msg, MAX_DATAGRAM_LEN, 1).unwrap().map(|p| [&p.header[..], p.body].concat()).collect()
}

/// A new sender (port) for each round: the same (sender, id) again would be a late duplicate of
/// a completed message.
fn next_sender(port: &mut u16) -> SocketAddr {
    *port = port.wrapping_add(1);
    SocketAddr::from(([10, 0, 0, 1], *port))
}

fn reassembly(c: &mut Criterion) {
    for (label, len) in [("64KiB", 64 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20)] {
        let mut g = c.benchmark_group(format!("reassemble/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        if len >= 16 << 20 {
            g.sample_size(20);
        }
        let in_order = datagrams(len);
        let mut reversed = in_order.clone();
        reversed.reverse();
        let mut shuffled = in_order.clone();
        benches::shuffle(&mut shuffled, 7);
        for (order, dgs) in [("in_order", &in_order), ("reversed", &reversed), ("shuffled", &shuffled)] {
            g.bench_with_input(BenchmarkId::from_parameter(order), dgs, |b, dgs| {
                let mut r = Reassembler::new(ReassemblyConfig::default());
                let now = Instant::now();
                let mut port = 0u16;
                b.iter(|| {
                    let from = next_sender(&mut port);
                    let mut n = 0;
                    for d in dgs {
                        if let Outcome::Message(m) = r.on_datagram(now, from, d) {
                            n += m.len();
                        }
                    }
                    assert_eq!(n, len);
                })
            });
        }
        g.finish();
    }
    let mut g = c.benchmark_group("split");
    let msg = vec![1u8; 1 << 20];
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("1MiB", |b| b.iter(|| split(black_box(&msg), MAX_DATAGRAM_LEN, 1).unwrap().count()));
    g.finish();
}

/// A message in `frames` send mode (1472-byte datagrams) as a capture on the sending host or
/// across veth sees it: the info datagram alone, then the fragments in segmentation offload
/// buffers of up to 44 datagrams each, uncut. Each buffer goes through what the data channel
/// does with it: the shape check (`coalesced_segment_len`), runs appended in place
/// (`append_run`), each run's last datagram one by one. Plain reassembly: the data channel's
/// split of a sample's payload into a buffer of its own needs a real sample, not these bytes.
fn frames_run(c: &mut Criterion) {
    const DATAGRAM: usize = 1472;
    for (label, len) in [("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut pieces = split(&msg, DATAGRAM, 1).unwrap().map(|p| [&p.header[..], p.body].concat());
        let info = pieces.next().unwrap();
        let fragments: Vec<Vec<u8>> = pieces.collect();
        let buffers: Vec<Vec<u8>> = fragments.chunks(44).map(|run| run.concat()).collect();
        // Each buffer of two or more datagrams is taken for an offload buffer.
        assert!(buffers.iter().all(|b| b.len() <= DATAGRAM || coalesced_segment_len(b) == Some(DATAGRAM)));
        let mut g = c.benchmark_group(format!("frames_run/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("reassemble", |b| {
            let mut r = Reassembler::new(ReassemblyConfig::default());
            let now = Instant::now();
            let mut port = 0u16;
            b.iter(|| {
                let from = next_sender(&mut port);
                let (mut n, mut in_runs) = (0, 0);
                assert!(matches!(r.on_datagram(now, from, &info), Outcome::Pending));
                for buffer in &buffers {
                    let size = coalesced_segment_len(buffer).unwrap_or(buffer.len());
                    let mut rest = &buffer[..];
                    while !rest.is_empty() {
                        let taken = r.append_run(now, from, rest, size);
                        in_runs += taken;
                        rest = &rest[taken..];
                        if rest.is_empty() {
                            break;
                        }
                        let (piece, after) = rest.split_at(size.min(rest.len()));
                        rest = after;
                        if let Outcome::Message(m) = r.on_datagram(now, from, piece) {
                            n += m.len();
                        }
                    }
                }
                assert_eq!(n, len);
                // All but each buffer's last datagram (and the message's first fragment, which
                // reserves the body) went in runs.
                assert!(in_runs >= len - buffers.len() * 2 * DATAGRAM);
            })
        });
        g.finish();
    }
}

fn topic_hash(c: &mut Criterion) {
    c.bench_function("topic_hash/fnv1_32", |b| b.iter(|| fnv1_32(black_box("sensors/front_lidar/points"))));
}

/// IPv4 reassembly in user space (the capture path): one 64 KiB UDP datagram (65 515 bytes of IP
/// payload) cut into 45 fragments of 1480 bytes, as the kernel sends it over a 1500-byte MTU.
fn ip_reassembly(c: &mut Criterion) {
    use std::net::Ipv4Addr;
    use transport_udp_npcap::frame::Ipv4Packet;
    use transport_udp_npcap::ip_reassembly::{IpReassembler, IpReassemblyConfig};
    let payload: Vec<u8> = (0..65_515u32).map(|i| i as u8).collect();
    let chunks: Vec<(usize, &[u8])> = payload.chunks(1480).enumerate().map(|(i, c)| (i * 1480, c)).collect();
    assert_eq!(chunks.len(), 45);
    let mut g = c.benchmark_group("ip_reassembly");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    let mut r = IpReassembler::new(IpReassemblyConfig::default());
    let mut id = 0u16;
    g.bench_function("64KiB_45_fragments_in_order", |b| {
        b.iter(|| {
            id = id.wrapping_add(1);
            let now = std::time::Instant::now();
            let mut whole = 0;
            for &(offset, chunk) in &chunks {
                let p = Ipv4Packet {
                    src: Ipv4Addr::new(10, 77, 0, 1),
                    dst: Ipv4Addr::new(239, 0, 0, 1),
                    protocol: 17,
                    identification: id,
                    offset,
                    more_fragments: offset + chunk.len() < payload.len(),
                    payload: chunk,
                };
                if let Some(done) = r.push(now, &p) {
                    whole = done.len();
                    if let std::borrow::Cow::Owned(buf) = done {
                        r.recycle(buf);
                    }
                }
            }
            assert_eq!(whole, payload.len());
        })
    });
    g.finish();
}

/// A flood that forces an eviction per datagram: each table full (65 536 partial messages,
/// eCAL's and IPv4's), every new datagram begins a message that never completes, so making
/// room for it evicts the oldest. The cost per datagram at steady state: with the oldest found
/// by a scan of the table it grew with the table; with the tables kept oldest first
/// (`middleware_core::bounded`) it does not.
fn eviction_flood(c: &mut Criterion) {
    use std::net::Ipv4Addr;
    use transport_udp_npcap::frame::Ipv4Packet;
    use transport_udp_npcap::ip_reassembly::{IpReassembler, IpReassemblyConfig};
    const FULL: usize = 65_536;
    let mut g = c.benchmark_group("eviction_flood");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let from = SocketAddr::from(([10, 0, 0, 9], 4000));
    let info = |id: i32| DatagramRepr::FragmentInfo { id, count: 2, total_len: 2800 }.to_bytes();
    let config = ReassemblyConfig { max_partial_messages: FULL, max_buffered_bytes: 1 << 30, ..Default::default() };
    let mut r = Reassembler::new(config);
    let mut id = 0i32;
    for _ in 0..FULL {
        id += 1;
        r.on_datagram(now, from, &info(id));
    }
    assert_eq!(r.partial_messages(), FULL);
    g.bench_function("ecal_65536_partials", |b| {
        b.iter(|| {
            id = id.wrapping_add(1);
            black_box(r.on_datagram(now, from, &info(id)));
        })
    });
    assert_eq!(r.partial_messages(), FULL);
    let config = IpReassemblyConfig { max_datagrams: FULL, max_buffered_bytes: 1 << 30, ..Default::default() };
    let mut ip = IpReassembler::new(config);
    let body = [7u8; 8];
    let mut n = 0u32;
    let push = |ip: &mut IpReassembler, n: u32| {
        let p = Ipv4Packet {
            src: Ipv4Addr::from(0x0a00_0000 | (n >> 16)),
            dst: Ipv4Addr::new(239, 0, 0, 1),
            protocol: 17,
            identification: n as u16,
            offset: 0,
            more_fragments: true,
            payload: &body,
        };
        black_box(ip.push(now, &p));
    };
    for _ in 0..FULL {
        n += 1;
        push(&mut ip, n);
    }
    assert_eq!(ip.partial_datagrams(), FULL);
    g.bench_function("ipv4_65536_partials", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            push(&mut ip, n);
        })
    });
    assert_eq!(ip.partial_datagrams(), FULL);
    g.finish();
}

/// Link + IPv4 decode of every frame of a real eCAL capture (cap1: Ethernet, registration and
/// data datagrams), as the capture thread does for each frame.
fn frame_decode(c: &mut Criterion) {
    use transport_udp_npcap::frame::{decode, LinkType};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware-core/tests/data/captures/cap1_small_strings.pcap");
    let file = std::fs::read(path).expect("capture file");
    // Classic pcap, little-endian: 24-byte file header (link type at 20), then records of a
    // 16-byte header (captured length at 8) and the frame.
    let link = LinkType::from_dlt(i32::from_le_bytes(file[20..24].try_into().unwrap())).expect("link type");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(&file[at + 16..at + 16 + len]);
        at += 16 + len;
    }
    let bytes: usize = frames.iter().map(|f| f.len()).sum();
    let mut g = c.benchmark_group("frame_decode");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function(format!("cap1_{}_frames", frames.len()), |b| {
        b.iter(|| frames.iter().filter(|f| decode(link, black_box(f)).is_ok()).count())
    });
    g.finish();
}

/// Applying one refresh period of registration from 100 processes of 10 publishers and 10
/// subscribers each (2 100 samples, as each process hears them at the scale test's 100-process
/// size) to a table that already holds them: decoding and re-applying every sample (what the node
/// did before), against recognising unchanged samples by fingerprint (what it does now).
fn registration(c: &mut Criterion) {
    use middleware_core::pb::Sample;
    use middleware_core::registration::{
        process_sample, topic_sample, Acceptance, Direction, Identity, ProcessState, RemoteTable, TopicReport,
    };
    use prost::Message;
    let mut samples = Vec::new();
    for pid in 0..100 {
        let id = Identity {
            host_name: format!("host{}", pid % 2),
            process_id: 1000 + pid,
            process_name: "/usr/local/bin/scale_node".into(),
            unit_name: "scale_node".into(),
            process_parameter: "scale_node --topics 10".into(),
            config_file_path: String::new(),
        };
        samples.push(process_sample(&id, &ProcessState::default(), false).encode_to_vec());
        for k in 0..20u64 {
            let report = TopicReport {
                entity_id: (pid as u64) << 32 | k,
                topic_name: format!("scale_{}", k % 10),
                ..Default::default()
            };
            let dir = if k < 10 { Direction::Publisher } else { Direction::Subscriber };
            samples.push(topic_sample(&id, dir, &report, false).encode_to_vec());
        }
    }
    let accept = Acceptance { host_name: "me".into(), process_id: 1, network_mode: true, loopback: false };
    let mut g = c.benchmark_group("registration/refresh_2100_samples");
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.bench_function("decode_and_apply", |b| {
        let mut t = RemoteTable::default();
        let now = Instant::now();
        b.iter(|| {
            for s in &samples {
                let d = Sample::decode(black_box(&s[..])).unwrap();
                t.on_sample(now, &d, &accept).unwrap();
            }
        })
    });
    g.bench_function("unchanged_by_fingerprint", |b| {
        let mut t = RemoteTable::default();
        let now = Instant::now();
        for s in &samples {
            let fp = t.fingerprint(s);
            t.on_sample_fingerprinted(now, &Sample::decode(&s[..]).unwrap(), &accept, Some(fp)).unwrap();
        }
        b.iter(|| {
            for s in &samples {
                let fp = t.fingerprint(black_box(s));
                assert!(t.refresh_unchanged(now, fp).is_some());
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    header,
    reassembly,
    frames_run,
    ip_reassembly,
    eviction_flood,
    frame_decode,
    topic_hash,
    registration
);
criterion_main!(benches);
