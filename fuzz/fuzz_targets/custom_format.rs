//! libFuzzer target: pgvault::fuzz::custom_format (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::custom_format(data));
