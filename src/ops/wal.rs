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

/// How many spooled records one successful `wal-push` uploads.
pub(crate) const SPOOL_UPLOADS_PER_PUSH: usize = 8;

/// Archives the WAL file at `path` under its own file name, for database system
/// `system` (see [`push_opened`]). Returns only once the file and its manifest are
/// durable. A failure is recorded (in the repository, or
/// spooled here while it cannot be reached), so that `status` and `metrics` show
/// archiving as failing, with the cause.
///
/// Errors: `InvalidInput` for a file that is not a WAL file; `AlreadyExists` for a
/// different file under an archived name; `Locked` when a prune holds the repository
/// past `lock_wait`; I/O and backend errors.
pub async fn push(
    access: &RepoAccess,
    path: &Path,
    system: Option<u64>,
    lock_wait: Duration,
) -> Result<WalPushOutcome> {
    let name = wal_file_name(path)?;
    let time = chrono::Utc::now();
    let mut opened = None;
    let result = async {
        let repo = access.open().await?;
        opened = Some(repo.clone());
        push_opened(&repo, path, &name, system, lock_wait).await
    }
    .await;
    match &result {
        Ok(_) => {
            if let Some(repo) = &opened {
                // A few per segment: after a long outage the backlog must not hold
                // up archive_command, and the next pushes carry on.
                repo.flush_spool(SPOOL_UPLOADS_PER_PUSH).await;
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

/// Archives the WAL file at `path` as `name`. A segment belongs to the database
/// system its first page names; a `.history` or `.backup` file to `system`, or
/// when that is not given, to the cluster whose `pg_wal` holds it.
///
/// Errors: as [`push`], without the recording.
pub(crate) async fn push_opened(
    repo: &Repository,
    path: &Path,
    name: &str,
    system: Option<u64>,
    lock_wait: Duration,
) -> Result<WalPushOutcome> {
    let data = std::fs::read(path).map_err(|e| Error::io_path("read", path, e))?;
    let system = system.or_else(|| crate::pg::system_identifier_beside_wal(path));
    push_bytes(repo, name, data, system, lock_wait).await
}

/// Archives `data` as WAL file `name`, under a shared lock.
///
/// Errors: as [`push`], without the recording.
pub(crate) async fn push_bytes(
    repo: &Repository,
    name: &str,
    data: Vec<u8>,
    system: Option<u64>,
    lock_wait: Duration,
) -> Result<WalPushOutcome> {
    // A prune must not delete a chunk this push found already stored and reused.
    let lock = repo.lock(LockKind::Shared, "wal-push", lock_wait).await?;
    let pushed = match repo.wal_push(name, data, system).await {
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

/// Fetches WAL file `name` of database system `system` into `dest`, through a
/// temporary name so PostgreSQL never sees a partial file; with `prefetch` > 0 the
/// next segments are fetched into this machine's spool at the same time. Without
/// `system`, the cluster is the one whose `pg_wal` `dest` is in (restore_command's
/// `%p`), else the only one that archived the name.
///
/// Errors: `NotFound` when the file is not archived, and only then; `InvalidInput`
/// when the system is not given and several archived the name; anything else means
/// the answer is unknown.
pub async fn fetch(
    repo: &Repository,
    system: Option<u64>,
    name: &str,
    dest: &Path,
    prefetch: usize,
) -> Result<()> {
    let system = system.or_else(|| crate::pg::system_identifier_beside_wal(dest));
    let data = if prefetch == 0 {
        repo.wal_fetch_for_recovery(system, name).await?
    } else {
        repo.wal_fetch_spooled(system, name, prefetch).await?
    };
    hand_over(name, &data, dest)
}

/// Writes a fetched WAL file to `dest` through a temporary name beside it, so that
/// PostgreSQL never sees a partial file.
pub(crate) fn hand_over(name: &str, data: &[u8], dest: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".pgvault-fetch-{}-{name}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io_path("write", &tmp, e));
    }
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_path("rename into", dest, e)
    })
}

/// Fetches WAL file `name` from a pgvault mount at `mount` into `dest`: a
/// restore_command that needs neither the passphrase nor the repository, only read
/// access to the mount (`mount --uid postgres`). The file is read from the
/// directory of database system `system` (or of the cluster whose `pg_wal` `dest`
/// is in), else from `wal/` itself, which shows the names only one system archived.
///
/// A plain `cp` from the mount cannot serve: it exits 1 both when the file is not
/// archived and when the mount is dead or the store did not answer, and PostgreSQL
/// takes 1 for the end of the archive and promotes. Here "not archived" is said only
/// when a live pgvault mount (whose `wal/` looks the file up by its manifest) finds no
/// such file to open; a file that opens but cannot be read to its end, a mount that
/// gives no answer within `deadline`, and anything else is "could not find out".
///
/// Errors: `NotFound` when the live mount says the file is not archived;
/// `Unavailable` when `mount` is no pgvault mount (not mounted, another file system),
/// is dead or hung, or the read fails; `InvalidInput` for a name that is not a WAL
/// file name; `Corrupt` when the file read does not have the form of its name.
pub fn fetch_from_mount(
    mount: &Path,
    system: Option<u64>,
    name: &str,
    dest: &Path,
    deadline: Duration,
) -> Result<()> {
    WalFileKind::parse(name)?;
    let system = system.or_else(|| crate::pg::system_identifier_beside_wal(dest));
    let (tx, rx) = std::sync::mpsc::channel();
    let (mount_owned, name_owned) = (mount.to_path_buf(), name.to_string());
    // A FUSE daemon that is stopped leaves every call into its mount waiting; the
    // waiting thread is left behind (the process exits soon after) so that recovery
    // gets an answer.
    std::thread::Builder::new()
        .name("wal-fetch-mount".into())
        .spawn(move || {
            let _ = tx.send(read_from_mount(&mount_owned, system, &name_owned));
        })
        .map_err(|e| Error::Unavailable(format!("Cannot start a thread to read the mount: {e}")))?;
    let data = match rx.recv_timeout(deadline) {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "Cannot tell whether WAL file {name} is archived: the mount on {} gave no answer within {}",
                mount.display(),
                crate::time::format_duration(deadline)
            )))
        }
    };
    hand_over(name, &data, dest)
}

