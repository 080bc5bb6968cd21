//! pgvault: deduplicated, encrypted backups of PostgreSQL, mountable as a read-only tree.
//!
//! Layers, each depending only on those below it: `cli` (in the binary) parses and
//! prints; [`pg`] runs PostgreSQL's tools; [`fuse`] serves the mounted tree to the
//! kernel and [`vfs`] is that tree (paths, attributes, reads) without the kernel;
//! [`repo`] holds snapshots, the write path and the read path; [`index`] is the local
//! sled cache; [`crypto`] and [`chunker`] seal and cut bytes; [`backend`] stores objects.
#![forbid(unsafe_code)]

pub mod backend;
pub mod chunker;
pub mod crypto;
pub mod error;
pub mod fuse;
pub mod index;
pub mod pg;
pub mod pipe;
pub mod repo;
pub mod sketch;
pub mod vfs;
pub mod wal_name;

pub use error::{Error, ErrorKind, Result};

/// This machine's name, recorded in manifests, key files and locks.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
pub mod cli;
