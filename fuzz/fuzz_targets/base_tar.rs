//! libFuzzer target: pgvault::fuzz::base_tar (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::base_tar(data));
