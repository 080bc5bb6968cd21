//! Base backups read straight from the data directory (`backup --base --pgdata`):
//! the non-exclusive backup API over one held psql session, the walk of PGDATA and
//! its tablespaces with pg_basebackup's exclusions, parallel readers that check
//! page checksums, and the tar stream they make. The stream carries
//! `backup_label`, `tablespace_map` and a `backup_manifest` as pg_basebackup's
//! does, so the write path stores it (and [`super::basebackup::BaseTarInspector`]
//! reads it) like a pg_basebackup stream, and `pg_verifybackup` checks a restore.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::page::{check_page, relation_first_block, PageCheck, PAGE_BYTES};
use super::{pg_program, ConnectOptions};
use crate::error::{Error, Result};
use crate::store::manifest::{BaseFile, ChunkRef, FileStamp, SnapshotManifest};
use crate::store::writer::Segment;
use crate::wal_name::Lsn;

/// A page whose checksum failed when it was read, and again when read once more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPage {
    /// The file's path in the backup, e.g. `base/16384/16390`.
    pub path: String,
    /// The block number in its relation fork (segment files counted in).
    pub block: u32,
}

/// What a base backup read from the data directory found, beside its stream.
#[derive(Debug, Default)]
pub struct PgdataReport {
    /// Pages with a bad checksum (data checksums on): reported, stored as read.
    pub bad_pages: Vec<BadPage>,
    /// Files that vanished between the walk and their read (a dropped table).
    pub files_vanished: u64,
    /// What each file the stream was cut around was on disk, by stream path.
    pub stamps: HashMap<String, FileStamp>,
}

/// The control file, in the stream and the data directory.
const CONTROL_FILE: &str = "global/pg_control";

/// A file changed this long before the previous backup began is trusted to have
/// been read whole by it. A write under way while a file is read sets its change
/// time before the read, and would then have to last this long: PostgreSQL writes
/// pages of 8 KiB. Timestamps are coarse (a clock tick, on some file systems a
/// second), which the margin also covers. pgBackRest reasons alike about
/// timestamp granularity, and waits out the second in which a backup begins.
const REUSE_MARGIN_NS: i64 = 2_000_000_000;

/// The previous base backup of the same cluster, as far as a new one can reuse
/// its files: those of [`BaseFile::HASHED_BELOW_BYTES`] or more, which its stream
/// was cut around and whose state on disk it recorded.
#[derive(Debug, Default)]
pub struct PriorBackup {
    /// When it began, in nanoseconds since the epoch.
    started_ns: i64,
    files: HashMap<String, PriorFile>,
}

#[derive(Debug)]
struct PriorFile {
    size: u64,
    mode: u32,
    mtime: u64,
    stamp: FileStamp,
    refs: Vec<ChunkRef>,
}

impl PriorBackup {
    /// What base backup `m` offers a later one; `None` when it offers nothing.
    pub fn of(m: &SnapshotManifest) -> Option<PriorBackup> {
        let files: HashMap<String, PriorFile> = m
            .base
            .as_ref()?
            .files
            .iter()
            .filter_map(|f| {
                let [first, count] = f.chunks?;
                let refs = m
                    .chunks
                    .get(first as usize..(first as usize).checked_add(count as usize)?)?;
                Some((
                    f.path.clone(),
                    PriorFile {
                        size: f.size,
                        mode: f.mode,
                        mtime: f.mtime,
                        stamp: f.stamp?,
                        refs: refs.to_vec(),
                    },
                ))
            })
            .collect();
        // The earlier of pgvault's start and the server's START TIME (taken before
        // the walk, which may be long): the margin counts from before any file was
        // looked at.
        let started = m
            .base
            .as_ref()
            .and_then(|b| b.start_time)
            .map_or(m.started, |t| t.min(m.started));
        (!files.is_empty()).then(|| PriorBackup {
            started_ns: started.timestamp_nanos_opt().unwrap_or(0),
            files,
        })
    }

