//! `snapshots`, `cat` and `index rebuild`: reading what the repository holds.

use std::io::Write;
use std::sync::Arc;

use crate::dump_data::TableData;
use crate::error::{Error, Result};
use crate::store::manifest::SnapshotManifest;
use crate::store::reader::{ChunkCache, FileReader};
use crate::store::table_reader::TableCopyReader;
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
            "Snapshot {} records where no table lies (a base backup, a compressed dump, \
             or one stored by an older pgvault): use pg_restore -t on its file",
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
    let int_size = snapshot
        .dump_contents
        .as_ref()
        .map(|c| c.int_size)
        .expect("find_table found contents");
    let dump = Arc::new(FileReader::new(
        repo.clone(),
        Arc::new(snapshot.clone()),
        Arc::new(ChunkCache::new(TABLE_READ_CACHE_BYTES)),
    ));
    let reader = TableCopyReader::new(dump, table, int_size);
    let mut written = 0u64;
    while written < reader.len() {
        let data = reader.read_at(written, TABLE_READ_STEP).await?;
        if data.is_empty() {
            return Err(Error::Corrupt(format!(
                "{} ended after {written} of {} bytes",
                reader.what(),
                reader.len()
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
