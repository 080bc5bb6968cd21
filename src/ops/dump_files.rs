//! The files derived from a dump, which the mount shows beside it and `cat --sql`
//! prints: `toc.txt`, `<db>.sql` and `schema.sql`, made from the dump's table of
//! contents (and, for `<db>.sql`, the places of its tables' data and its large
//! objects) once, and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::dump_data::{DumpContents, TableData};
use crate::error::Result;
use crate::pg::custom_format::{DumpInspector, Toc};
use crate::pg::restore_script::{self, Piece, ScriptKind};
use crate::store::reader::FileReader;
use crate::store::table_reader::{read_large_objects, TableCopyReader};
use crate::store::SnapshotManifest;

/// How much of a dump is read at a time to find the end of its table of contents.
const TOC_READ_BYTES: usize = 256 << 10;

/// Large objects bigger than this in all are not turned into `lowrite` calls in
/// memory: such a dump gets no `<db>.sql`.
const LARGE_OBJECTS_MAX_BYTES: u64 = 64 << 20;

/// What has been derived from each dump; `None` where it cannot be (logged once).
#[derive(Debug, Default)]
pub struct DumpFiles {
    tocs: Mutex<HashMap<String, Option<Arc<Toc>>>>,
    toc_texts: Mutex<HashMap<String, Option<Arc<Vec<u8>>>>>,
    scripts: Mutex<HashMap<ScriptKey, Option<Arc<ScriptLayout>>>>,
}

/// A script: the snapshot id of its dump, and which one.
type ScriptKey = (String, ScriptKind);

/// A script as pieces of text and table data, each at its offset.
#[derive(Debug)]
pub struct ScriptLayout {
    parts: Vec<(u64, Part)>,
    len: u64,
}

#[derive(Debug)]
enum Part {
    Text(Arc<Vec<u8>>),
    /// A table's whole data block payload; the dump's contents, which say how it
    /// is written.
    Table(TableData, Arc<DumpContents>),
}

impl Part {
    fn len(&self) -> u64 {
        match self {
            Part::Text(t) => t.len() as u64,
            Part::Table(t, _) => t.copy_len_bytes + t.trailer_len_bytes,
        }
    }
}

impl ScriptLayout {
    /// The script's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the script is empty (it never is).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl DumpFiles {
    /// Whether dump `id`'s table of contents is known to be unreadable.
    pub fn toc_failed(&self, id: &str) -> bool {
        matches!(self.tocs.lock().expect("tocs lock").get(id), Some(None))
    }

    /// Whether dump `id`'s script of `kind` is known not to be makeable.
    pub fn script_failed(&self, id: &str, kind: ScriptKind) -> bool {
        self.toc_failed(id)
            || matches!(
                self.scripts
                    .lock()
                    .expect("scripts lock")
                    .get(&(id.to_string(), kind)),
                Some(None)
            )
    }

    pub fn cached_toc_text(&self, id: &str) -> Option<Arc<Vec<u8>>> {
        self.toc_texts
            .lock()
            .expect("toc lock")
            .get(id)
            .cloned()
            .flatten()
    }

    pub fn cached_script(&self, id: &str, kind: ScriptKind) -> Option<Arc<ScriptLayout>> {
        self.scripts
            .lock()
            .expect("scripts lock")
            .get(&(id.to_string(), kind))
            .cloned()
            .flatten()
    }

    /// Dump `id`'s table of contents, read from the head of the dump `reader`
    /// reads; `None` when it cannot be read (logged once).
    ///
    /// Errors: the store's, which are tried again next time.
    async fn toc(&self, reader: &FileReader, id: &str) -> Result<Option<Arc<Toc>>> {
        if let Some(known) = self.tocs.lock().expect("tocs lock").get(id) {
            return Ok(known.clone());
        }
        let mut inspector = DumpInspector::keeping_toc();
        let mut at = 0u64;
        let toc = loop {
            if let Some(toc) = inspector.take_toc() {
                break Ok(toc);
            }
            let data = reader.read_at(at, TOC_READ_BYTES).await?;
            if data.is_empty() {
                break Err("it ends inside its table of contents".to_string());
            }
            at += data.len() as u64;
            if let Err(e) = inspector.feed(&data) {
                break Err(e.to_string());
            }
        };
        let toc = toc
            .map_err(|why| {
                tracing::warn!(
                    "The files made from snapshot {id}'s table of contents are left out: it cannot be read ({why})"
                )
            })
            .ok()
            .map(Arc::new);
        self.tocs
            .lock()
            .expect("tocs lock")
            .insert(id.to_string(), toc.clone());
        Ok(toc)
    }

    /// Dump `id`'s `toc.txt`; `None` when its table of contents cannot be read.
    ///
    /// Errors: the store's.
    pub async fn toc_text(&self, reader: &FileReader, id: &str) -> Result<Option<Arc<Vec<u8>>>> {
        if let Some(text) = self.cached_toc_text(id) {
            return Ok(Some(text));
        }
        let Some(toc) = self.toc(reader, id).await? else {
            return Ok(None);
        };
        let [sec, min, hour, mday, mon, year, _] = toc.header.created;
        let zone =
            crate::time::local_zone_abbreviation((year + 1900, mon + 1, mday, hour, min, sec))
                .unwrap_or_else(|| "UTC".into());
        let text = Arc::new(crate::pg::toc_listing::toc_listing(&toc, &zone));
        self.toc_texts
            .lock()
            .expect("toc lock")
            .insert(id.to_string(), Some(text.clone()));
        Ok(Some(text))
    }