    /// The chunks to name for `entry` (its tar header, bytes and padding) if it is
    /// unchanged since this backup read it, with the header's bytes and the CRC-32C.
    fn reusable(&self, entry: &Entry, header: &[u8]) -> Option<(&[ChunkRef], u32)> {
        let p = self.files.get(&entry.name)?;
        let unchanged = p.size == entry.size
            && p.mode == entry.mode
            && p.mtime == entry.mtime
            && p.stamp.ino == entry.ino
            && p.stamp.mtime_ns == entry.mtime_ns
            && p.stamp.ctime_ns == entry.ctime_ns
            && entry.ctime_ns < self.started_ns.saturating_sub(REUSE_MARGIN_NS);
        let len = header.len() as u64 + entry.size.div_ceil(512) * 512;
        let named: u64 = p.refs.iter().map(|r| u64::from(r.len)).sum();
        (unchanged && named == len).then_some((&p.refs[..], p.stamp.crc32c))
    }
}

/// How a base backup reads the data directory.
#[derive(Debug, Clone)]
pub struct PgdataOptions {
    /// The running server's data directory, on this host.
    pub pgdata: PathBuf,
    /// Files read at once.
    pub jobs: usize,
    pub conn: ConnectOptions,
    /// The previous backup of the cluster, whose unchanged files are named, not read.
    pub prior: Option<Arc<PriorBackup>>,
    /// Read every file, even those the previous backup holds unchanged.
    pub read_all: bool,
}

/// A backup in progress: the stream to store, and the thread that makes it.
pub struct PgdataBackup {
    maker: Option<JoinHandle<Result<PgdataReport>>>,
}

/// One psql session held open from `pg_backup_start` to `pg_backup_stop`: the
/// non-exclusive API ends the backup when the session ends, so a pgvault that dies
/// leaves no backup mode behind.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
}

