//! Physical base backups: running `pg_basebackup` as one tar stream (spooled per
//! tablespace and merged when the cluster has tablespaces), and reading
//! what PITR needs (timeline, start and stop LSN, version, system id) and where
//! each file lies (for parallel and delta restores, and the mount's tree) from the
//! stream as it goes by.

use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
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
    start_pg_basebackup("-", &[], conn)
}

/// pg_basebackup in tar format without WAL into `pgdata` (`-` for stdout), with
/// `extra` options.
fn start_pg_basebackup(
    pgdata: &str,
    extra: &[&str],
    conn: &ConnectOptions,
) -> Result<(PgProcess, ChildStdout)> {
    let mut args = vec![
        format!("--pgdata={pgdata}"),
        "--format=tar".into(),
        "--wal-method=none".into(),
        "--checkpoint=fast".into(),
        "--label=pgvault".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    // A connection string (host, port, sslmode, password...) is how the DBA said
    // where the server is; pg_basebackup takes it as --dbname and ignores its dbname.
    if let Some(c) = &conn.conninfo {
        args.push(format!("--dbname={c}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PgProcess::start("pg_basebackup", &args, conn, "pg_basebackup".to_string())
}

/// Whether the cluster `conn` reaches has tablespaces besides pg_default and
/// pg_global. pg_basebackup writes one tar stream to stdout only without them; with
/// them, the backup goes through [`SpooledBaseBackup`]. `true` when the server
/// cannot be asked over an ordinary connection (a replication-only role): the
/// spooled way works for every cluster.
///
/// Errors: `InvalidInput` naming the tablespaces that are in place (directories
/// under `pg_tblspc`, made with `allow_in_place_tablespaces`): pg_basebackup 15
/// sends none of their files and lists none in its manifest, so the backup would
/// lack their tables and nothing after would notice. `--pgdata` reads them.
pub async fn may_have_tablespaces(conn: &ConnectOptions) -> Result<bool> {
    let db = conn
        .conninfo
        .as_deref()
        .unwrap_or(super::client::MAINTENANCE_DB);
    // An in-place tablespace's location is relative to the data directory.
    let sql = "SELECT count(*) || ' ' || coalesce(string_agg(quote_ident(spcname), ', ' ORDER BY spcname) \
               FILTER (WHERE pg_tablespace_location(oid) NOT LIKE '/%'), '') \
               FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')";
    match super::client::psql(conn, db, sql).await {
        Ok(out) => {
            let (count, in_place) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
            if !in_place.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "Tablespace {in_place} is in place (a directory inside the data directory, made with allow_in_place_tablespaces): pg_basebackup leaves its files out of a base backup, so the backup would lack its tables; take it with `pgvault backup --base --pgdata DIR` on the database host"
                )));
            }
            Ok(count != "0")
        }
        Err(e) => {
            tracing::info!("Cannot list the cluster's tablespaces, so pg_basebackup writes to a spool directory: {e}");
            Ok(true)
        }
    }
}

/// Where pg_basebackup's archives are spooled: `$TMPDIR`, else `/var/tmp` (on
/// disk, where `/tmp` may be memory).
fn spool_parent() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// The prefix of a spool directory's name; the owner's pid is inside it.
const SPOOL_PREFIX: &str = "pgvault-basebackup-";

/// A base backup of a cluster with tablespaces, by pg_basebackup in tar format into
/// a private spool directory: one archive per tablespace, then `base.tar`, then
/// `backup_manifest`. Each archive is read as pg_basebackup writes it (it writes
/// them one after another) and deleted once read. pg_basebackup does not wait for
/// pgvault, so the spool may fill up to the largest archive when storing is slower
/// than the server. The archives become one tar stream laid out
/// as a `--pgdata` backup's: each tablespace under `pg_tblspc/<oid>/`, then the
/// data directory, then the manifest, which pg_basebackup wrote for that layout.
pub struct SpooledBaseBackup {
    maker: Option<JoinHandle<Result<()>>>,
}

