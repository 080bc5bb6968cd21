//! pgvault: deduplicated, encrypted backups of PostgreSQL (dumps, base backups and
//! WAL), mountable as a read-only tree.
//!
//! The crate, top to bottom; each layer depends only on those below it:
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`cli`] | parsing and printing: each command builds an options struct and calls one function in [`ops`] (or mounts through [`fuse`]) |
//! | [`fuse`] | the kernel adapter for the mounted tree |
//! | [`vfs`] | the mounted tree without the kernel: paths, attributes, reads |
//! | [`ops`] | what is done with a repository: backup, restore, WAL push/fetch, forget, prune, du, check, drill, status |
//! | [`pg`] | PostgreSQL's side: pg_dump, pg_basebackup, psql, a private server; the custom-format and tar inspectors; recovery settings |
//! | [`store`] | the repository as storage: layout, config, envelopes, manifests, keys, chunks, the write and read paths, WAL archive, locks, records, index sync |
//! | [`index`] | this machine's sled cache of chunks, sketches and manifests |
//! | [`backend`] | object stores: local directory, S3, in memory |
//! | [`crypto`], [`chunker`], [`sketch`] | sealing and keys; FastCDC; similarity sketches |
//! | [`wal_name`], [`dump_data`], [`time`], [`host`], [`error`] | WAL names and LSNs; where each table's rows lie in a dump; times and durations; this machine's name and processes; the error type |
//! | `blocking`, `pipe` (private) | the one bridge to the blocking pool; a byte pipe between threads |
//!
//! `pg` sits beside `ops`, below it: its stream inspectors implement the write path's
//! hook ([`store::writer::StreamInspector`]), and it knows nothing else of storage.
#![forbid(unsafe_code)]

pub mod backend;
mod blocking;
pub mod chunker;
pub mod cli;
pub mod crypto;
pub mod dump_data;
pub mod error;
pub mod fuse;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
pub mod index;
pub mod ops;
pub mod pg;
mod pipe;
pub mod recreate;
pub mod sketch;
pub mod store;
pub mod time;
pub mod vfs;
pub mod wal_name;

pub use error::{Error, ErrorKind, Result};
pub use ops::RepoAccess;
pub use store::{InitOptions, Repository, SnapshotKind, SnapshotManifest};
