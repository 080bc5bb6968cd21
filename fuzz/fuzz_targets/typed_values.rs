//! libFuzzer target: pgvault::fuzz::typed_values (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::typed_values(data));