impl SpooledBaseBackup {
    /// Starts pg_basebackup into a new spool directory under [`spool_parent`] and
    /// returns the merged tar stream to store; [`SpooledBaseBackup::finish`] says
    /// whether it is whole. Spool directories of pgvault processes that died are
    /// removed first.
    ///
    /// Errors: `Io` when the spool directory cannot be made; `External` when
    /// pg_basebackup cannot start.
    pub fn start(conn: &ConnectOptions) -> Result<(SpooledBaseBackup, PipeReader)> {
        let parent = spool_parent();
        remove_dead_spools(&parent);
        let spool = tempfile::Builder::new()
            .prefix(SPOOL_PREFIX)
            .tempdir_in(&parent)
            .map_err(|e| Error::io_path("make a spool directory in", &parent, e))?;
        let owner = spool.path().join("owner");
        std::fs::write(&owner, owner_line(std::process::id()))
            .map_err(|e| Error::io_path("write", &owner, e))?;
        // pg_basebackup wants a directory it creates or an empty one.
        let dir = spool.path().join("archives");
        let extra = [
            // The archives live for seconds; flushing them to disk is wasted work.
            "--no-sync",
            // A progress line a second on stderr: if pgvault dies, the next one
            // meets a closed pipe and ends pg_basebackup, instead of it filling the
            // spool with an archive nobody reads.
            "--progress",
        ];
        let (process, stdout) = start_pg_basebackup(&dir.to_string_lossy(), &extra, conn)?;
        let (tx, rx) = pipe(8);
        let maker = std::thread::spawn(move || {
            // Held until the end: dropping the spool removes whatever is left in it.
            let _spool = spool;
            let _stdout = stdout;
            merge(process, &dir, tx)
        });
        Ok((SpooledBaseBackup { maker: Some(maker) }, rx))
    }

    /// Waits for pg_basebackup and the merge.
    ///
    /// Errors: `External` when pg_basebackup failed (its own message); `Io` when an
    /// archive cannot be read or the stream cannot be written.
    pub fn finish(mut self) -> Result<()> {
        self.maker
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| Error::External("The base backup's archive merger panicked".into()))?
    }
}

/// What a spool's `owner` file says: the pid and, where known, its start time
/// (a pid alone may since belong to another process).
fn owner_line(pid: u32) -> String {
    match crate::host::probe_process(pid) {
        crate::host::ProcessProbe::Running { start: Some(t) } => format!("{pid} {t}"),
        _ => pid.to_string(),
    }
}

