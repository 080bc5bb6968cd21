//! The local-directory backend: one file per object, written atomically and durably.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Backend, ObjectStat};
use crate::blocking::try_blocking;
use crate::error::{Error, Result};

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: Arc<PathBuf>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalBackend {
    /// A backend rooted at `root`; the directory need not exist yet (`init` creates it).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: Arc::new(root.into()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let root = self.root.clone();
        try_blocking("local storage", move || f(&root)).await
    }
}

/// Writes `data` to a temporary file beside `dest`, fsyncs it, then either renames
/// it over `dest` or hard-links it (which fails if `dest` exists, making the create
/// exclusive), and fsyncs the directory so the new name survives a crash.
fn write_durably(dest: &Path, data: &[u8], exclusive: bool) -> Result<bool> {
    let dir = dest.parent().expect("object keys have a parent directory");
    fs::create_dir_all(dir).map_err(|e| Error::io_path("create directory", dir, e))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object")
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io_path("create", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| Error::io_path("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io_path("fsync", &tmp, e))?;
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
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io_path("fsync directory", dir, e))?;
        Ok(created)
    })();
    // After a rename the temp name is gone already; after a link or a failure it is not.
    let _ = fs::remove_file(&tmp);
    result
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<ObjectStat>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
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
            walk(&entry.path(), &key, out)?;
        } else {
            out.push(ObjectStat {
                key,
                size_bytes: meta.len(),
                modified: meta
                    .modified()
                    .ok()
                    .map(chrono::DateTime::<chrono::Utc>::from),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn prepare_root(&self) -> Result<()> {
        self.blocking(|root| {
            fs::create_dir_all(root).map_err(|e| Error::io_path("create directory", root, e))
        })
        .await
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let dest = self.path(key);
        self.blocking(move |_| write_durably(&dest, &data, false).map(|_| ()))
            .await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let dest = self.path(key);
        self.blocking(move |_| write_durably(&dest, &data, true))
            .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        let key = key.to_string();
        self.blocking(move |root| match fs::read(&path) {
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
        self.blocking(move |_| match fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io_path("stat", &path, e)),
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
        let prefix = prefix.to_string();
        self.blocking(move |root| {
            let mut out = Vec::new();
            walk(&root.join(&dir_part), &dir_part, &mut out)?;
            out.retain(|o| o.key.starts_with(&prefix));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        self.blocking(move |_| match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io_path("delete", &path, e)),
        })
        .await
    }
}
