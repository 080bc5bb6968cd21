//! `snapshots`, `cat` and `index rebuild`: reading what the repository holds.

use std::io::Write;
use std::sync::Arc;

use crate::dump_data::TableData;
use crate::error::{Error, Result};
use crate::store::manifest::SnapshotManifest;
use crate::store::reader::{ChunkCache, FileReader};
use crate::store::table_reader::TableCopyReader;

use super::dump_files::{DumpFiles, ScriptFile};
pub use crate::pg::restore_script::ScriptKind;
use crate::store::writer::Progress;
use crate::store::Repository;

/// Every backup point, oldest first; only those of `db` when given.
///
/// Errors: `Corrupt` when a manifest fails authentication; backend errors.
pub async fn list(repo: &Repository, db: Option<&str>) -> Result<Vec<SnapshotManifest>> {
    let mut snaps = repo.snapshots().await?;
    if let Some(db) = db {
        snaps.retain(|s| s.db == db);
    }
    Ok(snaps)
}

/// The backup point `id` (or unique id prefix) names.
///
/// Errors: as [`Repository::resolve_snapshot`].
pub async fn find(repo: &Repository, id: &str) -> Result<SnapshotManifest> {
    repo.resolve_snapshot(id).await
}

/// Writes a backup point's file to `out`, byte for byte as it was stored.
///
/// Errors: as [`Repository::cat`].
pub async fn cat(
    repo: &Repository,
    snapshot: &SnapshotManifest,
    out: &mut (dyn Write + Send),
    progress: Arc<dyn Progress>,
) -> Result<u64> {
    repo.cat(snapshot, out, progress).await
}

/// Decoded chunks a table read keeps, so that frames crossing a chunk boundary do not
/// load it twice.
const TABLE_READ_CACHE_BYTES: usize = 64 << 20;

/// How much COPY text one read asks for.
const TABLE_READ_STEP: usize = 1 << 20;

/// The table of dump `snapshot` that `name` names: `schema.table`, or `table`
/// alone when one schema has it.
///
/// Errors: `InvalidInput` when the snapshot records no table positions (a base
/// backup, a compressed dump, one stored before pgvault recorded them) or `name`
/// fits tables of several schemas; `NotFound` when no table fits.
pub fn find_table<'a>(snapshot: &'a SnapshotManifest, name: &str) -> Result<&'a TableData> {
    let contents = snapshot.dump_contents.as_ref().ok_or_else(|| {
        Error::InvalidInput(format!(
            "Snapshot {} records where no table lies (a base backup, a gzipped SQL dump, a \
             dump compressed with lz4 or zstd, or one stored by an older pgvault): use \
             pg_restore -t on its file",
            snapshot.short_id()
        ))
    })?;
    let exact: Vec<&TableData> = contents
        .tables
        .iter()
        .filter(|t| t.qualified_name() == name)
        .collect();
    let fits = if exact.is_empty() {
        contents.tables.iter().filter(|t| t.table == name).collect()
    } else {
        exact
    };
    match fits.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NotFound {
            what: format!("Table {name} (as schema.table) with data"),
            location: format!("snapshot {}", snapshot.short_id()),
        }),
        several => Err(Error::InvalidInput(format!(
            "Table {name} is in several schemas of snapshot {}: name one of {}",
            snapshot.short_id(),
            several
                .iter()
                .map(|t| t.qualified_name())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Writes one table's COPY text from dump `snapshot` to `out`, reading only the
/// chunks that hold it. Returns the number of bytes written.
///
/// Errors: as [`find_table`]; `NotFound` or `Corrupt` naming the snapshot and chunk;
/// `Corrupt` when the dump's frames do not match its manifest; `Io` when `out` fails.
pub async fn cat_table(
    repo: &Repository,
    snapshot: &SnapshotManifest,
    name: &str,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let table = find_table(snapshot, name)?.clone();
    let contents = snapshot
        .dump_contents
        .as_ref()
        .expect("find_table found contents");
    let dump = dump_reader(repo, snapshot);
    let reader = TableCopyReader::new(dump, table, contents);
    copy_out(
        reader.len(),
        &reader.what(),
        async |at| reader.read_at(at, TABLE_READ_STEP).await,
        out,
    )
    .await
}

/// Writes dump `snapshot` as the SQL script `pg_restore -f -` prints (or, for
/// [`ScriptKind::SchemaOnly`], `pg_restore -s -f -`) to `out`, reading the table
/// data from the dump's chunks as it goes. Returns the number of bytes written.
///
/// Errors: `InvalidInput` when the snapshot is no dump or no script can be made of
/// it (the reason is logged); `NotFound` or `Corrupt` naming the snapshot and
/// chunk; `Io` when `out` fails.
pub async fn cat_script(
    repo: &Repository,
    snapshot: &SnapshotManifest,
    kind: ScriptKind,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    if snapshot.kind != crate::store::SnapshotKind::Dump {
        return Err(Error::InvalidInput(format!(
            "Snapshot {} is a base backup, not a dump: it has no SQL script",
            snapshot.short_id()
        )));
    }
    if !snapshot.is_custom_archive() {
        return Err(Error::InvalidInput(format!(
            "Snapshot {} is a gzipped SQL dump: its file is the script (pgvault cat {} | \
             gunzip)",
            snapshot.short_id(),
            snapshot.short_id()
        )));
    }
    let dump = dump_reader(repo, snapshot);
    let layout = DumpFiles::default()
        .script(&dump, snapshot, kind)
        .await?
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "No SQL script can be made of snapshot {} (the reason is above); \
                 pg_restore -f - reads its file",
                snapshot.short_id()
            ))
        })?;
    let file = ScriptFile::open(
        layout,
        dump,
        format!("The SQL script of snapshot {}", snapshot.id),
    );
    copy_out(
        file.len(),
        file.what(),
        async |at| file.read_at(at, TABLE_READ_STEP).await,
        out,
    )
    .await
}

/// A reader of dump `snapshot`'s file with a cache of its own.
fn dump_reader(repo: &Repository, snapshot: &SnapshotManifest) -> Arc<FileReader> {
    Arc::new(FileReader::new(
        repo.clone(),
        Arc::new(snapshot.clone()),
        Arc::new(ChunkCache::new(TABLE_READ_CACHE_BYTES)),
    ))
}

/// Writes `len` bytes that `read` gives from each offset on to `out`.
async fn copy_out(
    len: u64,
    what: &str,
    read: impl AsyncFn(u64) -> Result<Vec<u8>>,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let mut written = 0u64;
    while written < len {
        let data = read(written).await?;
        if data.is_empty() {
            return Err(Error::Corrupt(format!(
                "{what} ended after {written} of {len} bytes"
            )));
        }
        out.write_all(&data)
            .map_err(|e| Error::io("Cannot write output", e))?;
        written += data.len() as u64;
    }
    out.flush()
        .map_err(|e| Error::io("Cannot write output", e))?;
    Ok(written)
}

/// Recreates this machine's index from the repository; returns the chunks and
/// snapshots indexed.
///
/// Errors: as [`Repository::rebuild_index`].
pub async fn rebuild_index(repo: &Repository) -> Result<(usize, usize)> {
    repo.rebuild_index().await
}