/// Removes this user's spool directories whose owner process is gone (a pgvault
/// killed in the middle of a backup), so that they do not pile up. A spool whose
/// owner cannot be told gone is left alone.
fn remove_dead_spools(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::getuid().as_raw();
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SPOOL_PREFIX)
            || !e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me)
        {
            continue;
        }
        let Ok(line) = std::fs::read_to_string(e.path().join("owner")) else {
            continue;
        };
        let mut fields = line.split_whitespace();
        let Some(pid) = fields.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let started: Option<u64> = fields.next().and_then(|t| t.parse().ok());
        let dead = match crate::host::probe_process(pid) {
            crate::host::ProcessProbe::Gone => true,
            crate::host::ProcessProbe::Running { start } => {
                started.is_some() && start.is_some() && start != started
            }
            crate::host::ProcessProbe::Unknown => false,
        };
        if dead {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn merge(mut process: PgProcess, dir: &Path, out: PipeWriter) -> Result<()> {
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    let mut copied = Vec::new();
    if let Err(e) = merge_archives(&mut process.child, dir, &mut tar, &mut copied) {
        // pg_basebackup's own failure explains a missing or cut archive best.
        if matches!(process.child.try_wait(), Ok(Some(s)) if !s.success()) {
            return Err(process.finish().err().unwrap_or(e));
        }
        process.kill();
        return Err(e);
    }
    process.finish()?;
    let path = dir.join("backup_manifest");
    let manifest = std::fs::read(&path).map_err(|e| Error::io_path("read", &path, e))?;
    check_against_manifest(&manifest, &copied)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(manifest.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    tar.append_data(&mut h, "backup_manifest", &manifest[..])
        .map_err(merge_failed)?;
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(merge_failed)?;
    Ok(())
}

/// Checks that the merged archives hold exactly the files pg_basebackup's
/// `backup_manifest` lists, with their sizes: the merge read archives while they
/// were written, and a short one must never become a backup.
///
/// Errors: `External` naming the first file missing, extra or of another size.
fn check_against_manifest(manifest: &[u8], copied: &[(String, u64)]) -> Result<()> {
    let bad = |why: String| {
        Error::External(format!(
            "The archives pg_basebackup wrote do not match its backup_manifest: {why}"
        ))
    };
    let json: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("it does not parse: {e}")))?;
    let mut listed: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for f in json["Files"]
        .as_array()
        .ok_or_else(|| bad("it has no Files".into()))?
    {
        let path = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
            (Some(p), _) => p.to_string(),
            (None, Some(hex)) => String::from_utf8_lossy(
                &hex::decode(hex).map_err(|e| bad(format!("an Encoded-Path: {e}")))?,
            )
            .into_owned(),
            _ => return Err(bad("a file has no Path".into())),
        };
        listed.insert(path, f["Size"].as_u64().unwrap_or(u64::MAX));
    }
    for (name, size) in copied {
        match listed.remove(name) {
            Some(s) if s == *size => {}
            Some(s) => {
                return Err(bad(format!(
                    "{name} has {size} bytes, the manifest says {s}"
                )))
            }
            None => return Err(bad(format!("{name} is not in the manifest"))),
        }
    }
    match listed.into_keys().next() {
        Some(missing) => Err(bad(format!("{missing} is missing"))),
        None => Ok(()),
    }
}

fn merge_failed(e: std::io::Error) -> Error {
    Error::io("Cannot write the base backup stream", e)
}

/// Merges each archive as it appears, tablespaces first, until `base.tar`.
fn merge_archives(
    child: &mut Child,
    dir: &Path,
    tar: &mut tar::Builder<BufWriter<PipeWriter>>,
    copied: &mut Vec<(String, u64)>,
) -> Result<()> {
    loop {
        let Some((name, before)) = next_archive(child, dir)? else {
            return Err(Error::External(
                "pg_basebackup ended without writing base.tar".into(),
            ));
        };
        let path = dir.join(&name);
        let file = std::fs::File::open(&path).map_err(|e| Error::io_path("open", &path, e))?;
        let prefix = match name.strip_suffix(".tar") {
            Some("base") => String::new(),
            Some(oid) if !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o700);
                h.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
                let prefix = format!("pg_tblspc/{oid}/");
                tar.append_data(&mut h, &prefix, std::io::empty())
                    .map_err(merge_failed)?;
                prefix
            }
            _ => {
                return Err(Error::External(format!(
                    "pg_basebackup wrote {name}, which is not a tablespace's archive"
                )))
            }
        };
        let growing = Growing {
            file,
            dir,
            before,
            child: &mut *child,
            complete: false,
        };
        copy_entries(growing, &prefix, tar, copied)
            .map_err(|e| Error::io(format!("Cannot merge pg_basebackup's {name}"), e))?;
        // Read: the spool should not hold the whole cluster.
        std::fs::remove_file(&path).map_err(|e| Error::io_path("remove", &path, e))?;
        if name == "base.tar" {
            return Ok(());
        }
    }
}

