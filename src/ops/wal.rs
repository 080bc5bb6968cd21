//! The WAL commands: `wal-push` (archive_command), `wal-fetch` (restore_command) and
//! `wal list`.

use std::path::Path;
use std::time::Duration;

use super::RepoAccess;
use crate::error::{Error, ErrorKind, Result};
use crate::store::lock::LockKind;
use crate::store::records::WalPushFailure;
use crate::store::wal::{WalCatalog, WalPushOutcome};
use crate::store::Repository;
use crate::wal_name::WalFileKind;

/// Archives the WAL file at `path` under its own file name. Returns only once the
/// file and its manifest are durable. A failure is recorded (in the repository, or
/// spooled here while it cannot be reached), so that `status` and `metrics` show
/// archiving as failing, with the cause.
///
/// Errors: `InvalidInput` for a file that is not a WAL file; `AlreadyExists` for a
/// different file under an archived name; `Locked` when a prune holds the repository
/// past `lock_wait`; I/O and backend errors.
pub async fn push(access: &RepoAccess, path: &Path, lock_wait: Duration) -> Result<WalPushOutcome> {
    let name = wal_file_name(path)?;
    let time = chrono::Utc::now();
    let mut opened = None;
    let result = async {
        let repo = access.open().await?;
        opened = Some(repo.clone());
        push_opened(&repo, path, &name, lock_wait).await
    }
    .await;
    match &result {
        Ok(_) => {
            if let Some(repo) = &opened {
                repo.flush_spool().await;
            }
        }
        Err(e) => {
            let failure = WalPushFailure {
                time,
                name,
                error: e.to_string(),
                hostname: crate::host::hostname(),
            };
            super::record_or_spool(access, opened.as_ref(), &failure).await;
        }
    }
    result
}

async fn push_opened(
    repo: &Repository,
    path: &Path,
    name: &str,
    lock_wait: Duration,
) -> Result<WalPushOutcome> {
    let data = std::fs::read(path).map_err(|e| Error::io_path("read", path, e))?;
    // A prune must not delete a chunk this push found already stored and reused.
    let lock = repo.lock(LockKind::Shared, "wal-push", lock_wait).await?;
    let pushed = match repo.wal_push(name, data).await {
        Ok(p) => lock.ensure_held().await.map(|()| p),
        Err(e) => Err(e),
    };
    lock.release_after(pushed).await
}

/// The archive name of the WAL file at `path`: its file name, checked.
///
/// Errors: `InvalidInput` when the path names no file or not a WAL file.
pub fn wal_file_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidInput(format!("{} names no file", path.display())))?
        .to_string();
    WalFileKind::parse(&name)?;
    Ok(name)
}

/// Fetches WAL file `name` into `dest`, through a temporary name so PostgreSQL never
/// sees a partial file; with `prefetch` > 0 the next segments are fetched into this
/// machine's spool at the same time.
///
/// Errors: `NotFound` when the file is not archived, and only then; anything else
/// means the answer is unknown.
pub async fn fetch(repo: &Repository, name: &str, dest: &Path, prefetch: usize) -> Result<()> {
    let data = if prefetch == 0 {
        repo.wal_fetch(name).await?
    } else {
        repo.wal_fetch_spooled(name, prefetch).await?
    };
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".pgvault-fetch-{}-{name}", std::process::id()));
    std::fs::write(&tmp, &data).map_err(|e| Error::io_path("write", &tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_path("rename into", dest, e)
    })
}

/// A `wal-fetch` error as PostgreSQL must see it: "not archived" stays `NotFound`;
/// a repository that cannot even be opened is no answer about the file, so its
/// `NotFound` becomes `Unavailable` (which must not read as "not archived" and end
/// recovery early).
pub fn open_error_for_fetch(e: Error) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::Unavailable(format!("Cannot open the WAL archive: {e}")),
        _ => e,
    }
}

/// Timelines, segment ranges and gaps of the archive.
///
/// Errors: backend errors.
pub async fn list(repo: &Repository) -> Result<WalCatalog> {
    repo.wal_catalog().await
}
