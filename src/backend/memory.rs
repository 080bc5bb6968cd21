//! An in-memory object store: the backend for fast tests of everything above the
//! backend (writer, reader, prune, index logic) without a disk, a server or FUSE. It
//! passes the same conformance suite as the real stores.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Backend, ObjectStat};
use crate::error::{Error, Result};

/// Objects in a map; clones share it, so a test can hold one clone and hand another
/// to a repository.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    objects: Arc<Mutex<BTreeMap<String, Stored>>>,
    /// How many times each key was read, for tests of how often a reader fetches.
    reads: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Overwrite on a conditional create, as some S3 look-alikes do.
    ignores_conditional_writes: bool,
    name: Arc<str>,
}

#[derive(Debug, Clone)]
struct Stored {
    data: Vec<u8>,
    modified: chrono::DateTime<chrono::Utc>,
}

impl MemoryBackend {
    /// An empty store called `name` in messages (`memory://<name>`).
    pub fn new(name: &str) -> Self {
        MemoryBackend {
            objects: Arc::default(),
            reads: Arc::default(),
            ignores_conditional_writes: false,
            name: name.into(),
        }
    }

    /// An empty store that ignores `If-None-Match`: every conditional create
    /// overwrites and reports success, as some S3 look-alikes do.
    pub fn ignoring_conditional_writes(name: &str) -> Self {
        MemoryBackend {
            ignores_conditional_writes: true,
            ..Self::new(name)
        }
    }

    /// How many times each key was read since the last call, which starts the count
    /// again.
    pub fn take_reads(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.reads.lock().expect("memory store lock"))
    }

    /// Replaces an object's bytes behind the repository's back, as a damaged or
    /// hostile store would.
    ///
    /// Errors: `NotFound` when there is no such object.
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let mut objects = self.objects.lock().expect("memory store lock");
        let stored = objects.get_mut(key).ok_or_else(|| self.missing(key))?;
        f(&mut stored.data);
        Ok(())
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects
            .lock()
            .expect("memory store lock")
            .keys()
            .cloned()
            .collect()
    }

    fn missing(&self, key: &str) -> Error {
        Error::NotFound {
            what: format!("Object {key}"),
            location: self.location(),
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn location(&self) -> String {
        format!("memory://{}", self.name)
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.objects.lock().expect("memory store lock").insert(
            key.to_string(),
            Stored {
                data,
                modified: chrono::Utc::now(),
            },
        );
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let mut objects = self.objects.lock().expect("memory store lock");
        if objects.contains_key(key) && !self.ignores_conditional_writes {
            return Ok(false);
        }
        objects.insert(
            key.to_string(),
            Stored {
                data,
                modified: chrono::Utc::now(),
            },
        );
        Ok(true)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        *self
            .reads
            .lock()
            .expect("memory store lock")
            .entry(key.to_string())
            .or_default() += 1;
        self.objects
            .lock()
            .expect("memory store lock")
            .get(key)
            .map(|s| s.data.clone())
            .ok_or_else(|| self.missing(key))
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self
            .objects
            .lock()
            .expect("memory store lock")
            .contains_key(key))
    }

    async fn list_stat(&self, prefix: &str) -> Result<Vec<ObjectStat>> {
        Ok(self
            .objects
            .lock()
            .expect("memory store lock")
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| ObjectStat {
                key: k.clone(),
                size_bytes: s.data.len() as u64,
                modified: Some(s.modified),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.objects.lock().expect("memory store lock").remove(key);
        Ok(())
    }
}