fn read_from_mount(mount: &Path, system: Option<u64>, name: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let shown = mount.display();
    let cannot_tell = |why: String| {
        Error::Unavailable(format!(
            "Cannot tell whether WAL file {name} is archived: {why}"
        ))
    };
    let abs = mount
        .canonicalize()
        .map_err(|e| cannot_tell(format!("{shown}: {e}")))?;
    match crate::host::mounted_at(&abs) {
        // The subtype shows only when the kernel or fusermount passes it on; the
        // source, "pgvault:<repository>", always does.
        Some((fstype, source))
            if fstype == "fuse.pgvault"
                || (fstype.starts_with("fuse") && source.starts_with("pgvault:")) => {}
        Some((fstype, source)) => {
            return Err(cannot_tell(format!(
                "{shown} holds {source} ({fstype}), not a pgvault mount"
            )))
        }
        None => return Err(cannot_tell(format!("nothing is mounted on {shown}"))),
    }
    let dir = match system {
        Some(s) => abs.join("wal").join(s.to_string()),
        None => abs.join("wal"),
    };
    let path = dir.join(name);
    let dead = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: format!("WAL file {name}"),
                location: format!("the pgvault mount on {shown}"),
            })
        }
        Err(e) if dead(&e) => {
            return Err(cannot_tell(format!(
                "the pgvault mount on {shown} is dead (its process is gone)"
            )))
        }
        Err(e) => return Err(cannot_tell(format!("opening {}: {e}", path.display()))),
    };
    // Once open, the file is archived: every failure to read it, "no such file"
    // included, is damage or an outage, never the end of the archive.
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| cannot_tell(format!("reading {}: {e}", path.display())))?;
    Ok(data)
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

/// Timelines, segment ranges and gaps of the archive, by database system (`None`:
/// files whose system is not known, when several systems are known).
///
/// Errors: backend errors.
pub async fn list(
    repo: &Repository,
) -> Result<std::collections::BTreeMap<Option<u64>, WalCatalog>> {
    repo.wal_catalogs().await
}