impl Session {
    fn open(conn: &ConnectOptions) -> Result<Session> {
        let path = pg_program("psql");
        let mut cmd = Command::new(&path);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(conn.client_args())
            .arg(format!(
                "--dbname={}",
                conn.conninfo.as_deref().unwrap_or("postgres")
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::External(format!("Cannot start {}: {e}", path.display())))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout was piped"));
        let stderr = super::collect_stderr(&mut child);
        Ok(Session {
            child,
            stdin,
            stdout,
            stderr: Some(stderr),
        })
    }

    /// Runs one statement that returns one row, and returns that row's line.
    fn query(&mut self, sql: &str) -> Result<String> {
        let sent = writeln!(self.stdin, "{sql}").and_then(|_| self.stdin.flush());
        let mut line = String::new();
        let read = sent.and_then(|_| self.stdout.read_line(&mut line));
        match read {
            Ok(n) if n > 0 => Ok(line.trim_end_matches('\n').to_string()),
            _ => Err(self.failed()),
        }
    }

    /// The error of a session that ended: psql's own message.
    fn failed(&mut self) -> Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Error::External(format!(
            "The backup session (psql) failed: {}",
            said.trim().lines().last().unwrap_or("it ended")
        ))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `pg_backup_stop` returned.
struct Stopped {
    lsn: Lsn,
    label: String,
    tablespace_map: String,
}

fn parse_row(line: &str, fields: usize) -> Result<Vec<&str>> {
    let v: Vec<&str> = line.split('|').collect();
    if v.len() == fields {
        Ok(v)
    } else {
        Err(Error::External(format!(
            "The backup session (psql) answered something unexpected: {line}"
        )))
    }
}

fn hex_text(s: &str) -> Result<String> {
    let bytes = hex::decode(s).map_err(|e| {
        Error::External(format!(
            "pg_backup_stop returned a file that does not decode: {e}"
        ))
    })?;
    String::from_utf8(bytes)
        .map_err(|_| Error::External("pg_backup_stop returned a file that is not UTF-8".into()))
}

/// One thing in the stream, in stream order.
#[derive(Debug, Clone)]
struct Entry {
    /// The path in the stream, e.g. `base/1/1259`, `pg_tblspc/16385/PG_15_…/…`.
    name: String,
    path: PathBuf,
    kind: EntryKind,
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
    size: u64,
    ino: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

#[derive(Debug, Clone)]
enum EntryKind {
    Dir,
    File { first_block: Option<u32> },
    Symlink(PathBuf),
}

/// Directories whose contents a base backup leaves out, as pg_basebackup does:
/// they are rebuilt at startup, or (pg_wal) come from the WAL archive.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Top-level files a base backup leaves out: the running server's, and an older
/// backup's leftovers, which would mislead recovery.
const SKIPPED_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

fn skipped_anywhere(name: &str) -> bool {
    name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init")
}

/// A temporary relation's file (`t3_16384`), which no other session can read.
fn is_temp_relation(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|r| r.split_once('_'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().next().is_some_and(|c| c.is_ascii_digit())
        })
}

fn io_err<'a>(action: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let action = action.to_string();
    move |e| Error::io_path(&action, path, e)
}

fn entry_of(name: String, path: &Path, meta: &std::fs::Metadata, kind: EntryKind) -> Entry {
    use std::os::unix::fs::MetadataExt;
    Entry {
        name,
        path: path.to_path_buf(),
        kind,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime().max(0) as u64,
        uid: u64::from(meta.uid()),
        gid: u64::from(meta.gid()),
        size: meta.len(),
        ino: meta.ino(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    }
}

/// Walks `dir` (stream path `prefix`) in name order, so that successive backups
/// lay their streams out alike and deduplicate.
fn walk_dir(
    dir: &Path,
    prefix: &str,
    top: bool,
    in_db_dir: bool,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let names = match sorted_names(dir) {
        Ok(n) => n,
        // A database dropped while the walk went by.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !top => return Ok(()),
        Err(e) => return Err(Error::io_path("read", dir, e)),
    };
    // An unlogged relation is backed up as its init fork only: the server resets
    // it from that fork at the end of recovery.
    let unlogged: std::collections::HashSet<&str> = if in_db_dir {
        names
            .iter()
            .filter_map(|n| n.strip_suffix("_init"))
            .collect()
    } else {
        Default::default()
    };
    for name in &names {
        if skipped_anywhere(name) || (top && SKIPPED_TOP_FILES.contains(&name.as_str())) {
            continue;
        }
        if in_db_dir {
            if is_temp_relation(name) {
                continue;
            }
            let node = name.split(['_', '.']).next().unwrap_or("");
            if unlogged.contains(node) && !name.contains("_init") {
                continue;
            }
        }
        let path = dir.join(name);
        let rel = format!("{prefix}{name}");
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_path("read", &path, e)),
        };
        let ft = meta.file_type();
        if top && name == "pg_tblspc" {
            out.push(entry_of(rel.clone(), &path, &meta, EntryKind::Dir));
            walk_tablespaces(&path, &format!("{rel}/"), out)?;
        } else if top && EMPTY_DIRS.contains(&name.as_str()) {
            // pg_wal may be a symlink to another disk; the backup holds a directory.
            let meta = std::fs::metadata(&path).map_err(io_err("read", &path))?;
            out.push(entry_of(rel.clone(), &path, &meta, EntryKind::Dir));
            if name == "pg_wal" {
                out.push(entry_of(
                    format!("{rel}/archive_status"),
                    &path,
                    &meta,
                    EntryKind::Dir,
                ));
            }
        } else if ft.is_dir() {
            out.push(entry_of(rel.clone(), &path, &meta, EntryKind::Dir));
            // base/<oid>/ is a database's directory (a tablespace's are walked by
            // walk_tablespaces).
            walk_dir(&path, &format!("{rel}/"), false, prefix == "base/", out)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_err("read the link", &path))?;
            out.push(entry_of(rel, &path, &meta, EntryKind::Symlink(target)));
        } else if ft.is_file() {
            let first_block = if in_db_dir || prefix == "global/" {
                relation_first_block(name)
            } else {
                None
            };
            out.push(entry_of(rel, &path, &meta, EntryKind::File { first_block }));
        }
    }
    Ok(())
}

