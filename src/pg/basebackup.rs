//! Physical base backups: running `pg_basebackup` as one tar stream, and reading
//! what PITR needs (timeline, start and stop LSN, version, system id) and where
//! each file lies (for parallel and delta restores, and the mount's tree) from the
//! stream as it goes by.

use std::io::Read;
use std::process::ChildStdout;
use std::thread::JoinHandle;

use super::{ConnectOptions, PgProcess};
use crate::error::{Error, Result};
use crate::pipe::{pipe, PipeReader, PipeWriter};
use crate::store::manifest::{BaseBackupInfo, BaseFile, BaseFileKind, Tablespace};
use crate::store::writer::{Inspected, StreamInspector};
use crate::wal_name::Lsn;

/// Starts `pg_basebackup` writing one tar stream to stdout. WAL is not included
/// (`-X none`): it comes from the archive that `wal-push` fills, which PITR needs
/// anyway, and pg_basebackup waits until the backup's last segment is archived.
///
/// Errors: `External` when pg_basebackup cannot be started.
pub fn pg_basebackup(conn: &ConnectOptions) -> Result<(PgProcess, ChildStdout)> {
    let mut args = vec![
        "--pgdata=-".to_string(),
        "--format=tar".into(),
        "--wal-method=none".into(),
        "--checkpoint=fast".into(),
        "--label=pgvault".into(),
    ];
    // A connection string (host, port, sslmode, password...) is how the DBA said
    // where the server is; pg_basebackup takes it as --dbname and ignores its dbname.
    if let Some(c) = &conn.conninfo {
        args.push(format!("--dbname={c}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PgProcess::start("pg_basebackup", &args, conn, "pg_basebackup".to_string())
}

/// The files of a base backup that say what it is, and where every file lies.
#[derive(Debug, Default)]
struct Found {
    backup_label: Option<String>,
    backup_manifest: Option<Vec<u8>>,
    tablespace_map: Option<String>,
    pg_version: Option<String>,
    system_identifier: Option<u64>,
    files: Vec<BaseFile>,
}

/// Reads a pg_basebackup tar stream as it is stored and extracts [`BaseBackupInfo`].
pub struct BaseTarInspector {
    tx: Option<PipeWriter>,
    worker: Option<JoinHandle<std::result::Result<Found, String>>>,
}

/// A backup manifest larger than this is not kept for inspection (it grows with the
/// number of files; a million files make about 200 MB).
const MAX_MANIFEST_BYTES: u64 = 512 << 20;

/// Of the small files that say what the backup is, how much is kept.
const MAX_LABEL_BYTES: usize = 1 << 20;

fn scan(reader: &mut PipeReader) -> std::result::Result<Found, String> {
    let mut found = Found::default();
    let mut archive = tar::Archive::new(&mut *reader);
    let entries = archive.entries().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => BaseFileKind::Dir,
            tar::EntryType::Symlink => BaseFileKind::Symlink,
            tar::EntryType::Regular | tar::EntryType::Continuous => BaseFileKind::File,
            // Hard links, devices: pg_basebackup writes none.
            _ => continue,
        };
        let mut file = BaseFile {
            path: path.clone(),
            kind,
            mode: header.mode().unwrap_or(0o600),
            size: entry.size(),
            mtime: header.mtime().unwrap_or(0),
            offset: entry.raw_file_position(),
            hash: None,
            link: None,
        };
        if kind == BaseFileKind::Symlink {
            file.link = entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.to_string_lossy().into_owned());
        }
        if kind == BaseFileKind::File {
            let keep = match path.as_str() {
                "backup_manifest" => MAX_MANIFEST_BYTES as usize,
                "backup_label" | "PG_VERSION" | "tablespace_map" | "global/pg_control" => {
                    MAX_LABEL_BYTES
                }
                _ => 0,
            };
            let mut kept = Vec::new();
            // Bytes neither hashed nor kept are skipped by the archive reader unread.
            let mut hasher = (file.size < BaseFile::HASHED_BELOW_BYTES).then(blake3::Hasher::new);
            while hasher.is_some() || kept.len() < keep {
                let n = entry.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
                if n == 0 {
                    break;
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                if kept.len() < keep {
                    let room = (keep - kept.len()).min(n);
                    kept.extend_from_slice(&buf[..room]);
                }
            }
            file.hash = hasher.map(|h| h.finalize().to_hex().to_string());
            let text = || String::from_utf8_lossy(&kept).into_owned();
            match path.as_str() {
                "backup_label" => found.backup_label = Some(text()),
                "PG_VERSION" => found.pg_version = Some(text().trim().to_string()),
                "tablespace_map" => found.tablespace_map = Some(text()),
                "backup_manifest" => found.backup_manifest = Some(kept),
                // system_identifier is the first field of ControlFileData.
                "global/pg_control" if kept.len() >= 8 => {
                    found.system_identifier =
                        Some(u64::from_le_bytes(kept[..8].try_into().expect("8 bytes")));
                }
                _ => {}
            }
        }
        found.files.push(file);
    }
    Ok(found)
}

impl Default for BaseTarInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl BaseTarInspector {
    /// An inspector with its reader thread running.
    pub fn new() -> Self {
        let (tx, mut reader) = pipe(8);
        let worker = std::thread::spawn(move || {
            let result = scan(&mut reader);
            // Keep reading to the end so the writer never blocks on a full channel.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            result
        });
        BaseTarInspector {
            tx: Some(tx),
            worker: Some(worker),
        }
    }
}

fn not_a_base_backup(why: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!(
        "Input is not a complete pg_basebackup tar stream: {why}"
    ))
}

