#![no_main]
//! Body: `transport_udp_npcap::fuzzing::direct_placement` (replayed by the regression tests).
libfuzzer_sys::fuzz_target!(|data: &[u8]| transport_udp_npcap::fuzzing::direct_placement(data));