/// The names in `dir`, sorted, so that successive backups lay their streams out
/// alike and deduplicate.
fn sorted_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Each tablespace is stored under `pg_tblspc/<oid>/` as a directory, so that one
/// stream holds the whole cluster; `tablespace_map` says where it lived, and a
/// restore puts it there (or where `--tablespace-map` says).
fn walk_tablespaces(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<()> {
    let names = sorted_names(dir).map_err(io_err("read", dir))?;
    let version =
        std::fs::read_to_string(dir.parent().unwrap_or(dir).join("PG_VERSION")).unwrap_or_default();
    let ours = format!("PG_{}_", version.trim());
    for oid in names {
        let link = dir.join(&oid);
        // Followed: a tablespace is a symlink to its location (or, in-place, a directory).
        let meta = match std::fs::metadata(&link) {
            Ok(m) if m.is_dir() => m,
            _ => continue,
        };
        let rel = format!("{prefix}{oid}");
        out.push(entry_of(rel.clone(), &link, &meta, EntryKind::Dir));
        // Only this server's version directory: another is pg_upgrade's leftover.
        let versions = sorted_names(&link).map_err(io_err("read", &link))?;
        for v in versions.into_iter().filter(|n| n.starts_with(&ours)) {
            let path = link.join(&v);
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("read", &path))?;
            let vrel = format!("{rel}/{v}");
            out.push(entry_of(vrel.clone(), &path, &meta, EntryKind::Dir));
            // Each directory below is a database's.
            let dbs = sorted_names(&path).map_err(io_err("read", &path))?;
            for db in dbs {
                let dpath = path.join(&db);
                let meta = match std::fs::symlink_metadata(&dpath) {
                    Ok(m) if m.is_dir() => m,
                    _ => continue,
                };
                let drel = format!("{vrel}/{db}");
                out.push(entry_of(drel.clone(), &dpath, &meta, EntryKind::Dir));
                walk_dir(&dpath, &format!("{drel}/"), false, true, out)?;
            }
        }
    }
    Ok(())
}

/// What a reader sends for one file.
/// What a file's tar header says besides its name and size.
#[derive(Debug, Clone, Copy)]
struct Header {
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
}

enum Piece {
    /// The file as opened: its size, mode, times and owner now (the stream's
    /// header says these), and its stamp, taken from the same `fstat`, so that a
    /// later backup that finds the stamp unchanged builds the same header.
    Opened {
        size: u64,
        stamp: FileStamp,
        header: Header,
    },
    /// The file is gone: it is left out.
    Vanished,
    Data(Vec<u8>),
    /// All `size` bytes were sent; their CRC-32C, for the backup manifest.
    Done {
        crc32c: u32,
        bad_pages: Vec<u32>,
    },
    Failed(Error),
}

/// How much a reader reads at once, and sends as one piece.
const READ_BYTES: usize = 1 << 20;

/// Pieces a reader may have sent ahead of the stream.
const PIECES_AHEAD: usize = 4;

/// Reads one file into `tx`. A file that shrank while read is padded with zeros to
/// the size its header gave, as pg_basebackup does: replaying the WAL from the
/// backup's start rewrites whatever changed.
fn read_file(entry: &Entry, first_block: Option<u32>, start: Lsn, tx: &SyncSender<Piece>) -> bool {
    let mut file = match std::fs::File::open(&entry.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return tx.send(Piece::Vanished).is_ok()
        }
        Err(e) => {
            return tx
                .send(Piece::Failed(Error::io_path("open", &entry.path, e)))
                .is_ok()
        }
    };
    let (size, stamp, header) = match file.metadata() {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            let stamp = FileStamp {
                ino: m.ino(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                crc32c: 0,
            };
            let header = Header {
                mode: m.mode() & 0o7777,
                mtime: m.mtime().max(0) as u64,
                uid: u64::from(m.uid()),
                gid: u64::from(m.gid()),
            };
            (m.len(), stamp, header)
        }
        Err(e) => {
            return tx
                .send(Piece::Failed(Error::io_path("read", &entry.path, e)))
                .is_ok()
        }
    };
    if tx
        .send(Piece::Opened {
            size,
            stamp,
            header,
        })
        .is_err()
    {
        return false;
    }
    let mut crc = 0u32;
    let mut bad_pages = Vec::new();
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(READ_BYTES as u64) as usize;
        // Read into spare capacity: zeroing a megabyte first, for every megabyte
        // read, cost 4% of a backup's CPU.
        let mut buf = Vec::with_capacity(want);
        if let Err(e) = (&mut file).take(want as u64).read_to_end(&mut buf) {
            return tx
                .send(Piece::Failed(Error::io_path("read", &entry.path, e)))
                .is_ok();
        }
        let got = buf.len();
        // A file that shrank: zeros for the rest, as the header promised.
        buf.resize(want, 0);
        if let Some(first) = first_block {
            check_pages(
                &entry.path,
                &mut buf[..got],
                first,
                done,
                start,
                &mut bad_pages,
            );
        }
        crc = crc32c::crc32c_append(crc, &buf);
        done += want as u64;
        if tx.send(Piece::Data(buf)).is_err() {
            return false;
        }
    }
    tx.send(Piece::Done {
        crc32c: crc,
        bad_pages,
    })
    .is_ok()
}

