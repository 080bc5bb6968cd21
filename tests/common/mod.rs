//! Shared test bench: throwaway PostgreSQL clusters, S3 servers and a pgvault runner.
#![allow(dead_code)]

pub mod fixtures;
pub mod mount;
pub mod pg;
pub mod s3;
pub mod vault;
