//! libFuzzer target: pgvault::fuzz::wal_names (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvault::fuzz::wal_names(data));