/// Checks the whole pages of `buf`, read at `offset` of a relation file. A page
/// that fails is read once more: the server may have been writing it (a torn
/// read), and then the second read is what is stored. A page still failing whose
/// LSN is at or after the backup's start is being changed under the backup, and
/// WAL replay will rewrite it; any other is reported.
fn check_pages(
    path: &Path,
    buf: &mut [u8],
    first_block: u32,
    offset: u64,
    start: Lsn,
    bad: &mut Vec<u32>,
) {
    use std::os::unix::fs::FileExt;
    for (i, page) in buf.chunks_exact_mut(PAGE_BYTES).enumerate() {
        let page_no = offset / PAGE_BYTES as u64 + i as u64;
        let block = first_block.wrapping_add(page_no as u32);
        let arr: &mut [u8; PAGE_BYTES] = page.try_into().expect("a whole page");
        if !matches!(check_page(arr, block), PageCheck::Bad { .. }) {
            continue;
        }
        let mut again = [0u8; PAGE_BYTES];
        let reread = std::fs::File::open(path)
            .and_then(|f| f.read_exact_at(&mut again, page_no * PAGE_BYTES as u64))
            .is_ok();
        let verdict = if reread {
            check_page(&again, block)
        } else {
            check_page(arr, block)
        };
        if reread {
            arr.copy_from_slice(&again);
        }
        if let PageCheck::Bad { lsn, .. } = verdict {
            if lsn < start {
                bad.push(block);
            }
        }
    }
}

/// A reader thread's share: every `jobs`-th file, in stream order.
fn reader(files: Vec<(Entry, Option<u32>)>, start: Lsn, checksums: bool, tx: SyncSender<Piece>) {
    for (entry, first_block) in files {
        let first_block = first_block.filter(|_| checksums);
        if !read_file(&entry, first_block, start, &tx) {
            return;
        }
    }
}

/// Feeds the tar builder one file's bytes from its reader, then holds what the
/// reader reported at its end.
struct FileBytes<'a> {
    rx: &'a Receiver<Piece>,
    buf: Vec<u8>,
    pos: usize,
    done: Option<(u32, Vec<u32>)>,
    failed: Option<Error>,
}

impl Read for FileBytes<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.done.is_some() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Piece::Data(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(Piece::Done { crc32c, bad_pages }) => {
                    self.done = Some((crc32c, bad_pages));
                    return Ok(0);
                }
                Ok(Piece::Failed(e)) => {
                    self.failed = Some(e);
                    return Err(std::io::Error::other("a reader failed"));
                }
                _ => return Err(std::io::Error::other("a reader stopped")),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One line of the backup manifest's file list.
struct ManifestFile {
    path: String,
    size: u64,
    mtime: u64,
    crc32c: u32,
}

/// The backup manifest, as pg_basebackup writes it (version 1): pg_verifybackup
/// checks a restored copy against it, and the tar inspector reads its WAL range.
fn backup_manifest(files: &[ManifestFile], timeline: u32, start: Lsn, stop: Lsn) -> Vec<u8> {
    use sha2::Digest;
    let mut m = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
    for (i, f) in files.iter().enumerate() {
        let when = chrono::DateTime::from_timestamp(f.mtime as i64, 0).unwrap_or_default();
        m.push_str(&format!(
            "{}{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            if i == 0 { "" } else { ",\n" },
            serde_json::Value::String(f.path.clone()),
            f.size,
            when.format("%Y-%m-%d %H:%M:%S GMT"),
            // PostgreSQL prints the CRC's bytes in memory order.
            hex::encode(f.crc32c.to_le_bytes()),
        ));
    }
    m.push_str(&format!(
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{stop}\" }}\n],\n"
    ));
    let sum = sha2::Sha256::digest(m.as_bytes());
    m.push_str(&format!(
        "\"Manifest-Checksum\": \"{}\"}}\n",
        hex::encode(sum)
    ));
    m.into_bytes()
}

fn header_for(entry: &Entry, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(entry.mode);
    h.set_mtime(entry.mtime);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    h
}

fn small_file(name: &str, bytes: &[u8], mtime: u64) -> (tar::Header, ManifestFile) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    let f = ManifestFile {
        path: name.to_string(),
        size: bytes.len() as u64,
        mtime,
        crc32c: crc32c::crc32c(bytes),
    };
    (h, f)
}

