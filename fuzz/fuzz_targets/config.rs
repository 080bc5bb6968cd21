//! libFuzzer target: pgvault::fuzz::config (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::config(data));
