//! What a backup point is: the manifest stored, sealed, under `snapshots/<id>`.

use serde::{Deserialize, Serialize};

use crate::crypto::ChunkId;
pub use crate::wal_name::Lsn;

/// What kind of backup point a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// A logical dump, `pg_dump -Fc`.
    Dump,
    /// A physical base backup, the `pg_basebackup` tar stream.
    Base,
}

impl SnapshotKind {
    /// The lowercase name used in listings, paths and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            SnapshotKind::Dump => "dump",
            SnapshotKind::Base => "base",
        }
    }
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chunk of a file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
    /// The chunk its object is a delta on, if it is one: reading this chunk needs
    /// that object too, so whatever keeps this chunk alive keeps its base alive. Named
    /// here so that prune, du and check need no chunk downloads to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ChunkId>,
}

impl ChunkRef {
    /// A reference to a chunk stored in full.
    pub fn full(id: ChunkId, len: u32) -> Self {
        ChunkRef {
            id,
            len,
            base: None,
        }
    }

    /// The chunk objects reading this chunk needs: itself, and its base if any.
    pub fn objects(&self) -> impl Iterator<Item = ChunkId> {
        std::iter::once(self.id).chain(self.base)
    }
}

/// What a backup cost and did, with units in the field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    pub bytes_read: u64,
    /// Bytes of chunk objects this backup added to the repository (compressed, sealed).
    pub bytes_stored_new: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
    /// Chunks that were already stored, by this backup or an earlier one.
    pub chunks_reused: u64,
    /// Of the new chunks, those stored as a delta on a similar stored chunk.
    #[serde(default)]
    pub chunks_new_delta: u64,
    pub duration_ms: u64,
    /// Of `bytes_read`, compressed table data stored as its inflated text and
    /// re-created on read (see [`crate::recreate`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_recreated: u64,
    /// Compressed table data that did not re-create and is stored as it came.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_kept_compressed: u64,
    /// The length of what was chunked, when it is not the source (a dump stored
    /// with its compressed table data inflated).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_stored_as_text: u64,
    /// Of `bytes_read`, files found unchanged since the previous base backup and
    /// taken from it by reference, not read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_referenced: u64,
    /// The files those bytes belong to.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_referenced: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One backup point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub id: String,
    /// The backup point's time: when it was taken, or the `--time` given on import.
    pub time: chrono::DateTime<chrono::Utc>,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub db: String,
    pub kind: SnapshotKind,
    pub hostname: String,
    /// The file's name in the mounted tree, e.g. `footdash.dump`.
    pub file_name: String,
    pub size_bytes: u64,
    pub chunks: Vec<ChunkRef>,
    pub stats: BackupStats,
    /// pgvault filled in the table of contents' data offsets of a piped dump.
    #[serde(default)]
    pub dump_offsets_filled: bool,
    /// For base backups: where in the WAL the backup starts and ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseBackupInfo>,
    /// For dumps: where each table's COPY text lies, so that one table is read
    /// alone. `None` for a compressed dump, and for dumps stored before pgvault
    /// recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_contents: Option<crate::dump_data::DumpContents>,
    /// For a dump whose compressed table data is stored as its inflated text: how
    /// the stored stream (`chunks`) maps to the file, which reads re-create. `None`
    /// when the chunks are the file itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreation: Option<crate::recreate::Recreation>,
    /// Similarity sketches of the full chunks this snapshot needs, as far as the
    /// writer knew them: an index rebuild restores the sketch index from these, so
    /// losing the cache costs no compression once rebuilt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sketches: Vec<(ChunkId, crate::sketch::Sketch)>,
}

/// What PITR needs to know about a physical base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackupInfo {
    pub timeline: u32,
    /// Replay starts here (the backup's checkpoint redo point).
    pub start_lsn: Lsn,
    /// The cluster is consistent once replay has passed this point.
    pub stop_lsn: Lsn,
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
    /// PostgreSQL's major version, from PG_VERSION.
    pub pg_version: String,
    /// The cluster's system identifier, from global/pg_control: WAL from another
    /// cluster must never be replayed onto this backup.
    pub system_identifier: u64,
    /// The `backup_label` as pg_basebackup wrote it.
    pub backup_label: String,
    /// The tablespaces the backup holds under `pg_tblspc/<oid>/`, and where they
    /// lived (its `tablespace_map`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
    /// Every entry of the tar stream, in order, with where its bytes lie: a restore
    /// writes files in parallel and leaves alone those that already match, and the
    /// mount shows the tree. Empty for backups stored before pgvault recorded it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<BaseFile>,
}

/// A tablespace of a base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    /// Where it lived on the backed-up host.
    pub location: String,
}

/// What a base backup's tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFileKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a base backup's tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseFile {
    /// Its path in the stream, without `./` or a trailing slash: `base/1/1259`.
    pub path: String,
    pub kind: BaseFileKind,
    pub mode: u32,
    pub size: u64,
    /// Seconds since the epoch, as the tar header has it.
    pub mtime: u64,
    /// Where its bytes start in the stored stream.
    pub offset: u64,
    /// The blake3 of its bytes, in hex, for a file smaller than
    /// [`BaseFile::HASHED_BELOW_BYTES`]: a delta restore leaves alone a file that
    /// already has it (larger files it compares chunk by chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The snapshot's chunks `[first, first + count)` that hold exactly this entry
    /// (its headers, bytes and padding), when the stream was cut around it: a later
    /// backup that finds the file unchanged names these chunks instead of reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<[u32; 2]>,
    /// What the file was on disk when it was read, for a file read from the data
    /// directory and cut around: the test for "unchanged".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<FileStamp>,
}

