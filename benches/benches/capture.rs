//! The capture path's receive side, frames to eCAL messages: Ethernet frames of IPv4 fragments
//! (1500-byte MTU) of the 65 507-byte UDP datagrams eCAL 6 sends, through link decoding, IPv4
//! reassembly, UDP demultiplexing and eCAL reassembly, as a capture thread runs them (without
//! the protobuf decode and the hand-over to subscribers). 64 KiB and 1 MiB messages; frames in
//! order, shuffled across the whole message, and with one fragment of every datagram repeated.
//! The baseline for the direct-placement work (the capture-path issue): today every byte is
//! copied twice here (IPv4 buffer, then eCAL message buffer).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use middleware_core::fragment::{split, Outcome, Reassembler, ReassemblyConfig};
use middleware_core::wire::MAX_DATAGRAM_LEN;
use std::time::Instant;
use transport_udp_npcap::demux::Demux;
use transport_udp_npcap::frame::LinkType;
use transport_udp_npcap::ip_reassembly::IpReassemblyConfig;

/// Where the UDP source port lies in the first fragment of a datagram (Ethernet 14 + IPv4 20).
const SRC_PORT_AT: usize = 34;

/// Ethernet frames of `message` sent as eCAL datagrams over UDP to 239.0.0.1:14002, each UDP
/// datagram cut into IPv4 fragments of 1480 bytes; IP identifications from `first_id` on.
fn frames(message: &[u8], first_id: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (k, piece) in split(message, MAX_DATAGRAM_LEN, 7).unwrap().enumerate() {
        let mut udp = Vec::with_capacity(8 + piece.header.len() + piece.body.len());
        udp.extend_from_slice(&40_000u16.to_be_bytes());
        udp.extend_from_slice(&14_002u16.to_be_bytes());
        udp.extend_from_slice(&((8 + piece.header.len() + piece.body.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&piece.header);
        udp.extend_from_slice(piece.body);
        let id = first_id.wrapping_add(k as u16);
        let mut off = 0;
        while off < udp.len() {
            let end = (off + 1480).min(udp.len());
            let more = end < udp.len();
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + end - off) as u16).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&(((off / 8) as u16) | if more { 0x2000 } else { 0 }).to_be_bytes());
            f.extend_from_slice(&[1, 17, 0, 0, 10, 77, 0, 1, 239, 0, 0, 1]);
            f.extend_from_slice(&udp[off..end]);
            out.push(f);
            off = end;
        }
    }
    out
}

fn capture_path(c: &mut Criterion) {
    for (label, len) in [("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let in_order = frames(&message, 1);
        let mut shuffled = in_order.clone();
        benches::shuffle(&mut shuffled, 11);
        // One fragment of every UDP datagram arrives twice (its copy right after it).
        let mut duplicated = Vec::new();
        for (i, f) in in_order.iter().enumerate() {
            duplicated.push(f.clone());
            if i % 45 == 3 {
                duplicated.push(f.clone());
            }
        }
        let mut g = c.benchmark_group(format!("capture_path/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        for (order, set) in [("in_order", in_order), ("shuffled", shuffled), ("duplicated", duplicated)] {
            g.bench_with_input(BenchmarkId::from_parameter(order), &set, |b, set| {
                let mut set = set.clone();
                let mut demux = Demux::new(LinkType::Ethernet, IpReassemblyConfig::default());
                let mut ecal = Reassembler::new(ReassemblyConfig::default());
                let mut port = 0u16;
                b.iter(|| {
                    // A new source port each round: the same (sender, id) again would be a late
                    // duplicate of a delivered message.
                    port = port.wrapping_add(1);
                    for f in set.iter_mut().filter(|f| f[20] & 0x1f == 0 && f[21] == 0) {
                        f[SRC_PORT_AT..SRC_PORT_AT + 2].copy_from_slice(&port.to_be_bytes());
                    }
                    let now = Instant::now();
                    let mut got = 0;
                    for f in &set {
                        demux.on_frame(
                            now,
                            f,
                            |_| true,
                            |d| {
                                if let Outcome::Message(m) = ecal.on_datagram(now, d.source, d.payload) {
                                    got += m.len();
                                }
                            },
                        );
                    }
                    assert_eq!(got, len);
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, capture_path);
criterion_main!(benches);