fn stream_failed(e: std::io::Error) -> Error {
    Error::io("Cannot write the base backup stream", e)
}

/// The stream's bytes, sent on as [`Segment::Bytes`].
struct SegmentWriter(SyncSender<Segment>);

impl SegmentWriter {
    fn send(&self, s: Segment) -> std::io::Result<()> {
        self.0.send(s).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reading side stopped")
        })
    }
}

impl Write for SegmentWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.send(Segment::Bytes(data.to_vec()))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Stream = tar::Builder<BufWriter<SegmentWriter>>;

/// Ends the stored chunk at this point of the stream with `how` (a [`Segment::Cut`]
/// or [`Segment::FixedCut`]).
fn cut(tar: &mut Stream, how: Segment) -> Result<()> {
    let w = tar.get_mut();
    w.flush().map_err(stream_failed)?;
    w.get_ref().send(how).map_err(stream_failed)
}

/// The bytes the stream's header (or headers, for a long name) of `entry` take.
fn header_bytes(entry: &Entry) -> Result<Vec<u8>> {
    let mut h = header_for(entry, tar::EntryType::Regular, entry.size);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, &entry.name, std::io::empty())
        .map_err(stream_failed)?;
    Ok(std::mem::take(b.get_mut()))
}

/// How one file gets into the stream.
enum Source<'a> {
    /// Read by a reader thread; cut around when it is large.
    Read { cut: bool },
    /// Unchanged since the previous backup: its chunks are named.
    Reused {
        refs: &'a [ChunkRef],
        header: Vec<u8>,
        crc32c: u32,
    },
}

