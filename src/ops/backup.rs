//! `backup`: one backup point, start to end. Open the repository, take the shared
//! lock, run pg_dump or pg_basebackup (or read standard input) into the write path,
//! commit the snapshot only if the program succeeded, release the lock, record the
//! attempt whatever happened, and compare the size with the previous backup.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::status::{size_change, SizeChange};
use super::RepoAccess;
use crate::error::{ErrorKind, Result};
use crate::pg::basebackup::{
    may_have_tablespaces, pg_basebackup, BaseTarInspector, SpooledBaseBackup,
};
use crate::pg::pgdata::{PgdataBackup, PgdataOptions, PgdataReport, PriorBackup};
use crate::pg::{pg_dump, ConnectOptions, DumpStreamInspector};
use crate::store::lock::{LockGuard, LockKind};
use crate::store::manifest::{SnapshotKind, SnapshotManifest};
use crate::store::records::BackupAttempt;
use crate::store::writer::{PendingSnapshot, Progress, SnapshotMeta, StreamInspector};
use crate::store::Repository;

/// Where the backup's bytes come from.
pub enum BackupSource {
    /// A custom-format dump (or, for a base backup, pg_basebackup's tar stream)
    /// already being written by someone else, e.g. standard input.
    Stream(Box<dyn Read + Send>),
    /// pg_dump -Fc -Z0 (or pg_basebackup -Ft) run by pgvault with these settings.
    Run(ConnectOptions),
    /// A base backup read by pgvault from the data directory of the server it
    /// connects to.
    Pgdata(PgdataOptions),
}

impl std::fmt::Debug for BackupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupSource::Stream(_) => f.write_str("Stream"),
            BackupSource::Run(c) => f.debug_tuple("Run").field(c).finish(),
            BackupSource::Pgdata(o) => f.debug_tuple("Pgdata").field(o).finish(),
        }
    }
}

/// What to back up.
#[derive(Debug)]
pub struct BackupOptions {
    pub kind: SnapshotKind,
    /// The database (a dump), or a label for the cluster (a base backup).
    pub db: String,
    pub source: BackupSource,
    /// The backup point's time, for imported dumps; `None` is now.
    pub time: Option<DateTime<Utc>>,
    /// How long to wait for a prune holding the repository.
    pub lock_wait: Duration,
    /// A size change larger than this ratio (0.5 for 50%) either way is an anomaly.
    pub size_change_threshold: f64,
}

/// What a backup made.
#[derive(Debug)]
pub struct BackupOutcome {
    pub manifest: SnapshotManifest,
    /// The previous backup point of the same database and kind, and how the size
    /// changed since (`None` for the first, or when the listing failed).
    pub previous: Option<(SnapshotManifest, SizeChange)>,
    /// For a base backup read from the data directory: what the readers found.
    pub pgdata: Option<PgdataReport>,
}

/// Takes a backup. The attempt is recorded whatever happens (in the repository, or
/// spooled under the cache directory when the repository cannot be reached); the
/// recording never adds an error of its own.
///
/// Errors: whatever the backup fails with: the repository cannot be opened or
/// locked, pg_dump or pg_basebackup fails (its own message), the stream is not a
/// dump, the backend fails.
pub async fn backup(
    access: &RepoAccess,
    opts: BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<BackupOutcome> {
    let time = Utc::now();
    let started = Instant::now();
    let (db, kind) = (opts.db.clone(), opts.kind);
    let threshold = opts.size_change_threshold;
    let mut opened: Option<Repository> = None;
    let mut report = None;
    let result = take(access, opts, progress, &mut opened, &mut report).await;
    let mut attempt = BackupAttempt {
        time,
        db,
        kind,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
        snapshot_id: None,
        size_bytes: 0,
        bytes_stored_new: 0,
        duration_seconds: started.elapsed().as_secs_f64(),
        hostname: crate::host::hostname(),
    };
    if let Ok(m) = &result {
        attempt.snapshot_id = Some(m.id.clone());
        attempt.size_bytes = m.size_bytes;
        attempt.bytes_stored_new = m.stats.bytes_stored_new;
    }
    super::record_or_spool(access, opened.as_ref(), &attempt).await;
    let manifest = result?;
    let repo = opened.expect("a successful backup opened the repository");
    let previous = previous_change(&repo, &manifest, threshold).await;
    Ok(BackupOutcome {
        manifest,
        previous,
        pgdata: report,
    })
}

/// Opens the repository (handing it to `opened` at once, so the attempt can be
/// recorded there even when the backup fails), then backs up under a shared lock.
async fn take(
    access: &RepoAccess,
    opts: BackupOptions,
    progress: Arc<dyn Progress>,
    opened: &mut Option<Repository>,
    report: &mut Option<PgdataReport>,
) -> Result<SnapshotManifest> {
    let repo = access.open().await?;
    *opened = Some(repo.clone());
    // Held from before the chunk cache is read until after the manifest is written.
    let lock = repo
        .lock(LockKind::Shared, "backup", opts.lock_wait)
        .await?;
    let result = ingest_and_commit(&repo, opts, progress, &lock, report).await;
    lock.release_after(result).await
}

async fn ingest_and_commit(
    repo: &Repository,
    opts: BackupOptions,
    progress: Arc<dyn Progress>,
    lock: &LockGuard,
    report: &mut Option<PgdataReport>,
) -> Result<SnapshotManifest> {
    let meta = SnapshotMeta {
        file_name: match opts.kind {
            SnapshotKind::Dump => format!("{}.dump", opts.db),
            SnapshotKind::Base => "base.tar".to_string(),
        },
        db: opts.db,
        kind: opts.kind,
        time: opts.time,
    };
    let inspector: Box<dyn StreamInspector> = match opts.kind {
        SnapshotKind::Dump => Box::new(DumpStreamInspector::default()),
        SnapshotKind::Base => Box::new(BaseTarInspector::new()),
    };
    let pending = match opts.source {
        BackupSource::Stream(source) => {
            // Up to 32 MiB ahead: the dump inspector re-creates compressed data in
            // bursts of a second or more, while pg_dump and gzip upstream go on.
            let source = crate::pipe::read_ahead(source, 32, 1 << 20);
            ingest_stream(repo, Box::new(source), meta, inspector, progress).await?
        }
        BackupSource::Run(conn)
            if opts.kind == SnapshotKind::Base && may_have_tablespaces(&conn).await? =>
        {
            let (backup, stream) = SpooledBaseBackup::start(&conn)?;
            let ingested = ingest_stream(repo, Box::new(stream), meta, inspector, progress).await;
            settle(ingested, || backup.finish())?.0
        }
        BackupSource::Run(conn) => {
            let (process, stdout) = match opts.kind {
                SnapshotKind::Dump => pg_dump(&meta.db, &conn)?,
                SnapshotKind::Base => pg_basebackup(&conn)?,
            };
            match ingest_stream(repo, Box::new(stdout), meta, inspector, progress).await {
                Ok(p) => {
                    // The program's verdict comes before the commit: a dump that
                    // failed half-way must never become a backup point.
                    process.finish()?;
                    p
                }
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    // A failing program explains itself better than the broken
                    // stream it left.
                    process.finish()?;
                    return Err(e);
                }
                Err(e) => {
                    process.kill();
                    return Err(e);
                }
            }
        }
        BackupSource::Pgdata(mut o) => {
            if !o.read_all {
                o.prior = prior_backup(repo, &o.pgdata).await.map(Arc::new);
            }
            let (backup, stream) = PgdataBackup::start(&o)?;
            let ingested = repo
                .ingest_segments(stream, meta, Some(inspector), progress)
                .await;
            let (mut pending, made) = settle(ingested, || backup.finish())?;
            pending.stamp_base_files(&made.stamps);
            *report = Some(made);
            pending
        }
    };
    lock.ensure_held().await?;
    pending.commit().await
}

