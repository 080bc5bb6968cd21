//! What happened to the repository over time: every backup attempt (failures too),
//! every restore drill and every check, as small sealed records under `attempts/`,
//! `drills/` and `checks/`; and the latest report of each `wal-receive`.
//!
//! Snapshots say what succeeded; only a record of every attempt makes a success rate
//! true. A record is written after the fact and never changes the outcome it
//! describes: when the repository cannot be written (the outage that made the backup
//! fail, say), the record goes to a local spool in the cache directory, and the next
//! command that reaches the repository uploads it.
//!
//! Records are immutable like every other object: the key holds the time and a random
//! suffix, so concurrent writers never collide. Downloaded records are kept, sealed,
//! in the cache directory, because `status` and `metrics` read all of them every run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::cache::{create_private_dir, record_spool};
use super::layout;
use super::manifest::SnapshotKind;
use super::Repository;
use crate::blocking::joined;
use crate::error::{Error, ErrorKind, Result};

/// The kinds of history record, each under its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A backup attempt: `attempts/`.
    Attempt,
    /// A restore drill: `drills/`.
    Drill,
    /// A repository check: `checks/`.
    Check,
    /// A failed `wal-push`: `wal-failures/`. Successes are the archive itself.
    WalFailure,
}

impl RecordKind {
    /// The key prefix, with its slash.
    pub fn prefix(&self) -> &'static str {
        match self {
            RecordKind::Attempt => layout::ATTEMPTS,
            RecordKind::Drill => layout::DRILLS,
            RecordKind::Check => layout::CHECKS,
            RecordKind::WalFailure => layout::WAL_FAILURES,
        }
    }

    fn from_spool_name(name: &str) -> Option<(RecordKind, &str)> {
        [
            RecordKind::Attempt,
            RecordKind::Drill,
            RecordKind::Check,
            RecordKind::WalFailure,
        ]
        .into_iter()
        .find_map(|k| {
            let p = k.prefix().trim_end_matches('/');
            name.strip_prefix(p)?
                .strip_prefix("--")
                .and_then(|rest| rest.strip_suffix(".json"))
                .map(|rest| (k, rest))
        })
    }
}

/// A type stored as a history record.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    /// Where records of this type live.
    const KIND: RecordKind;
    /// When it happened (the record key starts with this time).
    fn time(&self) -> chrono::DateTime<chrono::Utc>;
}

/// One backup attempt, successful or not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupAttempt {
    /// When the attempt started.
    pub time: chrono::DateTime<chrono::Utc>,
    pub db: String,
    pub kind: SnapshotKind,
    pub ok: bool,
    /// Why it failed; `None` on success.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// The backup's logical size (the dump or tar stream); 0 on failure.
    #[serde(default)]
    pub size_bytes: u64,
    /// Bytes of chunk objects this backup added.
    #[serde(default)]
    pub bytes_stored_new: u64,
    pub duration_seconds: f64,
    pub hostname: String,
}

impl Record for BackupAttempt {
    const KIND: RecordKind = RecordKind::Attempt;
    fn time(&self) -> chrono::DateTime<chrono::Utc> {
        self.time
    }
}

/// One table's row count after a drill's restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableRows {
    /// `schema.table` (or `db:schema.table` for a PITR drill over several databases).
    pub table: String,
    pub rows: i64,
}

/// One assertion of a drill and how it came out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionResult {
    pub sql: String,
    pub ok: bool,
    /// What the statement returned, or its error.
    pub outcome: String,
}

/// One restore drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    /// When the drill started.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The database restored (`--db`), or the base backup's label for a PITR drill.
    pub db: String,
    /// `dump` for a logical drill, `base` for a PITR drill.
    pub kind: SnapshotKind,
    pub snapshot_id: String,
    /// For PITR drills: the recovery target as given.
    #[serde(default)]
    pub target: Option<String>,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The whole drill, checks and cleanup included.
    pub duration_seconds: f64,
    /// Measured RTO: from the start until the restored database was usable.
    #[serde(default)]
    pub restore_seconds: Option<f64>,
    #[serde(default)]
    pub tables: Vec<TableRows>,
    #[serde(default)]
    pub assertions: Vec<AssertionResult>,
    pub hostname: String,
}

impl Record for DrillRecord {
    const KIND: RecordKind = RecordKind::Drill;
    fn time(&self) -> chrono::DateTime<chrono::Utc> {
        self.time
    }
}

/// One `pgvault check` run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckRecord {
    pub time: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
    /// `structure`, `read-data` or `read-data-subset <spec>`.
    pub mode: String,
    pub problems: usize,
    pub chunks_read: u64,
    pub duration_seconds: f64,
    pub hostname: String,
}

/// One `wal-push` that failed: PostgreSQL retries it, and until a retry succeeds the
/// archive falls behind, which `status` and `metrics` must tell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WalPushFailure {
    pub time: chrono::DateTime<chrono::Utc>,
    /// The WAL file's name.
    pub name: String,
    pub error: String,
    pub hostname: String,
}

