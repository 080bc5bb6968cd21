//! libFuzzer target: pgvault::fuzz::chunk_object (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::chunk_object(data));
