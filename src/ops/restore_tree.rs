//! Writing a base backup's files into a data directory and its tablespace
//! locations from the file list its manifest keeps: several files at once, each
//! read from the repository at its own offset, and (`--delta`) over an existing
//! copy, rewriting only the files whose bytes differ and removing what the backup
//! does not hold.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::blocking::{joined, try_blocking};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::host::{probe_process, ProcessProbe};
use crate::store::manifest::{BaseFile, BaseFileKind, ChunkRef, SnapshotManifest};
use crate::store::reader::{ChunkCache, FileReader};
use crate::store::writer::Progress;
use crate::store::Repository;

/// How a base backup's files are written.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// Files written at once.
    pub jobs: usize,
    /// Write over an existing copy: leave alone files that already match, remove
    /// what the backup does not hold.
    pub delta: bool,
    /// Tablespace locations to use instead of the ones the backup recorded.
    pub tablespace_map: Vec<(PathBuf, PathBuf)>,
    /// Put every tablespace the map does not name under this directory (drills).
    pub tablespaces_under: Option<PathBuf>,
}

/// What writing the files did, with units in the names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files_written: u64,
    pub bytes_written: u64,
    /// Files a delta restore found already matching the backup.
    pub files_unchanged: u64,
    /// Files and directories a delta restore removed because the backup has none.
    pub paths_removed: u64,
}