impl Record for WalPushFailure {
    const KIND: RecordKind = RecordKind::WalFailure;
    fn time(&self) -> chrono::DateTime<chrono::Utc> {
        self.time
    }
}

impl Record for CheckRecord {
    const KIND: RecordKind = RecordKind::Check;
    fn time(&self) -> chrono::DateTime<chrono::Utc> {
        self.time
    }
}

/// The sortable UTC time in a record key.
const STAMP_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// The time a record key's stamp names, if it is one.
fn parse_stamp(stamp: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(stamp, STAMP_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// A record key: prefix, sortable UTC time, and a random suffix against collisions.
fn record_key(kind: RecordKind, time: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}{}-{}",
        kind.prefix(),
        time.format(STAMP_FORMAT),
        hex::encode(crate::crypto::random_bytes::<6>())
    )
}

/// Keeps a record under cache directory `cache_root` until the repository at
/// `location` can take it.
///
/// Errors: `Io` when the spool directory cannot be written.
pub fn spool<R: Record>(cache_root: &Path, location: &str, record: &R) -> Result<PathBuf> {
    let dir = record_spool(cache_root, location);
    create_private_dir(&dir)?;
    let key = record_key(R::KIND, record.time());
    let name = format!("{}.json", key.replacen('/', "--", 1));
    let path = dir.join(name);
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(record).expect("records serialise");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .map_err(|e| Error::io_path("write", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io_path("rename into", &path, e))?;
    Ok(path)
}

/// Where a record's sealed copy is cached: named by a hash of its key, because a key
/// comes from the bucket's listing and must never decide a local path.
fn cache_path(repo: &Repository, key: &str) -> PathBuf {
    repo.cache()
        .records_dir()
        .join(blake3::hash(key.as_bytes()).to_hex().as_str())
}

/// Whether `key` has the form [`record_key`] gives keys of `kind`; anything else in
/// a record prefix was not written by pgvault and is not read.
fn is_record_key(kind: RecordKind, key: &str) -> bool {
    let Some(rest) = key.strip_prefix(kind.prefix()) else {
        return false;
    };
    let Some((stamp, tag)) = rest.rsplit_once('-') else {
        return false;
    };
    tag.len() == 12 && tag.bytes().all(|b| b.is_ascii_hexdigit()) && parse_stamp(stamp).is_some()
}

impl Repository {
    /// Stores a history record, sealed like a manifest. Returns its key.
    ///
    /// Errors: backend errors (the caller may [`spool`] the record instead).
    pub async fn write_record<R: Record>(&self, record: &R) -> Result<String> {
        let json = serde_json::to_vec(record).expect("records serialise");
        self.write_record_json(R::KIND, record.time(), &json).await
    }

    async fn write_record_json(
        &self,
        kind: RecordKind,
        time: chrono::DateTime<chrono::Utc>,
        json: &[u8],
    ) -> Result<String> {
        let key = record_key(kind, time);
        let sealed = self.seal_json(&key, json);
        if !self.backend().put_if_absent(&key, sealed).await? {
            return Err(Error::AlreadyExists {
                what: format!("Record {key}"),
                location: self.location(),
            });
        }
        Ok(key)
    }

    /// Stores a record, or spools it locally when the repository cannot take it.
    /// Never fails the operation it describes: problems are logged.
    pub async fn record_or_spool<R: Record>(&self, record: &R) {
        if let Err(e) = self.write_record(record).await {
            match spool(self.cache().root(), &self.location(), record) {
                // Nothing is lost, and the failure that stopped the store is the
                // command's own error: one line for the user, not two.
                Ok(p) => tracing::info!(
                    "Cannot store the record in {} ({e}): kept it in {} for the next command",
                    self.location(),
                    p.display()
                ),
                Err(e2) => tracing::warn!(
                    "Cannot store the record in {} ({e}) nor spool it ({e2}): it is lost",
                    self.location()
                ),
            }
        }
    }

    /// Uploads up to `limit` records spooled while the repository could not be
    /// written. Returns how many were uploaded; the others stay for a later try.
    ///
    /// Errors: none that stop the caller: an unreadable spool is logged and skipped.
    pub async fn flush_spool(&self, limit: usize) -> usize {
        let dir = record_spool(self.cache().root(), &self.location());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut uploaded = 0;
        for entry in entries.flatten() {
            if uploaded >= limit {
                break;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((kind, stamp)) = RecordKind::from_spool_name(&name) else {
                continue;
            };
            let path = entry.path();
            let Ok(json) = std::fs::read(&path) else {
                continue;
            };
            let time = parse_stamp(stamp.rsplit_once('-').map_or(stamp, |(t, _)| t))
                .unwrap_or_else(chrono::Utc::now);
            match self.write_record_json(kind, time, &json).await {
                Ok(key) => {
                    tracing::info!("Uploaded spooled record {} as {key}", path.display());
                    let _ = std::fs::remove_file(&path);
                    uploaded += 1;
                }
                Err(e) => {
                    tracing::info!("Spooled record {} stays: {e}", path.display());
                    break;
                }
            }
        }
        uploaded
    }

    /// Every record of one type, oldest first. Records that fail authentication are
    /// skipped with a warning: history must not stop `status` from answering.
    ///
    /// Errors: backend errors while listing or reading.
    pub async fn records<R: Record + Send + 'static>(&self) -> Result<Vec<R>> {
        let mut listed = self.backend().list(R::KIND.prefix()).await?;
        listed.retain(|obj| {
            let ours = is_record_key(R::KIND, &obj.key)
                && obj.size_bytes <= super::layout::SMALL_OBJECT_MAX_BYTES;
            if !ours {
                tracing::warn!(
                    "Skipping {} in {}: not a record key, or too large for one",
                    obj.key.escape_debug(),
                    self.location()
                );
            }
            ours
        });
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        let mut tasks = JoinSet::new();
        let mut out: Vec<(String, R)> = Vec::with_capacity(listed.len());
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        for obj in listed {
            let repo = self.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                let _permit = slots.acquire_owned().await.expect("never closed");
                let r = repo.read_record::<R>(&obj.key).await;
                (obj.key, r)
            });
        }
        while let Some(res) = tasks.join_next().await {
            let (key, r) = joined("record read", res)?;
            match r {
                Ok(Some(rec)) => out.push((key, rec)),
                Ok(None) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt) => {
                    tracing::warn!("Skipping record {key}: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time().cmp(&b.1.time()).then_with(|| a.0.cmp(&b.0)));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    async fn read_record<R: Record>(&self, key: &str) -> Result<Option<R>> {
        let cached = cache_path(self, key);
        let json = match std::fs::read(&cached)
            .ok()
            .and_then(|sealed| super::format::decode_manifest(self.key(), key, &sealed).ok())
        {
            Some(json) => json,
            None => {
                let sealed = match self.backend().get(key).await {
                    Ok(b) => b,
                    // Removed between listing and reading.
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                // Only what authenticates is kept.
                let json = super::format::decode_manifest(self.key(), key, &sealed)?;
                cache_sealed(&cached, &sealed);
                json
            }
        };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("Record {key} does not parse: {e}")))
    }
}

/// Keeps a sealed record in the cache; a cache that cannot be written is no error.
fn cache_sealed(path: &Path, sealed: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if create_private_dir(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        hex::encode(crate::crypto::random_bytes::<4>())
    ));
    if std::fs::write(&tmp, sealed).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_names_round_trip() {
        let key = record_key(RecordKind::Attempt, chrono::Utc::now());
        let name = format!("{}.json", key.replacen('/', "--", 1));
        let (kind, stamp) = RecordKind::from_spool_name(&name).unwrap();
        assert_eq!(kind, RecordKind::Attempt);
        assert_eq!(format!("attempts/{stamp}"), key);
    }
}

