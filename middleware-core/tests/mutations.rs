//! Property tests that mutate valid inputs instead of drawing uniform random bytes: real eCAL
//! 6.1.1 datagrams and registration samples from the captures, with bit flips, truncations,
//! header fields overwritten, splices of two real inputs, duplicates and reorders. Uniform
//! random bytes stop at the `ECAL` magic almost every time (measured below); mutated real
//! traffic gets past it and into fragment reassembly, sample frames, protobuf and the remote
//! table, where the lies that matter are told. Each mutated stream goes through the fuzz
//! targets' bodies (`middleware_core::fuzzing`), which assert the invariants: no panic, memory
//! within the caps, everything expiring, the registration fast path agreeing with decoding and
//! the table's byte count never drifting.

mod common;

use middleware_core::fuzzing;
use middleware_core::fuzzing::mutate::{apply, stream, Mutation, Step};
use middleware_core::pb::Sample;
use middleware_core::wire::{Datagram, SampleFrame};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use prost::Message;
use std::sync::OnceLock;

const CAPTURES: &[&str] = &[
    "cap1_small_strings.pcap",
    "cap4_two_topics.pcap",
    "cap5_registration_only.pcap",
    "cap6_pub_first_late_sub.pcap",
    "cap7_local_mode_loopback.pcap",
];

/// Every UDP payload of the captures (eCAL datagrams, registration and data).
fn corpus() -> &'static [Vec<u8>] {
    static C: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| CAPTURES.iter().flat_map(|c| common::read_udp(c)).map(|u| u.payload).collect())
}

/// The protobuf bodies of the captures' registration samples.
fn registrations() -> &'static [Vec<u8>] {
    static R: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    R.get_or_init(|| {
        corpus()
            .iter()
            .filter_map(|d| {
                let d = Datagram::new_checked(&d[..]).ok()?;
                let f = SampleFrame::new_checked(d.body()).ok()?;
                (f.name() == middleware_core::registration::REG_SAMPLE_NAME).then(|| f.body().to_vec())
            })
            .collect()
    })
}

/// A mutation drawn for a property test.
fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        // Mostly the 24-byte header's fields (8..24), sometimes anywhere.
        2 => (prop_oneof![3 => 8usize..21, 1 => any::<usize>()], any::<u32>())
            .prop_map(|(at, value)| Mutation::Overwrite { at, value }),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, other, from)| Mutation::Splice { at, other, from }),
    ]
}

/// A step drawn for a property test.
fn step() -> impl Strategy<Value = Step> {
    (any::<usize>(), proptest::collection::vec(mutation(), 0..4), 1u8..3, any::<bool>(), any::<u8>())
        .prop_map(|(pick, mutations, copies, late, ctl)| Step { pick, mutations, copies, late, ctl })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Mutated, duplicated and reordered real datagrams through reassembly (small caps), sample
    /// frames and protobuf, as the data channel runs them.
    #[test]
    fn mutated_real_datagrams_hold_the_invariants(steps in proptest::collection::vec(step(), 1..60)) {
        fuzzing::datagrams(&stream(&[], &steps, corpus()));
    }

    /// Mutated real registration samples (protobuf bodies) into the remote table, in network
    /// and local mode, through both the decoding path and the node's fast path, with a small
    /// byte budget.
    #[test]
    fn mutated_real_registrations_hold_the_invariants(
        mode in 0u8..2,
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        fuzzing::registration(&stream(&[mode], &steps, registrations()));
    }
}

/// The point of mutating real inputs, measured: of 2 000 mutated real datagrams (one to three
/// mutations each) about half (945 when written) still pass the header and sample-frame checks
/// and reach the protobuf decoder, while none of 2 000 uniformly random inputs of the same
/// lengths does.
#[test]
fn mutations_reach_the_decoders_where_random_bytes_do_not() {
    let pool = corpus();
    assert!(pool.len() > 100 && registrations().len() > 10, "{} datagrams", pool.len());
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let steps = proptest::collection::vec(mutation(), 1..4);
    let reaches = |d: &[u8]| {
        Datagram::new_checked(d)
            .ok()
            .and_then(|d| SampleFrame::new_checked(d.body()).ok().map(|f| Sample::decode(f.body()).is_ok()))
            .is_some()
    };
    let (mut mutated, mut random) = (0, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..2000 {
        let muts = steps.new_tree(&mut runner).unwrap().current();
        let mut v = pool[i % pool.len()].clone();
        for m in &muts {
            v = apply(&v, m, pool);
        }
        mutated += usize::from(reaches(&v));
        let noise: Vec<u8> = (0..v.len())
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        random += usize::from(reaches(&noise));
    }
    assert!(mutated > 600, "only {mutated} of 2000 mutated datagrams reached the protobuf decoder");
    assert_eq!(random, 0, "random bytes passed the magic check");
    eprintln!("reached the protobuf decoder: {mutated} of 2000 mutated real datagrams, {random} of 2000 random inputs");
}