/// A file's identity and last change, from `stat`, and the CRC-32C of its bytes
/// (which a `backup_manifest` lists, so a reused file needs it without a read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The inode number: a file replaced by another (a rename over it) has a new one.
    pub ino: u64,
    /// The modification time, in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// The inode's change time, in nanoseconds since the epoch: unlike mtime, no
    /// tool can set it back, and every write, chown or chmod moves it.
    pub ctime_ns: i64,
    /// The CRC-32C of the file's bytes as read.
    pub crc32c: u32,
}

impl BaseFile {
    /// Files below this size get a [`BaseFile::hash`]; a delta restore compares
    /// larger ones with the stored chunks instead, so hashing them at backup would
    /// be work nobody reads. Files from this size up read from a data directory
    /// are cut around, so that a later backup can reuse them.
    pub const HASHED_BELOW_BYTES: u64 = 1 << 20;
}

/// A stretch of a stored stream between two cuts: its bytes `[start, end)` are the
/// chunks `[first_chunk, first_chunk + chunks)` of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub first_chunk: u32,
    pub chunks: u32,
}

impl BaseBackupInfo {
    /// Records, for each file that a run holds alone, the run's chunks. `runs` are
    /// in stream order.
    pub fn attach_runs(&mut self, runs: &[Run]) {
        // Where files' bytes start, to tell whether a run holds one file. An empty
        // file's "start" is where the next entry begins, maybe a run's first byte.
        let mut offsets: Vec<u64> = self
            .files
            .iter()
            .filter(|f| f.kind == BaseFileKind::File && f.size > 0)
            .map(|f| f.offset)
            .collect();
        offsets.sort_unstable();
        let run_of = |at: u64| {
            let i = runs.partition_point(|r| r.end <= at);
            runs.get(i).filter(|r| r.start <= at)
        };
        for f in &mut self.files {
            if f.kind != BaseFileKind::File || f.size < BaseFile::HASHED_BELOW_BYTES {
                continue;
            }
            let Some(r) = run_of(f.offset) else { continue };
            let inside =
                offsets.partition_point(|&o| o < r.end) - offsets.partition_point(|&o| o < r.start);
            // The run ends where the file's padding does.
            if inside == 1 && f.offset + f.size.div_ceil(512) * 512 == r.end {
                f.chunks = Some([r.first_chunk, r.chunks]);
            }
        }
    }
}

impl SnapshotManifest {
    /// The first eight hex digits of the id, as listings show it.
    pub fn short_id(&self) -> &str {
        &self.id[..8.min(self.id.len())]
    }

    /// Whether the snapshot is a base backup whose manifest lists its files (every
    /// one pgvault stores now; not those stored before it recorded them).
    pub fn has_file_list(&self) -> bool {
        self.base.as_ref().is_some_and(|b| !b.files.is_empty())
    }

    /// Whether the snapshot is a pg_dump custom-format archive (`<db>.dump`), as
    /// opposed to a base backup or a gzipped SQL dump (`<db>.sql.gz`).
    pub fn is_custom_archive(&self) -> bool {
        self.kind == SnapshotKind::Dump && self.file_name.ends_with(".dump")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, offset: u64) -> BaseFile {
        BaseFile {
            path: path.into(),
            kind: BaseFileKind::File,
            mode: 0o600,
            size,
            mtime: 0,
            offset,
            hash: None,
            link: None,
            chunks: None,
            stamp: None,
        }
    }

    #[test]
    fn a_run_is_attached_to_the_one_file_it_holds() {
        let mib = BaseFile::HASHED_BELOW_BYTES;
        let mut info = BaseBackupInfo {
            timeline: 1,
            start_lsn: Lsn::parse("0/1").unwrap(),
            stop_lsn: Lsn::parse("0/2").unwrap(),
            start_time: None,
            pg_version: "15".into(),
            system_identifier: 1,
            backup_label: String::new(),
            tablespaces: Vec::new(),
            files: vec![
                file("small", 100, 512),
                // Empty: its bytes "start" where the next run does.
                file("empty", 0, 2048),
                file("alone", 2 * mib, 2048 + 512),
                file("shared_a", 2 * mib, 10 * mib),
                file("shared_b", 2 * mib, 12 * mib + 512),
            ],
        };
        let runs = [
            Run {
                start: 0,
                end: 2048,
                first_chunk: 0,
                chunks: 1,
            },
            Run {
                start: 2048,
                end: 2048 + 512 + 2 * mib,
                first_chunk: 1,
                chunks: 9,
            },
            Run {
                start: 10 * mib - 512,
                end: 16 * mib,
                first_chunk: 10,
                chunks: 20,
            },
        ];
        info.attach_runs(&runs);
        let chunks: Vec<Option<[u32; 2]>> = info.files.iter().map(|f| f.chunks).collect();
        assert_eq!(chunks, vec![None, None, Some([1, 9]), None, None]);
    }
}