/// What a running `wal-receive` last reported about its replication slot. One
/// object per host and slot, replaced at each report (history would be thousands of
/// objects a day, and only the latest matters), so that `status` shows how much WAL
/// the slot makes the server keep, and when a receiver stopped reporting: then its
/// slot holds WAL on the server until the disk is full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiverReport {
    pub time: chrono::DateTime<chrono::Utc>,
    pub slot: String,
    pub hostname: String,
    /// The server's WAL position (on a standby, what it received).
    pub server_lsn: Option<String>,
    pub slot_restart_lsn: Option<String>,
    /// WAL the slot makes the server keep: from its restart LSN to the server's.
    pub slot_retained_bytes: Option<u64>,
    pub slot_active: Option<bool>,
    /// Why the slot could not be read, when it could not.
    pub error: Option<String>,
}

impl Repository {
    /// Stores `report` in place of the previous one of its host and slot.
    ///
    /// Errors: backend errors.
    pub async fn put_receiver_report(&self, report: &ReceiverReport) -> Result<()> {
        let id = self
            .key()
            .chunk_id(format!("{}\0{}", report.hostname, report.slot).as_bytes())
            .to_hex();
        let key = format!("{}{}", layout::RECEIVERS, &id[..16]);
        let json = serde_json::to_vec(report).expect("reports serialise");
        self.backend().put(&key, self.seal_json(&key, &json)).await
    }

    /// The latest report of every `wal-receive`, oldest first. Reports that fail
    /// authentication are skipped with a warning.
    ///
    /// Errors: backend errors.
    pub async fn receiver_reports(&self) -> Result<Vec<ReceiverReport>> {
        let mut out = Vec::new();
        for obj in self.backend().list(layout::RECEIVERS).await? {
            if obj.size_bytes > layout::SMALL_OBJECT_MAX_BYTES {
                tracing::warn!(
                    "Skipping {}: too large for a report",
                    obj.key.escape_debug()
                );
                continue;
            }
            let parsed = match self.get_json(&obj.key).await {
                Ok(json) => serde_json::from_slice::<ReceiverReport>(&json)
                    .map_err(|e| Error::Corrupt(format!("Report {} does not parse: {e}", obj.key))),
                // Replaced or removed since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => Err(e),
            };
            match parsed {
                Ok(r) => out.push(r),
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::warn!("Skipping {}: {e}", obj.key.escape_debug())
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|r| r.time);
        Ok(out)
    }
}