/// Where each tablespace of `base` goes: its `--tablespace-map` location, a place
/// under `opts.tablespaces_under`, or where it lived.
///
/// Errors: `InvalidInput` when a map entry names no tablespace of the backup.
pub fn tablespace_targets(
    base: &SnapshotManifest,
    opts: &TreeOptions,
) -> Result<Vec<(u32, PathBuf)>> {
    let spaces = base
        .base
        .as_ref()
        .map(|b| b.tablespaces.clone())
        .unwrap_or_default();
    for (old, _) in &opts.tablespace_map {
        if !spaces.iter().any(|t| Path::new(&t.location) == old) {
            let known: Vec<&str> = spaces.iter().map(|t| t.location.as_str()).collect();
            return Err(Error::InvalidInput(format!(
                "--tablespace-map {}: base backup {} has no tablespace there (it has: {})",
                old.display(),
                base.short_id(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    spaces
        .iter()
        .map(|t| {
            let mapped = opts
                .tablespace_map
                .iter()
                .find(|(old, _)| Path::new(&t.location) == old)
                .map(|(_, new)| new.clone());
            let target = mapped
                .or_else(|| {
                    opts.tablespaces_under
                        .as_ref()
                        .map(|d| d.join(t.oid.to_string()))
                })
                .unwrap_or_else(|| PathBuf::from(&t.location));
            let target =
                std::path::absolute(&target).map_err(|e| Error::io_path("resolve", &target, e))?;
            Ok((t.oid, target))
        })
        .collect()
}

/// Checks, before anything is written, that the restore may write where it
/// would: for a fresh restore, PGDATA and every tablespace location are empty or
/// absent; for a delta restore, no server runs on PGDATA, and a PGDATA that holds
/// anything is a data directory.
///
/// Errors: `InvalidInput` saying which directory is in the way and why.
pub fn check_targets(pgdata: &Path, spaces: &[(u32, PathBuf)], delta: bool) -> Result<()> {
    if !delta {
        crate::pg::recovery::check_empty_pgdata(pgdata)?;
        for (oid, dir) in spaces {
            crate::pg::recovery::check_empty_pgdata(dir).map_err(|_| {
                Error::InvalidInput(format!(
                    "Refusing to restore tablespace {oid} into {}: the directory is not empty \
                     (use --tablespace-map OLD=NEW to put it elsewhere, or --delta)",
                    dir.display()
                ))
            })?;
        }
        return Ok(());
    }
    let pid_file = pgdata.join("postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file) {
        let pid: Option<u32> = text.lines().next().and_then(|l| l.trim().parse().ok());
        if let Some(pid) = pid {
            if !matches!(probe_process(pid), ProcessProbe::Gone) {
                return Err(Error::InvalidInput(format!(
                    "Refusing a delta restore into {}: a server (pid {pid}) is running on it; stop it first",
                    pgdata.display()
                )));
            }
        }
    }
    let holds_anything = std::fs::read_dir(pgdata).is_ok_and(|mut d| d.next().is_some());
    let looks_like_pgdata = ["PG_VERSION", "global", "base"]
        .iter()
        .any(|n| pgdata.join(n).exists());
    if holds_anything && !looks_like_pgdata {
        return Err(Error::InvalidInput(format!(
            "Refusing a delta restore into {}: it holds files but no PG_VERSION, global/ or base/, so it is no data directory",
            pgdata.display()
        )));
    }
    Ok(())
}

/// Where one entry of the stream goes.
enum Dest {
    Path(PathBuf),
    /// `pg_tblspc/<oid>`: a symlink to the tablespace's location.
    Link(PathBuf, PathBuf),
    Skip,
}

fn safe_relative(path: &str) -> Option<&Path> {
    let p = Path::new(path);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(p)
}

fn dest_of(f: &BaseFile, pgdata: &Path, spaces: &[(u32, PathBuf)]) -> Result<Dest> {
    // The backup's own manifest describes the backup, not the restored cluster,
    // whose files recovery will change.
    if f.path == "backup_manifest" || f.path.is_empty() {
        return Ok(Dest::Skip);
    }
    let rel = safe_relative(&f.path).ok_or_else(|| {
        Error::Corrupt(format!(
            "Base backup entry {:?} leaves the data directory",
            f.path
        ))
    })?;
    if let Some(rest) = f.path.strip_prefix("pg_tblspc/") {
        let (oid, below) = rest
            .split_once('/')
            .map_or((rest, None), |(o, b)| (o, Some(b)));
        if let Some((_, dir)) = spaces.iter().find(|(o, _)| o.to_string() == oid) {
            return Ok(match below {
                None => Dest::Link(pgdata.join(rel), dir.clone()),
                Some(b) => Dest::Path(dir.join(b)),
            });
        }
    }
    Ok(Dest::Path(pgdata.join(rel)))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| Error::io_path("chmod", path, e))
}

/// Refuses a file list in which an entry lies below one of its symlinks: writing it
/// would follow the link out of the data directory, as tar refuses to when it
/// extracts.
fn refuse_paths_through_links(files: &[BaseFile]) -> Result<()> {
    let links: HashSet<&str> = files
        .iter()
        .filter(|f| f.kind == BaseFileKind::Symlink)
        .map(|f| f.path.as_str())
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    for f in files {
        let mut at = f.path.as_str();
        while let Some((parent, _)) = at.rsplit_once('/') {
            if links.contains(parent) {
                return Err(Error::Corrupt(format!(
                    "Base backup entry {:?} lies below the symlink {parent:?}",
                    f.path
                )));
            }
            at = parent;
        }
    }
    Ok(())
}

/// Makes `at` a symlink to `target`, replacing whatever else is there.
fn ensure_symlink(at: &Path, target: &Path) -> Result<()> {
    if std::fs::read_link(at).ok().as_deref() != Some(target) {
        remove_any(at)?;
        std::os::unix::fs::symlink(target, at)
            .map_err(|e| Error::io_path("create the symlink", at, e))?;
    }
    Ok(())
}

/// Removes whatever is at `path`, without following a symlink.
fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| Error::io_path("remove", path, e))
}

/// Pieces a file is read in.
const PIECE_BYTES: usize = 1 << 20;

/// Bytes of a file written in one trip to the blocking pool.
const WRITE_BYTES: usize = 4 << 20;

/// Chunks kept for reads that share them (small files share a chunk).
const TREE_CACHE_BYTES: usize = 64 << 20;

/// Whether the file at `path` already holds exactly the bytes `f` has.
fn matches_already(path: &Path, f: &BaseFile) -> bool {
    let Some(want) = &f.hash else { return false };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.len() == f.size => {}
        _ => return false,
    }
    let mut hasher = blake3::Hasher::new();
    std::fs::File::open(path)
        .and_then(|file| hasher.update_reader(file).map(|_| ()))
        .is_ok()
        && hasher.finalize().to_hex().as_str() == want
}

/// The error for a stored stream that ends before file `f` does.
fn short_stream(reader: &FileReader, f: &BaseFile) -> Error {
    Error::Corrupt(format!(
        "The stored stream of {} ends inside {}",
        reader.what(),
        f.path
    ))
}

/// Writes file `f` whole at `path`, from the decoded chunks themselves (no copy of
/// its bytes on the way).
async fn write_file(reader: &FileReader, f: &BaseFile, path: &Path) -> Result<u64> {
    let at = path.to_path_buf();
    let file = try_blocking("creating a file", move || {
        if std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_file()) {
            remove_any(&at)?;
        }
        std::fs::File::create(&at).map_err(|e| Error::io_path("create", &at, e))
    })
    .await?;
    write_range(reader, f, &Arc::new(file), path, (f.offset, f.size, true)).await
}

/// Writes stream range `(a, len, whole)` of file `f` from the repository into
/// `file` (the file at `path`), straight from the decoded chunks, up to
/// [`WRITE_BYTES`] a trip to the blocking pool; an edge piece (`whole` false) only
/// where it differs from what the file holds. Returns the bytes written.
async fn write_range(
    reader: &FileReader,
    f: &BaseFile,
    file: &Arc<std::fs::File>,
    path: &Path,
    (a, len, whole): Range,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    reader.prefetch_stored(a, len.min(8 * PIECE_BYTES as u64));
    let mut written = 0u64;
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(WRITE_BYTES as u64);
        if done > 0 {
            reader.prefetch_stored(a + done + want, (8 * PIECE_BYTES) as u64);
        }
        let pieces = reader.stored_pieces(a + done, want).await?;
        if pieces.iter().map(|(_, r)| r.len() as u64).sum::<u64>() != want {
            return Err(short_stream(reader, f));
        }
        let (file, at, from) = (file.clone(), path.to_path_buf(), a + done - f.offset);
        written += try_blocking("writing a file", move || {
            let (mut into, mut wrote) = (from, 0u64);
            for (chunk, range) in &pieces {
                let data = &chunk[range.clone()];
                let same = !whole && {
                    let mut local = vec![0u8; data.len()];
                    file.read_exact_at(&mut local, into).is_ok() && local == data
                };
                if !same {
                    file.write_all_at(data, into)
                        .map_err(|e| Error::io_path("write", &at, e))?;
                    wrote += data.len() as u64;
                }
                into += data.len() as u64;
            }
            Ok(wrote)
        })
        .await?;
        done += want;
    }
    Ok(written)
}

