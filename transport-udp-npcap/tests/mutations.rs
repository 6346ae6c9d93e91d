//! Property tests that mutate real captured frames (eCAL 6.1.1 traffic, Ethernet) instead of
//! drawing random bytes: bit flips (IPv4 flags, offsets, identifications, lengths, UDP ports),
//! truncations, header fields overwritten, splices of two frames, duplicated and reordered
//! frames, through frame decoding, IPv4 reassembly (or direct placement), UDP demux and eCAL
//! reassembly with small caps (`transport_udp_npcap::fuzzing::frames`, which asserts the
//! bounds and that everything expires). cap2 and cap3 carry IP-fragmented 65 507-byte
//! datagrams, so reordering and duplicating their frames exercises IPv4 reassembly on real
//! fragment trains.

use middleware_core::fuzzing::mutate::{stream, Mutation, Step};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Every frame of the captures, both crates' test data.
fn frames() -> &'static [Vec<u8>] {
    static F: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let files = [
            root.join("tests/data/cap2_just_over_one_datagram.pcap"),
            root.join("tests/data/cap3_1MiB_message.pcap"),
            root.join("../middleware-core/tests/data/captures/cap1_small_strings.pcap"),
            root.join("../middleware-core/tests/data/captures/cap5_registration_only.pcap"),
        ];
        let mut out = Vec::new();
        for f in files {
            let file = std::fs::File::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
            assert_eq!(r.header().datalink, pcap_file::DataLink::ETHERNET);
            while let Some(p) = r.next_packet() {
                out.push(p.unwrap().data.into_owned());
            }
        }
        out
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        // Mostly the IPv4 and UDP headers (bytes 14..42 of an Ethernet frame), sometimes anywhere.
        2 => (prop_oneof![3 => 14usize..39, 1 => any::<usize>()], any::<u32>())
            .prop_map(|(at, value)| Mutation::Overwrite { at, value }),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, other, from)| Mutation::Splice { at, other, from }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (any::<usize>(), proptest::collection::vec(mutation(), 0..3), 1u8..3, any::<bool>(), 0u8..4)
        .prop_map(|(pick, mutations, copies, late, ctl)| Step { pick, mutations, copies, late, ctl })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Runs of consecutive real frames (so fragment trains stay together), each frame mutated
    /// or not, duplicated, reordered.
    #[test]
    fn mutated_real_frames_hold_the_invariants(
        start in any::<usize>(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let all = frames();
        // Consecutive frames from `start`: the steps pick within that window.
        let window: Vec<Vec<u8>> = (0..64).map(|i| all[(start + i) % all.len()].clone()).collect();
        let steps: Vec<Step> = steps.into_iter().enumerate().map(|(i, mut s)| {
            // Mostly in order (pick = position), sometimes anywhere in the window.
            if s.pick % 4 != 0 {
                s.pick = i;
            }
            s
        }).collect();
        transport_udp_npcap::fuzzing::frames(&stream(&[0], &steps, &window));
    }
}

#[test]
fn the_corpus_holds_fragment_trains() {
    let f = frames();
    // IPv4 flags/offset at bytes 20..22 of an Ethernet frame: more-fragments or an offset.
    let fragments = f.iter().filter(|x| x.len() > 22 && (u16::from_be_bytes([x[20], x[21]]) & 0x3fff) != 0).count();
    assert!(fragments > 100, "{fragments} IP fragments among {} frames", f.len());
}