/// The latest base backup of the cluster whose data directory is `pgdata` (by its
/// system identifier), as far as a new backup can reuse its files. Read under the
/// backup's lock: no prune can delete its chunks before the new backup commits.
async fn prior_backup(repo: &Repository, pgdata: &std::path::Path) -> Option<PriorBackup> {
    let system = crate::pg::system_identifier_of(pgdata).ok()?;
    let snaps = match repo.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("Cannot read the previous base backup, so every file is read: {e}");
            return None;
        }
    };
    let mut bases: Vec<&SnapshotManifest> = snaps
        .iter()
        .filter(|s| {
            s.base
                .as_ref()
                .is_some_and(|b| b.system_identifier == system)
        })
        .collect();
    bases.sort_by_key(|s| std::cmp::Reverse(s.started));
    // The latest that offers anything: a pg_basebackup one in between offers nothing.
    bases.into_iter().find_map(PriorBackup::of)
}

/// Stores a backup's byte stream: a dump as it comes, a base backup's tar stream cut
/// around its relation files ([`crate::pg::tar_cuts`]), as a `--pgdata` backup's
/// stream is.
///
/// Errors: as [`Repository::ingest`]; `Io` when a base backup's source fails.
async fn ingest_stream(
    repo: &Repository,
    source: Box<dyn std::io::Read + Send>,
    meta: SnapshotMeta,
    inspector: Box<dyn StreamInspector>,
    progress: Arc<dyn Progress>,
) -> Result<PendingSnapshot> {
    if meta.kind == SnapshotKind::Dump {
        return repo.ingest(source, meta, Some(inspector), progress).await;
    }
    let (segments, cutter) = crate::pg::tar_cuts::cut_tar_stream(source);
    let ingested = repo
        .ingest_segments(segments, meta, Some(inspector), progress)
        .await;
    // On success the cutter has sent everything and ended; on a failure it may be
    // waiting on a source that will not end, and its own error, if it has one
    // already, is the better one.
    let finished = ingested.is_ok() || cutter.is_finished();
    settle(ingested, || match finished {
        true => crate::blocking::thread_joined("tar cutter", cutter.join())?,
        false => Ok(()),
    })
    .map(|(p, ())| p)
}

/// The stream maker's verdict with the stored stream's, as for a program: a failed
/// read, pg_backup_stop or pg_basebackup explains a short stream, and must never
/// commit.
fn settle<P, T>(ingested: Result<P>, finish: impl FnOnce() -> Result<T>) -> Result<(P, T)> {
    match ingested {
        Ok(p) => Ok((p, finish()?)),
        Err(e) => Err(match finish() {
            // A maker that only saw the stored side stop has nothing to add.
            Err(m) if e.kind() == ErrorKind::InvalidInput && !m.is_broken_pipe() => m,
            _ => e,
        }),
    }
}

/// The previous backup point of the same db and kind, and how the size changed.
async fn previous_change(
    repo: &Repository,
    m: &SnapshotManifest,
    threshold: f64,
) -> Option<(SnapshotManifest, SizeChange)> {
    let snaps = match repo.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("Cannot compare the backup's size with the previous one: {e}");
            return None;
        }
    };
    let prev = snaps
        .into_iter()
        .filter(|s| s.db == m.db && s.kind == m.kind && s.id != m.id && s.time <= m.time)
        .max_by_key(|s| s.time)?;
    let c = size_change(prev.size_bytes, m.size_bytes, threshold);
    Some((prev, c))
}
