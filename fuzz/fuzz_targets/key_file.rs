//! libFuzzer target: pgvault::fuzz::key_file (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::key_file(data));
