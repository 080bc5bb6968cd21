//! Shared test bench: throwaway PostgreSQL clusters and a pgvault runner.
#![allow(dead_code)]

pub mod mount;
pub mod pg;
pub mod vault;