    /// Dump `m`'s script of `kind`; `None` when it cannot be made (logged once).
    ///
    /// Errors: the store's.
    pub async fn script(
        &self,
        reader: &FileReader,
        m: &SnapshotManifest,
        kind: ScriptKind,
    ) -> Result<Option<Arc<ScriptLayout>>> {
        let key = (m.id.clone(), kind);
        if let Some(known) = self.scripts.lock().expect("scripts lock").get(&key) {
            return Ok(known.clone());
        }
        let Some(toc) = self.toc(reader, &m.id).await? else {
            return Ok(None);
        };
        let layout = match self.lay_out(reader, m, &toc, kind).await? {
            Ok(layout) => Some(Arc::new(layout)),
            Err(why) => {
                tracing::warn!(
                    "The SQL script{} of snapshot {} is left out: {why}",
                    if kind == ScriptKind::SchemaOnly {
                        " of the schema"
                    } else {
                        ""
                    },
                    m.id
                );
                None
            }
        };
        self.scripts
            .lock()
            .expect("scripts lock")
            .insert(key, layout.clone());
        Ok(layout)
    }

    async fn lay_out(
        &self,
        reader: &FileReader,
        m: &SnapshotManifest,
        toc: &Toc,
        kind: ScriptKind,
    ) -> Result<std::result::Result<ScriptLayout, String>> {
        let key = restore_script::restrict_key();
        let pieces = match restore_script::restore_script(toc, kind, &key) {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        let shared = m.dump_contents.clone().map(Arc::new);
        let mut parts = Vec::with_capacity(pieces.len());
        let mut len = 0u64;
        for piece in pieces {
            let part = match piece {
                Piece::Text(t) => Part::Text(Arc::new(t)),
                Piece::TableData(dump_id) => {
                    let Some(contents) = &shared else {
                        return Ok(Err("its data is compressed".into()));
                    };
                    let Some(table) = contents.tables.iter().find(|t| t.dump_id == dump_id) else {
                        return Ok(Err(format!("the data of dump ID {dump_id} was not found")));
                    };
                    Part::Table(table.clone(), contents.clone())
                }
                Piece::LargeObjects(dump_id) => {
                    let entry = toc.entries.iter().find(|e| e.dump_id == dump_id);
                    let (Some(offset), Some(contents)) =
                        (entry.and_then(|e| e.data_offset), &m.dump_contents)
                    else {
                        return Ok(Err("its large objects cannot be placed".into()));
                    };
                    let Some(objects) =
                        read_large_objects(reader, offset, contents, LARGE_OBJECTS_MAX_BYTES)
                            .await?
                    else {
                        return Ok(Err(format!(
                            "its large objects are bigger than {} MiB",
                            LARGE_OBJECTS_MAX_BYTES >> 20
                        )));
                    };
                    Part::Text(Arc::new(restore_script::large_objects_text(
                        objects.iter().map(|(oid, data)| (*oid, data.as_slice())),
                        restore_script::standard_conforming_strings(toc),
                    )))
                }
            };
            let n = part.len();
            parts.push((len, part));
            len += n;
        }
        Ok(Ok(ScriptLayout { parts, len }))
    }
}

/// One open script: its layout, and a reader per table.
#[derive(Debug)]
pub struct ScriptFile {
    layout: Arc<ScriptLayout>,
    tables: Vec<Option<TableCopyReader>>,
    what: String,
}

impl ScriptFile {
    pub fn open(layout: Arc<ScriptLayout>, dump: Arc<FileReader>, what: String) -> Self {
        let tables = layout
            .parts
            .iter()
            .map(|(_, p)| match p {
                Part::Table(t, contents) => {
                    Some(TableCopyReader::new(dump.clone(), t.clone(), contents).with_trailer())
                }
                Part::Text(_) => None,
            })
            .collect();
        ScriptFile {
            layout,
            tables,
            what,
        }
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The script's length.
    pub fn len(&self) -> u64 {
        self.layout.len
    }

    /// Whether the script is empty (it never is).
    pub fn is_empty(&self) -> bool {
        self.layout.len == 0
    }

    /// Up to `size` bytes at `offset`; fewer only at the end.
    ///
    /// Errors: those of [`TableCopyReader::read_at`].
    pub async fn read_at(&self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(size as u64).min(self.layout.len);
        let mut out = Vec::new();
        let mut pos = offset;
        let mut i = self
            .layout
            .parts
            .partition_point(|(start, _)| *start <= pos)
            .saturating_sub(1);
        while pos < end && i < self.layout.parts.len() {
            let (start, part) = &self.layout.parts[i];
            let part_end = start + part.len();
            if pos < part_end {
                let local = pos - start;
                let n = (end.min(part_end) - pos) as usize;
                match (part, &self.tables[i]) {
                    (Part::Text(t), _) => {
                        out.extend_from_slice(&t[local as usize..local as usize + n])
                    }
                    (Part::Table(..), Some(reader)) => {
                        let data = reader.read_at(local, n).await?;
                        if data.len() != n {
                            return Err(crate::error::Error::Corrupt(format!(
                                "{} gave {} bytes at {local}, not {n}",
                                reader.what(),
                                data.len()
                            )));
                        }
                        out.extend_from_slice(&data)
                    }
                    (Part::Table(..), None) => {
                        return Err(crate::error::Error::InvalidInput(format!(
                            "{} has a table part without a reader",
                            self.what
                        )))
                    }
                }
                pos += n as u64;
            }
            i += 1;
        }
        Ok(out)
    }
}
