//! Pure-path benchmarks: header parse/emit, message split, reassembly (in order, reversed,
//! shuffled) for 64 KiB / 1 MiB / 16 MiB messages, topic hash.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use middleware_core::fragment::{split, Outcome, Reassembler, ReassemblyConfig};
use middleware_core::topic_group::fnv1_32;
use middleware_core::wire::{Datagram, DatagramRepr, MAX_DATAGRAM_LEN};
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
                    // A new sender port each round: the same (sender, id) again would be a late
                    // duplicate of a completed message.
                    port = port.wrapping_add(1);
                    let from = SocketAddr::from(([10, 0, 0, 1], port));
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

fn topic_hash(c: &mut Criterion) {
    c.bench_function("topic_hash/fnv1_32", |b| b.iter(|| fnv1_32(black_box("sensors/front_lidar/points"))));
}

criterion_group!(benches, header, reassembly, topic_hash);
criterion_main!(benches);
