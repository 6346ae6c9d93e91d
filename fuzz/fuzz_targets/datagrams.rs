#![no_main]
//! Body: `middleware_core::fuzzing::datagrams` (replayed by the regression tests).
libfuzzer_sys::fuzz_target!(|data: &[u8]| middleware_core::fuzzing::datagrams(data));