/// Reads the fields pgvault needs from `backup_label` and `backup_manifest`.
fn parse_info(found: Found) -> Result<BaseBackupInfo> {
    let label = found
        .backup_label
        .ok_or_else(|| not_a_base_backup("it has no backup_label"))?;
    let field = |name: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let start_from_label = field("START WAL LOCATION:")
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
        .ok_or_else(|| not_a_base_backup("backup_label has no START WAL LOCATION"))?;
    let timeline: u32 = field("START TIMELINE:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| not_a_base_backup("backup_label has no START TIMELINE"))?;
    let start_time = field("START TIME:").and_then(|v| {
        let v = v.strip_suffix(" UTC").or_else(|| v.strip_suffix(" GMT"))?;
        chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S")
            .ok()
            .map(|t| t.and_utc())
    });
    let manifest = found
        .backup_manifest
        .ok_or_else(|| not_a_base_backup("it has no backup_manifest"))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| not_a_base_backup(format!("backup_manifest does not parse: {e}")))?;
    let ranges = manifest["WAL-Ranges"]
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| not_a_base_backup("backup_manifest has no WAL-Ranges"))?;
    let lsn = |v: &serde_json::Value| v.as_str().map(Lsn::parse).transpose();
    let start_lsn = lsn(&ranges[0]["Start-LSN"])?.unwrap_or(Lsn::parse(&start_from_label)?);
    let stop_lsn = lsn(&ranges[ranges.len() - 1]["End-LSN"])?
        .ok_or_else(|| not_a_base_backup("backup_manifest has no End-LSN"))?;
    Ok(BaseBackupInfo {
        timeline,
        start_lsn,
        stop_lsn,
        start_time,
        pg_version: found.pg_version.unwrap_or_default(),
        system_identifier: found
            .system_identifier
            .ok_or_else(|| not_a_base_backup("it has no global/pg_control"))?,
        backup_label: label,
        tablespaces: found
            .tablespace_map
            .as_deref()
            .map(parse_tablespace_map)
            .unwrap_or_default(),
        files: found.files,
    })
}

/// The `oid location` lines of a tablespace_map (a location may hold spaces).
fn parse_tablespace_map(text: &str) -> Vec<Tablespace> {
    text.lines()
        .filter_map(|l| {
            let (oid, location) = l.split_once(' ')?;
            Some(Tablespace {
                oid: oid.parse().ok()?,
                location: location.to_string(),
            })
        })
        .collect()
}

impl StreamInspector for BaseTarInspector {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        if let Some(tx) = &self.tx {
            // A closed channel means the scan ended early; finish reports why.
            tx.send(data.to_vec());
        }
        Ok(())
    }

    fn head_len(&self) -> Option<u64> {
        Some(0)
    }

    fn finish(mut self: Box<Self>, _head: &[u8]) -> Result<Inspected> {
        drop(self.tx.take());
        let found = self
            .worker
            .take()
            .expect("finish is called once")
            .join()
            .map_err(|_| not_a_base_backup("the tar reader panicked"))?
            .map_err(not_a_base_backup)?;
        Ok(Inspected {
            patched_head: None,
            base: Some(parse_info(found)?),
            dump_contents: None,
            recreation: None,
            file_extension: None,
        })
    }
}