/// Writes the stream: every entry in order with its file's bytes from the
/// readers (or, unchanged since the previous backup, its chunks named), then
/// (after `pg_backup_stop`) backup_label, tablespace_map and the manifest.
#[allow(clippy::too_many_arguments)]
fn make_stream(
    mut session: Session,
    (entries, control): (Vec<Entry>, Option<Entry>),
    opts: &PgdataOptions,
    start: Lsn,
    timeline: u32,
    checksums: bool,
    out: SyncSender<Segment>,
) -> Result<PgdataReport> {
    let jobs = opts.jobs.max(1);
    let large = |e: &Entry| e.size >= BaseFile::HASHED_BELOW_BYTES;
    let mut sources = Vec::with_capacity(entries.len());
    for e in &entries {
        let reused = match (&opts.prior, &e.kind) {
            (Some(prior), EntryKind::File { .. }) if large(e) => {
                let header = header_bytes(e)?;
                prior
                    .reusable(e, &header)
                    .map(|(refs, crc32c)| Source::Reused {
                        refs,
                        header,
                        crc32c,
                    })
            }
            _ => None,
        };
        sources.push(reused.unwrap_or(Source::Read { cut: large(e) }));
    }
    let files: Vec<(Entry, Option<u32>)> = entries
        .iter()
        .zip(&sources)
        .filter_map(|(e, s)| match (&e.kind, s) {
            (EntryKind::File { first_block }, Source::Read { .. }) => {
                Some((e.clone(), *first_block))
            }
            _ => None,
        })
        .collect();
    let mut shares: Vec<Vec<(Entry, Option<u32>)>> = vec![Vec::new(); jobs];
    for (i, f) in files.into_iter().enumerate() {
        shares[i % jobs].push(f);
    }
    let mut rxs = Vec::new();
    let mut readers = Vec::new();
    for share in shares {
        let (tx, rx) = sync_channel(PIECES_AHEAD);
        rxs.push(rx);
        readers.push(std::thread::spawn(move || {
            reader(share, start, checksums, tx)
        }));
    }
    let mut tar = tar::Builder::new(BufWriter::with_capacity(READ_BYTES, SegmentWriter(out)));
    let mut report = PgdataReport::default();
    let mut listed = Vec::new();
    let mut file_no = 0usize;
    for (entry, source) in entries.iter().zip(sources) {
        match (&entry.kind, source) {
            (EntryKind::Dir, _) => {
                let mut h = header_for(entry, tar::EntryType::Directory, 0);
                tar.append_data(&mut h, format!("{}/", entry.name), std::io::empty())
                    .map_err(stream_failed)?;
            }
            (EntryKind::Symlink(target), _) => {
                let mut h = header_for(entry, tar::EntryType::Symlink, 0);
                tar.append_link(&mut h, &entry.name, target)
                    .map_err(stream_failed)?;
            }
            (
                EntryKind::File { .. },
                Source::Reused {
                    refs,
                    header,
                    crc32c,
                },
            ) => {
                cut(&mut tar, Segment::Cut)?;
                let len = refs.iter().map(|r| u64::from(r.len)).sum();
                tar.get_mut()
                    .get_ref()
                    .send(Segment::Reuse {
                        refs: refs.to_vec(),
                        header,
                        len,
                    })
                    .map_err(stream_failed)?;
                let stamp = opts
                    .prior
                    .as_ref()
                    .and_then(|p| p.files.get(&entry.name))
                    .map(|p| p.stamp)
                    .expect("a reused file is in the prior backup");
                report.stamps.insert(entry.name.clone(), stamp);
                listed.push(ManifestFile {
                    path: entry.name.clone(),
                    size: entry.size,
                    mtime: entry.mtime,
                    crc32c,
                });
            }
            (EntryKind::File { .. }, Source::Read { cut: around }) => {
                let rx = &rxs[file_no % jobs];
                file_no += 1;
                let (size, stamp, opened) = match rx.recv() {
                    Ok(Piece::Opened {
                        size,
                        stamp,
                        header,
                    }) => (
                        size,
                        stamp,
                        Entry {
                            mode: header.mode,
                            mtime: header.mtime,
                            uid: header.uid,
                            gid: header.gid,
                            ..entry.clone()
                        },
                    ),
                    Ok(Piece::Vanished) => {
                        report.files_vanished += 1;
                        continue;
                    }
                    Ok(Piece::Failed(e)) => return Err(e),
                    _ => {
                        return Err(Error::External(format!(
                            "The reader of {} stopped",
                            entry.name
                        )))
                    }
                };
                if around {
                    // A relation file's pages stay where they are: its chunks are cut
                    // at fixed offsets, so each covers the same pages every day.
                    let relation = matches!(
                        entry.kind,
                        EntryKind::File {
                            first_block: Some(_)
                        }
                    );
                    cut(
                        &mut tar,
                        if relation {
                            let previous = opts
                                .prior
                                .as_ref()
                                .and_then(|p| p.files.get(&entry.name))
                                .map(|p| p.refs.clone())
                                .unwrap_or_default();
                            Segment::FixedCut { previous }
                        } else {
                            Segment::Cut
                        },
                    )?;
                }
                let mut h = header_for(&opened, tar::EntryType::Regular, size);
                let mut bytes = FileBytes {
                    rx,
                    buf: Vec::new(),
                    pos: 0,
                    done: None,
                    failed: None,
                };
                let appended = tar.append_data(&mut h, &entry.name, &mut bytes);
                if let Some(e) = bytes.failed.take() {
                    return Err(e);
                }
                appended.map_err(stream_failed)?;
                let (crc32c, bad) = bytes.done.take().ok_or_else(|| {
                    Error::External(format!("The reader of {} stopped", entry.name))
                })?;
                if around {
                    cut(&mut tar, Segment::Cut)?;
                    report
                        .stamps
                        .insert(entry.name.clone(), FileStamp { crc32c, ..stamp });
                }
                report
                    .bad_pages
                    .extend(bad.into_iter().map(|block| BadPage {
                        path: entry.name.clone(),
                        block,
                    }));
                listed.push(ManifestFile {
                    path: entry.name.clone(),
                    size,
                    mtime: opened.mtime,
                    crc32c,
                });
            }
        }
    }
    drop(rxs);
    for r in readers {
        let _ = r.join();
    }
    if let Some(entry) = control {
        let bytes = std::fs::read(&entry.path).map_err(io_err("read", &entry.path))?;
        let mut h = header_for(&entry, tar::EntryType::Regular, bytes.len() as u64);
        tar.append_data(&mut h, &entry.name, &bytes[..])
            .map_err(stream_failed)?;
        listed.push(ManifestFile {
            path: entry.name.clone(),
            size: bytes.len() as u64,
            mtime: entry.mtime,
            crc32c: crc32c::crc32c(&bytes),
        });
    }
    let stopped = stop_backup(&mut session)?;
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let mut extra = vec![("backup_label", stopped.label.into_bytes())];
    if !stopped.tablespace_map.is_empty() {
        extra.push(("tablespace_map", stopped.tablespace_map.into_bytes()));
    }
    for (name, bytes) in &extra {
        let (mut h, f) = small_file(name, bytes, now);
        tar.append_data(&mut h, name, &bytes[..])
            .map_err(stream_failed)?;
        listed.push(f);
    }
    let manifest = backup_manifest(&listed, timeline, start, stopped.lsn);
    let (mut h, _) = small_file("backup_manifest", &manifest, now);
    tar.append_data(&mut h, "backup_manifest", &manifest[..])
        .map_err(stream_failed)?;
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(stream_failed)?;
    Ok(report)
}