/// Files at least this large are compared with the backup chunk by chunk; smaller
/// ones (most lie inside one chunk) by their blake3, which only they carry.
const CHUNKWISE_BYTES: u64 = BaseFile::HASHED_BELOW_BYTES;

/// A stream range of a file to bring over: start, length, and whether it is made
/// of whole chunks (else an edge piece, shared with the neighbours).
type Range = (u64, u64, bool);

/// The stream ranges of file `f` whose bytes the copy at `path` may lack: a chunk
/// wholly inside the file matches when the local bytes at its place have its id
/// (the repository's keyed hash); a piece of a chunk the file shares with its
/// neighbours is compared byte by byte in [`write_ranges`] instead.
fn changed_ranges(
    path: &Path,
    f: &BaseFile,
    chunks: &[(u64, ChunkRef)],
    key: &MasterKey,
) -> Vec<Range> {
    use std::os::unix::fs::FileExt;
    let local = std::fs::File::open(path).ok();
    let (start, end) = (f.offset, f.offset + f.size);
    let mut out: Vec<Range> = Vec::new();
    let mut buf = Vec::new();
    for &(cs, c) in chunks {
        let ce = cs + u64::from(c.len);
        let (a, b) = (cs.max(start), ce.min(end));
        if a >= b {
            continue;
        }
        let whole = cs >= start && ce <= end;
        if whole {
            if let Some(file) = &local {
                buf.resize(c.len as usize, 0);
                if file.read_exact_at(&mut buf, cs - start).is_ok() && key.chunk_id(&buf) == c.id {
                    continue;
                }
            }
        }
        match out.last_mut() {
            Some(last) if last.0 + last.1 == a && last.2 == whole => last.1 += b - a,
            _ => out.push((a, b - a, whole)),
        }
    }
    out
}

/// Writes `ranges` of file `f` from the repository into the copy at `path` (which
/// already has the file's length); an edge piece only where it differs. Returns
/// the bytes written.
async fn write_ranges(
    reader: &FileReader,
    f: &BaseFile,
    path: &Path,
    ranges: &[Range],
) -> Result<u64> {
    let at = path.to_path_buf();
    let file = try_blocking("opening a file", move || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&at)
            .map_err(|e| Error::io_path("open", &at, e))
    })
    .await?;
    let file = Arc::new(file);
    let mut written = 0u64;
    for &range in ranges {
        written += write_range(reader, f, &file, path, range).await?;
    }
    Ok(written)
}

