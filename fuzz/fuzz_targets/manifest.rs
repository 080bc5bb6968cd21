//! libFuzzer target: pgvault::fuzz::manifest (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::manifest(data));