fn stop_backup(session: &mut Session) -> Result<Stopped> {
    // Waits until the backup's last WAL segment is archived, as pg_basebackup does:
    // the backup is usable only with it.
    let line = session.query(
        "SELECT lsn, encode(convert_to(labelfile, 'UTF8'), 'hex'), \
         encode(convert_to(coalesce(spcmapfile, ''), 'UTF8'), 'hex') FROM pg_backup_stop(true);",
    )?;
    let f = parse_row(&line, 3)?;
    Ok(Stopped {
        lsn: Lsn::parse(f[0])?,
        label: hex_text(f[1])?,
        tablespace_map: hex_text(f[2])?,
    })
}

impl PgdataBackup {
    /// Starts a base backup of the server `opts.conn` reaches, reading its data
    /// directory `opts.pgdata` with `opts.jobs` readers. Returns the tar stream to
    /// store; [`PgdataBackup::finish`] says whether it is whole.
    ///
    /// Errors: `InvalidInput` when `opts.pgdata` is not the data directory of that
    /// server (their system identifiers differ);
    /// `External` when psql cannot start or `pg_backup_start` fails; `Io` when the
    /// directory cannot be walked.
    pub fn start(opts: &PgdataOptions) -> Result<(PgdataBackup, Receiver<Segment>)> {
        let on_disk = super::system_identifier_of(&opts.pgdata)?;
        let mut session = Session::open(&opts.conn)?;
        let line = session.query(
            "SELECT system_identifier, pg_is_in_recovery(), current_setting('data_checksums') \
             FROM pg_control_system();",
        )?;
        let f = parse_row(&line, 3)?;
        let server_id: u64 = f[0].parse().unwrap_or(0);
        if server_id != on_disk {
            return Err(Error::InvalidInput(format!(
                "{} is not the data directory of the server pgvault connected to: its system \
                 identifier is {on_disk}, the server's {server_id}",
                opts.pgdata.display()
            )));
        }
        // A standby works too: its backup_label says so, pg_backup_stop returns the
        // last replayed location as the end (waiting for its archiving only under
        // archive_mode = always), and the primary's archive brings the WAL.
        let checksums = f[2] == "on";
        let line = session.query(
            "SELECT pg_backup_start('pgvault', true), \
             (SELECT timeline_id FROM pg_control_checkpoint());",
        )?;
        let f = parse_row(&line, 2)?;
        let start = Lsn::parse(f[0])?;
        let timeline: u32 = f[1].parse().unwrap_or(1);
        // Walked after the start: whatever is created later comes from the WAL.
        let mut entries = Vec::new();
        walk_dir(&opts.pgdata, "", true, false, &mut entries)?;
        // pg_control goes last, as pg_basebackup sends it: recovery of a backup taken
        // on a standby ends where the copied pg_control's minimum recovery point says,
        // which is right only if it was read after every other file.
        let control = entries
            .iter()
            .position(|e| e.name == CONTROL_FILE)
            .map(|i| entries.remove(i));
        let (tx, rx) = sync_channel(8);
        let opts = opts.clone();
        let maker = std::thread::spawn(move || {
            make_stream(
                session,
                (entries, control),
                &opts,
                start,
                timeline,
                checksums,
                tx,
            )
        });
        Ok((PgdataBackup { maker: Some(maker) }, rx))
    }

    /// Waits for the stream's maker and returns what it found.
    ///
    /// Errors: the first failure of a reader, the stream or `pg_backup_stop`.
    pub fn finish(mut self) -> Result<PgdataReport> {
        self.maker
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| Error::External("The base backup's stream maker panicked".into()))?
    }
}
