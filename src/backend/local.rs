//! The local-directory backend: one file per object, written atomically and durably,
//! readable by its owner only (files 0600, directories 0700): key files and WAL are in
//! there.
//!
//! The directory may be on NFS or a FUSE file system that stops answering. A blocked
//! system call cannot be cancelled, so each step runs on its own blocking thread
//! under a deadline ([`super::deadline`]): at the deadline the call fails with a
//! clear line and the thread is left to finish whenever the kernel lets it. At most
//! [`STUCK_THREADS_MAX`] steps run at once, so a hung mount cannot take every thread
//! of the blocking pool.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::deadline::{Breaker, IoTimeouts};
use super::{Backend, ObjectStat};
use crate::blocking::joined;
use crate::error::{Error, Result};

/// Steps that may be running (or stuck) at once.
const STUCK_THREADS_MAX: usize = 32;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: Arc<PathBuf>,
    timeouts: IoTimeouts,
    slots: Arc<Semaphore>,
    breaker: Breaker,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalBackend {
    /// A backend rooted at `root`, with the default deadlines; the directory need not
    /// exist yet (`init` creates it).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_timeouts(root, IoTimeouts::default())
    }

    /// A backend rooted at `root` whose steps end at `timeouts.local_step()`.
    pub fn with_timeouts(root: impl Into<PathBuf>, timeouts: IoTimeouts) -> Self {
        LocalBackend {
            root: Arc::new(root.into()),
            timeouts,
            slots: Arc::new(Semaphore::new(STUCK_THREADS_MAX)),
            breaker: Breaker::new(timeouts.down_for()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Runs one step on a blocking thread under the step deadline.
    ///
    /// Errors: `f`'s own; `Unavailable` naming the step when the file system did not
    /// answer in time (or did not, a moment ago).
    async fn blocking<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.breaker
            .check(&format!("to {what} in {}", self.root.display()))?;
        let deadline = tokio::time::Instant::now() + self.timeouts.local_step();
        let hung = || {
            let e = Error::Unavailable(format!(
                "Local repository {} did not answer within {:?} to {what}: is it on a hung NFS or FUSE mount? (--io-timeout {:?})",
                self.root.display(),
                self.timeouts.local_step(),
                self.timeouts.first_byte()
            ));
            self.breaker.trip(&e.to_string());
            e
        };
        let permit =
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(hung()),
            };
        let root = self.root.clone();
        // The slot is given back only when the system call returns.
        let task = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            f(&root)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(r) => {
                let r = joined("local storage", r)?;
                self.breaker.close();
                r
            }
            Err(_) => Err(hung()),
        }
    }
}

impl LocalBackend {
    /// Whether the root directory exists, asked under the step deadline (the
    /// directory may be on a hung mount).
    ///
    /// Errors: `Unavailable` when the file system does not answer in time.
    pub async fn root_exists(&self) -> Result<bool> {
        self.blocking(
            "look for the repository directory",
            |root| Ok(root.is_dir()),
        )
        .await
    }
}

/// Creates `dir` and its missing parents, fsyncing each new directory's parent, so
/// that the new names survive a crash on any file system (an acknowledged wal-push
/// must not vanish with the directory it was put in).
fn create_dir_durably(dir: &Path) -> Result<()> {
    create_dir_owned(dir, None)
}

/// The owner new objects get: root writing into a repository that belongs to
/// another user (a drill or a cron job run as root on the postgres user's repository)
/// hands what it creates to that user, or the owner could no longer read the private
/// (0600/0700) objects of its own repository.
fn adopted_owner(root: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let m = fs::metadata(root).ok()?;
    (m.uid() != 0).then_some((m.uid(), m.gid()))
}

/// Root writing for another user must not follow a link that user planted inside
/// the repository (`locks` -> `/etc/...`): it would create files there and hand them
/// to that user. The repository directory itself may be a link; what is below it,
/// when root adopts its owner, may not.
fn refuse_links_when_adopting(root: &Path, dest: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let Some((uid, _)) = owner else {
        return Ok(());
    };
    let Ok(below) = dest.strip_prefix(root) else {
        return Ok(());
    };
    let mut cur = root.to_path_buf();
    for part in below.components() {
        cur.push(part);
        if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::InvalidInput(format!(
                "Refusing to write through {} as root for the repository's owner (uid {uid}): it is a symbolic link",
                cur.display()
            )));
        }
    }
    Ok(())
}

