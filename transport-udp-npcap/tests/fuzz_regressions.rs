//! The fuzz targets' bodies (`middleware_core::fuzzing`, `transport_udp_npcap::fuzzing`) on
//! 1. every file under `fuzz/regressions/<target>/`: the hand-made hostile inputs
//!    (`fuzz/make_hostile_inputs.py`) and every crash input the fuzzers ever found;
//! 2. the seed corpora cut from the real eCAL captures (`fuzz/seeds/<target>/`, written by
//!    `fuzz/make_capture_seeds.py`);
//! 3. the real eCAL captures, in the fuzzers' input framing, frame by frame.
//!
//! A body panics when an invariant breaks (caps exceeded, something not expiring).

use std::path::{Path, PathBuf};

type Body = fn(&[u8]);

const TARGETS: &[(&str, Body)] = &[
    ("datagrams", middleware_core::fuzzing::datagrams),
    ("sample", middleware_core::fuzzing::sample),
    ("registration", middleware_core::fuzzing::registration),
    ("frames", transport_udp_npcap::fuzzing::frames),
    ("ip_fragments", transport_udp_npcap::fuzzing::ip_fragments),
    ("direct_placement", transport_udp_npcap::fuzzing::direct_placement),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn record(ctl: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ctl];
    v.extend_from_slice(&(body.len().min(0xffff) as u16).to_le_bytes());
    v.extend_from_slice(&body[..body.len().min(0xffff)]);
    v
}

#[test]
fn every_regression_input_holds_the_invariants() {
    let mut total = 0;
    for ((target, body), folder) in TARGETS.iter().flat_map(|t| [(t, "fuzz/regressions"), (t, "fuzz/seeds")]) {
        let dir = workspace().join(folder).join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no inputs for {target} in {folder}");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            if let Err(p) = std::panic::catch_unwind(|| body(&data)) {
                panic!("{target}: {} fails again: {:?}", f.display(), p.downcast_ref::<String>());
            }
            total += 1;
        }
    }
    assert!(total >= 18 + 44, "{total} inputs: regression or seed files missing");
}

/// Frames of every capture, and the UDP payloads they carry, through the bodies.
#[test]
fn the_real_captures_hold_the_invariants() {
    use transport_udp_npcap::libpcap::{load, Handle};
    let lib = load(None).expect("libpcap installed (CI installs libpcap0.8)");
    let dirs =
        [workspace().join("middleware-core/tests/data/captures"), workspace().join("transport-udp-npcap/tests/data")];
    let mut captures = 0;
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_none_or(|e| e != "pcap") {
                continue;
            }
            captures += 1;
            let mut h = Handle::open_file(lib, &p).unwrap();
            let link = match h.datalink() {
                1 => 0u8,
                113 => 1,
                276 => 2,
                0 => 3,
                108 => 4,
                _ => 5,
            };
            let mut frames = vec![link];
            let mut datagrams = Vec::new();
            let mut demux = transport_udp_npcap::demux::Demux::new(
                transport_udp_npcap::frame::LinkType::from_dlt(h.datalink()).unwrap(),
                Default::default(),
            );
            let now = std::time::Instant::now();
            while h
                .dispatch(|pkt| {
                    frames.extend(record(0, pkt.data));
                    demux.on_frame(now, pkt.data, |_| true, |d| datagrams.extend(record(0, d.payload)));
                })
                .unwrap()
                > 0
            {}
            transport_udp_npcap::fuzzing::frames(&frames);
            middleware_core::fuzzing::datagrams(&datagrams);
            assert!(!datagrams.is_empty(), "{}: no datagrams", p.display());
        }
    }
    assert!(captures >= 6, "{captures} captures");
}