/// Brings the copy at `path` to file `f`'s bytes, fetching only the chunks it
/// lacks. Returns the bytes written (0: it matched).
async fn update_file(
    reader: &FileReader,
    key: &MasterKey,
    f: &BaseFile,
    path: &Path,
) -> Result<u64> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        remove_any(path)?;
    }
    let chunks = reader.chunks_over(f.offset, f.size);
    let (p, f2, key) = (path.to_path_buf(), f.clone(), key.clone());
    let ranges = joined(
        "comparing a file",
        tokio::task::spawn_blocking(move || changed_ranges(&p, &f2, &chunks, &key)).await,
    )?;
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io_path("open", path, e))?;
    file.set_len(f.size)
        .map_err(|e| Error::io_path("resize", path, e))?;
    drop(file);
    write_ranges(reader, f, path, &ranges).await
}

fn set_mtime(path: &Path, mtime: u64) {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(when);
    }
}

/// Writes base backup `base` (which has a file list) into `pgdata` and its
/// tablespace locations `spaces` (from [`tablespace_targets`], checked with
/// [`check_targets`]). `progress` advances by the bytes of each file done.
///
/// Errors: `Corrupt` for an entry that would leave the data directory or a stream
/// shorter than its list; `Io` when a file cannot be written or removed; those of
/// reading the repository.
pub async fn write_tree(
    repo: &Repository,
    base: &SnapshotManifest,
    pgdata: &Path,
    spaces: &[(u32, PathBuf)],
    opts: &TreeOptions,
    progress: Arc<dyn Progress>,
) -> Result<TreeStats> {
    let files = &base.base.as_ref().expect("a base backup").files;
    let mut stats = TreeStats::default();
    std::fs::create_dir_all(pgdata).map_err(|e| Error::io_path("create", pgdata, e))?;
    set_mode(pgdata, 0o700)?;
    for (_, dir) in spaces {
        std::fs::create_dir_all(dir).map_err(|e| Error::io_path("create", dir, e))?;
        set_mode(dir, 0o700)?;
    }
    refuse_paths_through_links(files)?;
    let mut expected: HashSet<PathBuf> = HashSet::new();
    let mut work = Vec::new();
    // Directories and links first, a parent before its children: by depth, since a
    // pg_basebackup stream puts each tablespace before the pg_tblspc/ holding it.
    let mut by_depth: Vec<&BaseFile> = files.iter().collect();
    by_depth.sort_by_key(|f| f.path.matches('/').count());
    for f in by_depth {
        match dest_of(f, pgdata, spaces)? {
            Dest::Skip => {}
            Dest::Link(at, target) => {
                expected.insert(at.clone());
                ensure_symlink(&at, &target)?;
            }
            Dest::Path(p) => {
                expected.insert(p.clone());
                match f.kind {
                    BaseFileKind::Dir => {
                        if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
                            remove_any(&p)?;
                        }
                        std::fs::create_dir_all(&p).map_err(|e| Error::io_path("create", &p, e))?;
                        set_mode(&p, f.mode)?;
                    }
                    BaseFileKind::Symlink => {
                        ensure_symlink(&p, Path::new(f.link.as_deref().unwrap_or_default()))?;
                    }
                    BaseFileKind::File => work.push((f.clone(), p)),
                }
            }
        }
    }
    let reader = FileReader::new(
        repo.clone(),
        Arc::new(base.clone()),
        Arc::new(ChunkCache::new(TREE_CACHE_BYTES)),
    );
    // Workers pop from the end: largest first, so that one big file does not start
    // last and run alone.
    work.sort_by_key(|(f, _)| f.size);
    let files_total = work.len() as u64;
    progress.files(0, files_total);
    let queue = Arc::new(Mutex::new(work));
    let totals = Arc::new(Mutex::new(TreeStats::default()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.jobs.max(1) {
        let (queue, totals, reader, progress) = (
            queue.clone(),
            totals.clone(),
            reader.clone(),
            progress.clone(),
        );
        let delta = opts.delta;
        let key = repo.key().clone();
        workers.spawn(async move {
            loop {
                let next = queue.lock().expect("queue lock").pop();
                let Some((f, path)) = next else {
                    return Ok::<(), Error>(());
                };
                let written = if !delta {
                    Some(write_file(&reader, &f, &path).await?)
                } else if f.size >= CHUNKWISE_BYTES {
                    Some(update_file(&reader, &key, &f, &path).await?).filter(|&n| n > 0)
                } else {
                    let (f2, p2) = (f.clone(), path.clone());
                    let same = joined(
                        "comparing a file",
                        tokio::task::spawn_blocking(move || matches_already(&p2, &f2)).await,
                    )?;
                    match same {
                        true => None,
                        false => Some(write_file(&reader, &f, &path).await?),
                    }
                };
                let files_done = {
                    let mut t = totals.lock().expect("totals lock");
                    match written {
                        Some(n) => {
                            t.files_written += 1;
                            t.bytes_written += n;
                        }
                        None => t.files_unchanged += 1,
                    }
                    t.files_written + t.files_unchanged
                };
                set_mode(&path, f.mode)?;
                set_mtime(&path, f.mtime);
                progress.advance(f.size);
                progress.files(files_done, files_total);
            }
        });
    }
    let mut first_error = None;
    while let Some(done) = workers.join_next().await {
        let r = joined("restore worker", done).and_then(|r| r);
        if let Err(e) = r {
            // One failure stops the rest: the restore is unusable anyway.
            workers.abort_all();
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    {
        let t = totals.lock().expect("totals lock");
        stats.files_written = t.files_written;
        stats.bytes_written = t.bytes_written;
        stats.files_unchanged = t.files_unchanged;
    }
    if opts.delta {
        stats.paths_removed += remove_unexpected(pgdata, &expected, &|_| true)?;
        // In a tablespace location only PostgreSQL's own version directories: the
        // location may be a directory that holds other things too.
        for (_, dir) in spaces {
            stats.paths_removed +=
                remove_unexpected(dir, &expected, &|name| name.starts_with("PG_"))?;
        }
    }
    // A relocated tablespace: PostgreSQL re-creates pg_tblspc's links from this file
    // at the start of recovery, so it must name the new places.
    if !spaces.is_empty() {
        let map: String = spaces
            .iter()
            .map(|(oid, dir)| format!("{oid} {}\n", dir.display()))
            .collect();
        let path = pgdata.join("tablespace_map");
        std::fs::write(&path, map).map_err(|e| Error::io_path("write", &path, e))?;
    }
    Ok(stats)
}

/// Removes, below `root`, whatever `expected` does not name, among the entries of
/// `root` itself only those `ours` accepts; a symlink is removed, never followed.
/// Returns how many paths were removed.
fn remove_unexpected(
    root: &Path,
    expected: &HashSet<PathBuf>,
    ours: &dyn Fn(&str) -> bool,
) -> Result<u64> {
    let mut removed = 0;
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io_path("read", root, e)),
    };
    for e in rd {
        let e = e.map_err(|e| Error::io_path("read", root, e))?;
        let path = e.path();
        if !ours(&e.file_name().to_string_lossy()) {
            continue;
        }
        if !expected.contains(&path) {
            remove_any(&path)?;
            removed += 1;
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            removed += remove_unexpected(&path, expected, &|_| true)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: BaseFileKind) -> BaseFile {
        BaseFile {
            path: path.into(),
            kind,
            mode: 0o700,
            size: 0,
            mtime: 0,
            offset: 0,
            hash: None,
            link: (kind == BaseFileKind::Symlink).then(|| "/etc".into()),
            chunks: None,
            stamp: None,
        }
    }

    #[test]
    fn an_entry_below_a_symlink_is_refused() {
        let ok = [
            entry("base", BaseFileKind::Dir),
            entry("base/1", BaseFileKind::File),
            entry("pg_wal", BaseFileKind::Symlink),
        ];
        refuse_paths_through_links(&ok).unwrap();
        let bad = [
            entry("conf", BaseFileKind::Symlink),
            entry("conf/passwd", BaseFileKind::File),
        ];
        let e = refuse_paths_through_links(&bad).unwrap_err();
        assert!(e.to_string().contains("below the symlink \"conf\""), "{e}");
    }

    #[test]
    fn tablespace_entries_go_to_their_location_and_unknown_ones_stay_in_pgdata() {
        let spaces = [(16385, PathBuf::from("/srv/ts"))];
        let pgdata = Path::new("/pg");
        let f = entry("pg_tblspc/16385/PG_15_1/5/6", BaseFileKind::File);
        assert!(matches!(dest_of(&f, pgdata, &spaces).unwrap(),
            Dest::Path(p) if p == Path::new("/srv/ts/PG_15_1/5/6")));
        let link = entry("pg_tblspc/16385", BaseFileKind::Dir);
        assert!(matches!(dest_of(&link, pgdata, &spaces).unwrap(),
            Dest::Link(at, to) if at == Path::new("/pg/pg_tblspc/16385") && to == Path::new("/srv/ts")));
        let escape = entry("base/../../etc/x", BaseFileKind::File);
        assert!(dest_of(&escape, pgdata, &spaces).is_err());
        let manifest = entry("backup_manifest", BaseFileKind::File);
        assert!(matches!(
            dest_of(&manifest, pgdata, &spaces).unwrap(),
            Dest::Skip
        ));
    }
}