fn give_to(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| Error::io_path("chown", path, e)),
        None => Ok(()),
    }
}

/// [`create_dir_durably`], each new directory given to `owner`.
fn create_dir_owned(dir: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur);
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => give_to(d, owner)?,
            // Another writer made it meanwhile; its parent is fsynced below all the same.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io_path("create directory", d, e)),
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io_path("fsync directory", dir, e))
}

/// Writes `data` to a temporary file beside `dest`, fsyncs it, then either renames
/// it over `dest` or hard-links it (which fails if `dest` exists, making the create
/// exclusive), and fsyncs the directory so the new name survives a crash.
fn write_durably(
    dest: &Path,
    data: &[u8],
    exclusive: bool,
    owner: Option<(u32, u32)>,
) -> Result<bool> {
    let dir = dest.parent().expect("object keys have a parent directory");
    create_dir_owned(dir, owner)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object")
    ));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io_path("create", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| Error::io_path("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io_path("fsync", &tmp, e))?;
        give_to(&tmp, owner)?;
        let created = if exclusive {
            match fs::hard_link(&tmp, dest) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(Error::io_path("create", dest, e)),
            }
        } else {
            fs::rename(&tmp, dest).map_err(|e| Error::io_path("rename into", dest, e))?;
            true
        };
        fsync_dir(dir)?;
        Ok(created)
    })();
    // After a rename the temp name is gone already; after a link or a failure it is not.
    let _ = fs::remove_file(&tmp);
    result
}

/// One directory's files (as objects) and subdirectories (as key prefixes).
fn read_one_dir(dir: &Path, rel: &str) -> Result<(Vec<ObjectStat>, Vec<String>)> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((files, subdirs)),
        Err(e) => return Err(Error::io_path("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_path("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(".tmp-") {
            continue;
        }
        let key = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Deleted (by forget or prune) between reading the directory and now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_path("stat", &entry.path(), e)),
        };
        if meta.is_dir() {
            subdirs.push(key);
        } else {
            files.push(ObjectStat {
                key,
                size_bytes: meta.len(),
                modified: meta
                    .modified()
                    .ok()
                    .map(chrono::DateTime::<chrono::Utc>::from),
            });
        }
    }
    Ok((files, subdirs))
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn prepare_root(&self) -> Result<()> {
        self.blocking("create the repository directory", create_dir_durably)
            .await
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let dest = self.path(key);
        self.blocking(&format!("write {key}"), move |root| {
            let owner = adopted_owner(root);
            refuse_links_when_adopting(root, &dest, owner)?;
            write_durably(&dest, &data, false, owner).map(|_| ())
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let dest = self.path(key);
        self.blocking(&format!("create {key}"), move |root| {
            let owner = adopted_owner(root);
            refuse_links_when_adopting(root, &dest, owner)?;
            write_durably(&dest, &data, true, owner)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        let key = key.to_string();
        self.blocking(&format!("read {key}"), move |root| match fs::read(&path) {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
                what: format!("Object {key}"),
                location: root.display().to_string(),
            }),
            Err(e) => Err(Error::io_path("read", &path, e)),
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        self.blocking(&format!("check {key}"), move |_| {
            match fs::metadata(&path) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io_path("stat", &path, e)),
            }
        })
        .await
    }

    async fn list_stat(&self, prefix: &str) -> Result<Vec<ObjectStat>> {
        // Keys are directory paths, so walk the deepest directory the prefix names
        // and filter the rest by string prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        }
        .to_string();
        // One step per directory, each under its own deadline: listing a million
        // chunks on NFS may take minutes, and a hung mount stops at its first step.
        let mut out = Vec::new();
        let mut todo = vec![dir_part];
        while let Some(rel) = todo.pop() {
            let r = rel.clone();
            let (files, subdirs) = self
                .blocking(&format!("list {rel}/"), move |root| {
                    read_one_dir(&root.join(&r), &r)
                })
                .await?;
            out.extend(files.into_iter().filter(|o| o.key.starts_with(prefix)));
            todo.extend(subdirs);
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        self.blocking(&format!("delete {key}"), move |_| {
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io_path("delete", &path, e)),
            }
        })
        .await
    }
}