/// How often a growing archive or the spool is looked at again.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The names in the spool now.
fn spool_names(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The oldest archive in the spool, waiting for one, and the names the spool held
/// then; `None` when pg_basebackup exited without writing another. pg_basebackup
/// writes one archive after another, so the oldest is the one to read first (when
/// pgvault lags, newer ones wait behind it; only the newest may still grow), and
/// base.tar comes last.
fn next_archive(child: &mut Child, dir: &Path) -> Result<Option<(String, Vec<String>)>> {
    loop {
        let names = spool_names(dir).map_err(|e| Error::io_path("read", dir, e))?;
        let mut tars: Vec<(bool, std::time::SystemTime, String)> = names
            .iter()
            .filter(|n| n.ends_with(".tar"))
            .filter_map(|n| {
                let modified = std::fs::metadata(dir.join(n)).ok()?.modified().ok()?;
                Some((n == "base.tar", modified, n.clone()))
            })
            .collect();
        tars.sort();
        if let Some((_, _, n)) = tars.into_iter().next() {
            return Ok(Some((n, names)));
        }
        if exited(child) {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

fn exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// An archive pg_basebackup may still be writing: at its current end a read waits
/// for more, until pg_basebackup has moved on or exited; then the end is the end.
/// It has moved on when a file appears that the spool did not hold when this
/// archive was picked: it starts a file only after closing the one before. (A file
/// that was already there proves nothing: it may be the one being written, and
/// this archive an older, finished one.)
struct Growing<'a> {
    file: std::fs::File,
    dir: &'a Path,
    /// The spool's names when this archive was picked.
    before: Vec<String>,
    child: &'a mut Child,
    complete: bool,
}

impl Growing<'_> {
    fn moved_on(&mut self) -> std::io::Result<bool> {
        if exited(self.child) {
            return Ok(true);
        }
        Ok(spool_names(self.dir)?
            .iter()
            .any(|n| !self.before.contains(n)))
    }
}

impl Read for Growing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || self.complete || buf.is_empty() {
                return Ok(n);
            }
            // Checked before one more read: bytes written before the move are seen.
            if self.moved_on()? {
                self.complete = true;
            } else {
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Copies an archive's entries into the merged stream under `prefix`. Links in
/// base.tar's `pg_tblspc/` are left out (pg_basebackup writes none with a
/// tablespace_map): each tablespace is a directory of the stream.
fn copy_entries(
    from: impl Read,
    prefix: &str,
    tar: &mut tar::Builder<BufWriter<PipeWriter>>,
    copied: &mut Vec<(String, u64)>,
) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(from);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").trim_end_matches('/');
        if path.is_empty() || path == "." {
            continue;
        }
        let name = format!("{prefix}{path}");
        let from = entry.header();
        let kind = from.entry_type();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(from.mode().unwrap_or(0o600));
        h.set_mtime(from.mtime().unwrap_or(0));
        h.set_uid(from.uid().unwrap_or(0));
        h.set_gid(from.gid().unwrap_or(0));
        match kind {
            tar::EntryType::Directory => {
                h.set_size(0);
                tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            }
            tar::EntryType::Symlink => {
                if prefix.is_empty() && name.starts_with("pg_tblspc/") {
                    continue;
                }
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                h.set_size(0);
                tar.append_link(&mut h, &name, target)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(entry.size());
                copied.push((name.clone(), entry.size()));
                tar.append_data(&mut h, &name, &mut entry)?;
            }
            // Hard links, devices: pg_basebackup writes none.
            _ => {}
        }
    }
    Ok(())
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
            chunks: None,
            stamp: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_archives_must_match_the_manifest_by_path_and_size() {
        let manifest = br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [
            {"Path": "PG_VERSION", "Size": 3},
            {"Path": "pg_tblspc/16385/PG_15_1/5/16386", "Size": 8192},
            {"Encoded-Path": "6261642f6e616d65", "Size": 1}
        ]}"#;
        let all = vec![
            ("pg_tblspc/16385/PG_15_1/5/16386".to_string(), 8192),
            ("PG_VERSION".to_string(), 3),
            ("bad/name".to_string(), 1),
        ];
        check_against_manifest(manifest, &all).unwrap();
        // A tablespace archive cut short, one left out, one too many.
        let mut short = all.clone();
        short[0].1 = 4096;
        let missing = all[1..].to_vec();
        let mut extra = all.clone();
        extra.push(("stray".into(), 1));
        for (copied, says) in [
            (short, "has 4096 bytes"),
            (missing, "is missing"),
            (extra, "stray is not in the manifest"),
        ] {
            let e = check_against_manifest(manifest, &copied).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(e.kind(), crate::error::ErrorKind::External);
        }
    }
}
