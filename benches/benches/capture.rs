//! The capture path's receive side, frames to eCAL messages: Ethernet frames of IPv4 fragments
//! (1500-byte MTU) of the 65 507-byte UDP datagrams eCAL 6 sends, through link decoding, IPv4
//! reassembly, UDP demultiplexing and eCAL reassembly, as a capture thread runs them (without
//! the protobuf decode and the hand-over to subscribers). 64 KiB and 1 MiB messages; frames in
//! order, shuffled across the whole message, and with one fragment of every datagram repeated.
//! Each twice: buffered (every byte copied twice, into the IPv4 buffer and then the eCAL
//! message buffer) and with direct placement (`direct_*`: fragments in order are copied once,
//! from the frame to the message buffer).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use middleware_core::wire::MAX_DATAGRAM_LEN;
use std::time::Instant;
use transport_udp_npcap::demux::Demux;
use transport_udp_npcap::frame::LinkType;
use transport_udp_npcap::fuzzing::{ecal_frames, EcalRoute};
use transport_udp_npcap::ip_reassembly::IpReassemblyConfig;

/// Where the UDP source port lies in the first fragment of a datagram (Ethernet 14 + IPv4 20).
const SRC_PORT_AT: usize = 34;

fn capture_path(c: &mut Criterion) {
    for (label, len) in [("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let in_order = ecal_frames(&message, MAX_DATAGRAM_LEN, 7, 1, 40_000);
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
            // Buffered: IPv4 reassembly, then eCAL reassembly (two copies per byte). Direct:
            // fragments in order go from the frame to the message buffer (one copy).
            for direct in [false, true] {
                let id = if direct { format!("direct_{order}") } else { order.to_string() };
                g.bench_with_input(BenchmarkId::from_parameter(id), &set, |b, set| {
                    let mut set = set.clone();
                    let mut demux = Demux::new(LinkType::Ethernet, IpReassemblyConfig::default());
                    let mut route = EcalRoute::new(direct);
                    let mut port = 0u16;
                    b.iter(|| {
                        // A new source port each round: the same (sender, id) again would be a
                        // late duplicate of a delivered message.
                        port = port.wrapping_add(1);
                        for f in set.iter_mut().filter(|f| f[20] & 0x1f == 0 && f[21] == 0) {
                            f[SRC_PORT_AT..SRC_PORT_AT + 2].copy_from_slice(&port.to_be_bytes());
                        }
                        let now = Instant::now();
                        for f in &set {
                            demux.on_frame_to(now, f, &mut route);
                        }
                        assert_eq!(route.messages.iter().map(Vec::len).sum::<usize>(), len);
                        route.messages.clear();
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, capture_path);
criterion_main!(benches);
