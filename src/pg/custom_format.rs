//! Inspects PostgreSQL custom-format archives (`pg_dump -Fc`) as they stream by, and
//! fills in the table-of-contents data offsets that pg_dump leaves unset when it
//! writes to a pipe, so a piped dump restores like a `pg_dump -f` one
//! (`pg_restore -j`, fast `pg_restore -t`).
//!
//! Layout of archive versions 1.12 to 1.16 (PostgreSQL 9.0 to 17), as written by
//! `WriteHead`, `WriteToc` and the custom-format callbacks in `src/bin/pg_dump`:
//!
//! ```text
//! header  "PGDMP", version major/minor/revision, intSize, offSize, format (1 = custom),
//!         compression (an int zlib level before 1.15, one algorithm byte from 1.15),
//!         7 ints of creation time (struct tm), database name, server version,
//!         pg_dump version
//! TOC     int entry count, then per entry: dump ID, hadDumper, catalog OIDs, tag, desc,
//!         section, SQL strings, namespace, tablespace, table AM (1.14+), relkind
//!         (1.16+), owner, "false" (WITH OIDS), dependency IDs ended by a NULL string,
//!         and the data offset: a flag byte (1 not set, 2 set, 3 no data) and offSize
//!         little-endian bytes
//! data    per entry with data: block type byte (1 table data, 3 large objects), int
//!         dump ID, then chunks (int length, bytes) ended by a zero length; a
//!         large-object block repeats (int OID, chunks, 0) and ends with OID 0
//! ```
//!
//! An int is a sign byte (non-zero means negative) followed by intSize little-endian
//! magnitude bytes; a string is an int length (negative for NULL) and that many bytes.
//! Nothing follows the last data block.

use std::collections::HashMap;
use std::ops::Range;

use crate::dump_data::{split_int, DumpContents, FrameMark, TableData, MARK_EVERY_BYTES};
use crate::recreate::{zlib_level, Recreation, StoredStreamBuilder};

/// Largest header plus table of contents that [`DumpInspector::new`] will buffer.
///
/// The table of contents grows with the schema, not with the data: a million tables
/// make a few hundred megabytes. The limit stops a corrupt length field from making
/// the inspector buffer an entire multi-gigabyte stream while waiting for it.
pub const DEFAULT_MAX_TOC_LEN: usize = 1 << 30;

const MAGIC: &[u8; 5] = b"PGDMP";
/// Magic, three version bytes, intSize, offSize and format.
const FIXED_HEADER_LEN: usize = 11;
const ARCH_CUSTOM: u8 = 1;
const SUPPORTED_MINOR: Range<u8> = 12..17;
/// Archive minor version that replaced the zlib level int by an algorithm byte.
const MINOR_COMPRESSION_BYTE: u8 = 15;
/// Archive minor version that added the table access method string.
const MINOR_TABLEAM: u8 = 14;
/// Archive minor version that added the relkind int.
const MINOR_RELKIND: u8 = 16;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const K_OFFSET_POS_NOT_SET: u8 = 1;
const K_OFFSET_POS_SET: u8 = 2;
const K_OFFSET_NO_DATA: u8 = 3;
/// What pg_dump writes after a table's rows: the end-of-data line of a SQL script
/// and two blank lines.
const COPY_TERMINATOR: &[u8] = b"\\.\n\n\n";
/// How much of the input the header parser copies at a time: big enough that a TOC
/// of many small entries is not re-parsed once per feed, small enough that data
/// bytes copied past the end of the TOC cost nothing worth mentioning.
const HEAD_APPEND_STEP: usize = 64 * 1024;

/// What is wrong with an archive, or with a request about one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DumpFormatError {
    #[error("Input is empty: expected a pg_dump custom-format archive header at byte offset 0")]
    Empty,

    #[error("Not a pg_dump custom-format archive: no \"PGDMP\" magic at byte offset 0")]
    BadMagic,

    #[error(
        "Unsupported archive version {major}.{minor} at byte offset 5: only versions 1.12 to 1.16 are supported"
    )]
    UnsupportedVersion { major: u8, minor: u8 },

    #[error("Unsupported integer size {size} at byte offset 8: expected 1 to 8 bytes")]
    UnsupportedIntSize { size: u8 },

    #[error("Unsupported file offset size {size} at byte offset 9: expected 1 to 8 bytes")]
    UnsupportedOffsetSize { size: u8 },

    #[error("Archive format code {code} at byte offset 10 is not the custom format (code 1)")]
    NotCustomFormat { code: u8 },

    #[error("Archive is truncated at byte offset {offset}: it ends inside the {context}")]
    Truncated { offset: u64, context: String },

    #[error(
        "Archive is truncated at byte offset {offset}: {missing} TOC entries with data have no data block, the first being dump ID {dump_id}"
    )]
    MissingDataBlocks {
        offset: u64,
        missing: usize,
        dump_id: i32,
    },

    #[error(
        "Trailing garbage at byte offset {offset}: every TOC entry with data already had its data block"
    )]
    TrailingGarbage { offset: u64 },

    #[error("Corrupt archive at byte offset {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },

    #[error(
        "Table of contents exceeds the {limit}-byte limit: the item at byte offset {offset} ends at byte offset {end}"
    )]
    TocTooLarge { offset: u64, end: u64, limit: usize },

    #[error(
        "Head is {actual} bytes long, but the table of contents ends at byte offset {toc_end}"
    )]
    HeadLength { actual: usize, toc_end: u64 },

    #[error("Head differs from the inspected archive somewhere before byte offset {toc_end}")]
    HeadMismatch { toc_end: u64 },

    #[error(
        "Data offset {offset} of dump ID {dump_id} does not fit the {size}-byte offset field at byte offset {field}"
    )]
    OffsetTooLarge {
        offset: u64,
        dump_id: i32,
        size: u8,
        field: u64,
    },
}

fn corrupt(offset: u64, detail: impl Into<String>) -> DumpFormatError {
    DumpFormatError::Corrupt {
        offset,
        detail: detail.into(),
    }
}

/// Where an archive's data lives, as learned by [`DumpInspector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpLayout {
    /// Length of the whole archive in bytes.
    pub total_len: u64,
    /// Byte offset just after the table of contents, where the data blocks start.
    /// The archive's first `toc_end` bytes are the "head" that [`DumpLayout::patch_head`]
    /// rewrites.
    pub toc_end: u64,
    /// Archive format version (major, minor, revision); PostgreSQL 15 writes 1.14.0.
    pub version: (u8, u8, u8),
    /// The header's compression field, as stored. Before archive version 1.15 it is
    /// the zlib level (0 none, -1 zlib's default, 1 to 9); from 1.15 on it is the
    /// algorithm (0 none, 1 gzip, 2 lz4, 3 zstd). Either way 0 means the data chunks
    /// are stored as is; see [`DumpLayout::is_compressed`].
    pub compression: i32,
    /// Bytes of the header's creation time (seven ints of a `struct tm`): the only
    /// bytes outside the TOC offsets in which two dumps of an unchanged database differ.
    /// For PostgreSQL 15 (4-byte ints) this is 16..51.
    pub header_timestamp: Range<u64>,
    /// Number of entries in the table of contents.
    pub toc_entries: usize,
    /// Number of TOC entries whose offset flag says they have a data block.
    pub entries_with_data: usize,
    /// True when every entry with data already carried the flag "offset set" and the
    /// offset of its block, as in a `pg_dump -f` archive, so that
    /// [`DumpLayout::patch_head`] returns the head unchanged. Vacuously true for an
    /// archive without data.
    pub offsets_were_set: bool,
    /// The data blocks in archive order.
    pub data_blocks: Vec<DataBlock>,
    /// Each table's COPY text and where it lies; `None` for an archive compressed
    /// otherwise than with zlib (lz4, zstd), data that does not inflate, or names
    /// that are not UTF-8.
    pub contents: Option<DumpContents>,
    /// How the stored stream differs from the archive, when the inspector was made
    /// by [`DumpInspector::recreating`] and re-created some compressed table data.
    pub recreation: Option<Recreation>,
    off_size: u8,
    head_digest: u64,
    /// One per entry with data, in TOC order.
    patches: Vec<OffsetPatch>,
}

/// An archive's header, as `pg_restore -l` summarizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    pub version: (u8, u8, u8),
    pub int_size: u8,
    pub off_size: u8,
    /// As stored: a zlib level before archive version 1.15, an algorithm after.
    pub compression: i32,
    /// The creation time as pg_dump wrote it: a `struct tm`'s seconds, minutes,
    /// hours, day of month, month (0-11), year - 1900 and DST flag, in the dumping
    /// machine's zone (which the archive does not name).
    pub created: [i64; 7],
    pub dbname: Option<Vec<u8>>,
    pub server_version: Option<Vec<u8>>,
    pub dump_version: Option<Vec<u8>>,
    pub toc_entries: usize,
}

/// One table-of-contents entry; strings as stored (`None` for NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TocEntry {
    pub dump_id: i32,
    pub had_dumper: bool,
    pub table_oid: Option<Vec<u8>>,
    pub oid: Option<Vec<u8>>,
    pub tag: Option<Vec<u8>>,
    pub desc: Option<Vec<u8>>,
    pub section: i64,
    pub defn: Option<Vec<u8>>,
    pub drop_stmt: Option<Vec<u8>>,
    pub copy_stmt: Option<Vec<u8>>,
    pub namespace: Option<Vec<u8>>,
    pub tablespace: Option<Vec<u8>>,
    pub table_am: Option<Vec<u8>>,
    pub owner: Option<Vec<u8>>,
    /// Where its data block starts, when the table of contents says.
    pub data_offset: Option<u64>,
}

/// An archive's header and table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    pub header: ArchiveHeader,
    pub entries: Vec<TocEntry>,
}

/// One data block of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBlock {
    /// Dump ID of the TOC entry the block belongs to.
    pub dump_id: i32,
    /// Byte offset of the block's type byte: what pg_dump records in the TOC.
    pub offset: u64,
    /// Length of the block including its header and end marker.
    pub len: u64,
    /// True for a large-object (`BLOBS`) block, false for table data.
    pub large_objects: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OffsetPatch {
    dump_id: i32,
    /// Byte offset of the entry's offset flag byte.
    field: u64,
    data_offset: u64,
}

impl DumpLayout {
    /// True if the data chunks are compressed, so that their bytes differ from the
    /// COPY text whenever anything in the table changes.
    pub fn is_compressed(&self) -> bool {
        self.compression != 0
    }

    /// Patches the first `toc_end` bytes of the archive (passed in `head`, exactly
    /// `toc_end` bytes long) so that every TOC entry with data carries
    /// K_OFFSET_POS_SET and the offset of its data block, as pg_dump's
    /// `_CloseArchive` does for a seekable file. Returns the patched head (same length).
    ///
    /// # Errors
    ///
    /// - [`DumpFormatError::HeadLength`] if `head` is not exactly `toc_end` bytes long.
    /// - [`DumpFormatError::HeadMismatch`] if `head` is not the head of the archive that
    ///   was inspected (checked with a 64-bit FNV-1a digest, which catches mix-ups, not
    ///   forgeries).
    /// - [`DumpFormatError::OffsetTooLarge`] if a block offset does not fit the
    ///   archive's offset size (only possible with offset sizes below 8 bytes).
    pub fn patch_head(&self, head: &[u8]) -> Result<Vec<u8>, DumpFormatError> {
        if head.len() as u64 != self.toc_end {
            return Err(DumpFormatError::HeadLength {
                actual: head.len(),
                toc_end: self.toc_end,
            });
        }
        if fnv1a(head) != self.head_digest {
            return Err(DumpFormatError::HeadMismatch {
                toc_end: self.toc_end,
            });
        }
        let size = usize::from(self.off_size);
        let mut out = head.to_vec();
        for patch in &self.patches {
            if size < 8 && patch.data_offset >> (8 * size) != 0 {
                return Err(DumpFormatError::OffsetTooLarge {
                    offset: patch.data_offset,
                    dump_id: patch.dump_id,
                    size: self.off_size,
                    field: patch.field,
                });
            }
            // Fields lie inside the head: the digest matched the one taken over the
            // bytes they were parsed from.
            let at = patch.field as usize;
            out[at] = K_OFFSET_POS_SET;
            out[at + 1..at + 1 + size].copy_from_slice(&patch.data_offset.to_le_bytes()[..size]);
        }
        Ok(out)
    }
}

/// Incremental inspector: feed bytes in order as they arrive, in arbitrary-sized pieces.
///
/// Only the header and table of contents are buffered; data chunks are skipped by
/// length, so memory stays bounded by the TOC size whatever the archive size.
#[derive(Debug)]
pub struct DumpInspector {
    max_toc_len: usize,
    failed: Option<DumpFormatError>,
    phase: Phase,
}

// One per stream, moved once from head to data: its size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Phase {
    Head(HeadParser),
    Data(DataScanner),
}

impl Default for DumpInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl DumpInspector {
    /// An inspector that buffers at most [`DEFAULT_MAX_TOC_LEN`] bytes of head.
    pub fn new() -> Self {
        Self::with_max_toc_len(DEFAULT_MAX_TOC_LEN)
    }

    /// An inspector that rejects archives whose header plus table of contents is
    /// longer than `max_toc_len` bytes.
    pub fn with_max_toc_len(max_toc_len: usize) -> Self {
        DumpInspector {
            max_toc_len,
            failed: None,
            phase: Phase::Head(HeadParser::new()),
        }
    }

    /// An inspector that also keeps every table-of-contents entry, for
    /// [`DumpInspector::take_toc`].
    pub fn keeping_toc() -> Self {
        let mut me = Self::new();
        if let Phase::Head(head) = &mut me.phase {
            head.toc = Some(Vec::new());
        }
        me
    }

    /// The archive's header and table of contents, once fed completely to an
    /// inspector made by [`DumpInspector::keeping_toc`]; taken out, so a second
    /// call returns `None`.
    pub fn take_toc(&mut self) -> Option<Toc> {
        match &mut self.phase {
            Phase::Head(_) => None,
            Phase::Data(scan) => Some(Toc {
                header: scan.archive_header(),
                entries: scan.toc.take()?,
            }),
        }
    }

    /// An inspector that also builds the stream to store in the archive's place:
    /// compressed table data as its inflated text wherever that re-creates the
    /// original bytes (see [`crate::recreate`]). Take it with
    /// [`DumpInspector::take_stored`] after each feed.
    pub fn recreating() -> Self {
        let mut me = Self::new();
        if let Phase::Head(head) = &mut me.phase {
            head.recreating = true;
        }
        me
    }

    /// Appends to `into` the stored stream built since the last call (see
    /// [`DumpInspector::recreating`]); nothing until the table of contents is
    /// complete, then the head at once.
    pub fn take_stored(&mut self, into: &mut Vec<u8>) {
        if let Phase::Data(scan) = &mut self.phase {
            into.append(&mut scan.out);
        }
    }

    /// Number of bytes fed so far.
    pub fn bytes_fed(&self) -> u64 {
        match &self.phase {
            Phase::Head(head) => head.buf.len() as u64,
            Phase::Data(scan) => scan.pos,
        }
    }

    /// Where the table of contents ends, once it has been fed completely: a caller
    /// that keeps the head for [`DumpLayout::patch_head`] can stop keeping bytes there.
    pub fn toc_end(&self) -> Option<u64> {
        match &self.phase {
            Phase::Head(_) => None,
            Phase::Data(scan) => Some(scan.toc_end),
        }
    }

    /// Feeds the next bytes of the archive.
    ///
    /// # Errors
    ///
    /// Fails as soon as the bytes seen so far cannot start a supported archive
    /// ([`DumpFormatError::BadMagic`], [`DumpFormatError::UnsupportedVersion`],
    /// [`DumpFormatError::UnsupportedIntSize`], [`DumpFormatError::UnsupportedOffsetSize`],
    /// [`DumpFormatError::NotCustomFormat`]), when the header, TOC or a data block is
    /// malformed ([`DumpFormatError::Corrupt`]), when the TOC outgrows the limit
    /// ([`DumpFormatError::TocTooLarge`]), or when bytes follow the last data block
    /// ([`DumpFormatError::TrailingGarbage`]). A compressed archive is not an error.
    /// After an error the inspector is spent: every later call returns the same error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DumpFormatError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.feed_inner(bytes);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn feed_inner(&mut self, mut bytes: &[u8]) -> Result<(), DumpFormatError> {
        if let Phase::Head(head) = &mut self.phase {
            match head.feed(&mut bytes, self.max_toc_len)? {
                None => return Ok(()),
                Some((scan, leftover)) => {
                    self.phase = Phase::Data(scan);
                    if let Phase::Data(scan) = &mut self.phase {
                        scan.feed(&leftover)?;
                    }
                }
            }
        }
        if let Phase::Data(scan) = &mut self.phase {
            scan.feed(bytes)?;
        }
        Ok(())
    }

    /// Ends the stream and returns what was learned about the archive.
    ///
    /// # Errors
    ///
    /// - Any error an earlier [`DumpInspector::feed`] returned.
    /// - [`DumpFormatError::Empty`] if no bytes were fed.
    /// - [`DumpFormatError::Truncated`] if the stream ended inside the header, the
    ///   TOC or a data block.
    /// - [`DumpFormatError::MissingDataBlocks`] if it ended between blocks while TOC
    ///   entries with data still lacked theirs.
    pub fn finish(self) -> Result<DumpLayout, DumpFormatError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        match self.phase {
            Phase::Head(head) => Err(head.truncation()),
            Phase::Data(scan) => scan.finish(),
        }
    }
}

/// Why a parse attempt over the buffered head stopped.
enum Stop {
    /// The item starting at `at` needs the buffer to reach `need` bytes.
    Short {
        at: usize,
        need: usize,
    },
    Bad(DumpFormatError),
}

impl From<DumpFormatError> for Stop {
    fn from(err: DumpFormatError) -> Self {
        Stop::Bad(err)
    }
}

/// Reads archive primitives from a buffer that starts at archive offset 0.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let need = self.pos.saturating_add(n);
        if need > self.buf.len() {
            return Err(Stop::Short { at: self.pos, need });
        }
        let bytes = &self.buf[self.pos..need];
        self.pos = need;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }

    fn int(&mut self) -> Result<i64, Stop> {
        let at = self.pos;
        let (negative, magnitude) = split_int(self.take(1 + self.int_size)?);
        let value = i64::try_from(magnitude).map_err(|_| {
            corrupt(
                at as u64,
                format!("integer magnitude {magnitude} does not fit in 64 bits"),
            )
        })?;
        Ok(if negative { -value } else { value })
    }

    /// Skips a string; returns false for NULL, which ends dependency lists.
    fn string(&mut self) -> Result<bool, Stop> {
        Ok(self.string_bytes()?.is_some())
    }

    /// Takes a string's bytes; `None` for NULL.
    fn string_bytes(&mut self) -> Result<Option<&'a [u8]>, Stop> {
        let at = self.pos;
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        // A length beyond the address space can never be satisfied; saturating makes
        // it a Short that the TOC size limit turns into an error. The Short names the
        // string's start, so that a size-limit error points at the length field.
        match self.take(usize::try_from(len).unwrap_or(usize::MAX)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Stop::Short { need, .. }) => Err(Stop::Short { at, need }),
            Err(stop) => Err(stop),
        }
    }
}

/// Rejects a stream from its first bytes, so that feeding a multi-gigabyte SQL file
/// or tarball fails at once instead of after the TOC size limit.
fn check_prefix(prefix: &[u8]) -> Result<(), DumpFormatError> {
    let magic_len = prefix.len().min(MAGIC.len());
    if prefix[..magic_len] != MAGIC[..magic_len] {
        return Err(DumpFormatError::BadMagic);
    }
    if prefix.len() > 6 {
        let (major, minor) = (prefix[5], prefix[6]);
        if major != 1 || !SUPPORTED_MINOR.contains(&minor) {
            return Err(DumpFormatError::UnsupportedVersion { major, minor });
        }
    }
    if let Some(&size) = prefix.get(8) {
        if !(1..=8).contains(&size) {
            return Err(DumpFormatError::UnsupportedIntSize { size });
        }
    }
    if let Some(&size) = prefix.get(9) {
        if !(1..=8).contains(&size) {
            return Err(DumpFormatError::UnsupportedOffsetSize { size });
        }
    }
    if let Some(&code) = prefix.get(10) {
        if code != ARCH_CUSTOM {
            return Err(DumpFormatError::NotCustomFormat { code });
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Header {
    version: (u8, u8, u8),
    int_size: usize,
    off_size: usize,
    /// The creation time as pg_dump wrote it: a `struct tm`'s seconds, minutes,
    /// hours, day, month (0-11), year - 1900 and DST flag.
    created: [i64; 7],
    dbname: Option<Vec<u8>>,
    server_version: Option<Vec<u8>>,
    dump_version: Option<Vec<u8>>,
    compression: i32,
    timestamp: Range<usize>,
}

impl Header {
    /// Whether the data blocks are zlib streams: any level before archive version
    /// 1.15, the gzip algorithm from it on.
    fn is_zlib(&self) -> bool {
        if self.version.1 >= MINOR_COMPRESSION_BYTE {
            self.compression == 1
        } else {
            self.compression != 0
        }
    }
}

/// Parses the variable part of the header; the fixed prefix has passed [`check_prefix`].
fn parse_header(c: &mut Cursor<'_>) -> Result<Header, Stop> {
    let fixed = c.take(FIXED_HEADER_LEN)?;
    let version = (fixed[5], fixed[6], fixed[7]);
    let off_size = usize::from(fixed[9]);
    let compression = if version.1 >= MINOR_COMPRESSION_BYTE {
        i32::from(c.byte()?)
    } else {
        let at = c.pos;
        let level = c.int()?;
        i32::try_from(level).map_err(|_| {
            corrupt(
                at as u64,
                format!("compression level {level} is out of range"),
            )
        })?
    };
    let start = c.pos;
    let mut created = [0i64; 7];
    for field in &mut created {
        *field = c.int()?;
    }
    let timestamp = start..c.pos;
    let dbname = c.string_bytes()?.map(<[u8]>::to_vec);
    let server_version = c.string_bytes()?.map(<[u8]>::to_vec);
    let dump_version = c.string_bytes()?.map(<[u8]>::to_vec);
    Ok(Header {
        version,
        int_size: c.int_size,
        off_size,
        created,
        dbname,
        server_version,
        dump_version,
        compression,
        timestamp,
    })
}

#[derive(Debug)]
struct ParsedEntry {
    dump_id: i32,
    /// What the entry names: the object (tag), its kind (desc), its schema.
    tag: Option<String>,
    desc: Option<String>,
    namespace: Option<String>,
    toc: TocEntry,
    /// Offset of the data offset's flag byte.
    field: usize,
    flag: u8,
    stored_offset: u64,
}

fn parse_entry(c: &mut Cursor<'_>, header: &Header) -> Result<ParsedEntry, Stop> {
    let at = c.pos;
    let raw_id = c.int()?;
    let dump_id = i32::try_from(raw_id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| {
            corrupt(
                at as u64,
                format!("TOC entry has dump ID {raw_id}; dump IDs are positive 32-bit integers"),
            )
        })?;
    // hadDumper: the offset flag below says where data is; listings go by this.
    let had_dumper = c.int()? != 0;
    let bytes = |c: &mut Cursor<'_>| Ok::<_, Stop>(c.string_bytes()?.map(<[u8]>::to_vec));
    let table_oid = bytes(c)?;
    let oid = bytes(c)?;
    let tag_bytes = bytes(c)?;
    let desc_bytes = bytes(c)?;
    let section = c.int()?;
    let defn = bytes(c)?;
    let drop_stmt = bytes(c)?;
    let copy_stmt = bytes(c)?;
    let namespace_bytes = bytes(c)?;
    let tablespace = bytes(c)?;
    let minor = header.version.1;
    let table_am = if minor >= MINOR_TABLEAM {
        bytes(c)?
    } else {
        None
    };
    if minor >= MINOR_RELKIND {
        c.int()?;
    }
    let owner = bytes(c)?;
    c.string()?; // WITH OIDS, always "false" nowadays
    let text = |b: &Option<Vec<u8>>| b.as_ref().and_then(|b| String::from_utf8(b.clone()).ok());
    let (tag, desc, namespace) = (text(&tag_bytes), text(&desc_bytes), text(&namespace_bytes));
    while c.string()? {}
    let field = c.pos;
    let flag = c.byte()?;
    if !(K_OFFSET_POS_NOT_SET..=K_OFFSET_NO_DATA).contains(&flag) {
        return Err(corrupt(
            field as u64,
            format!("unknown data offset flag {flag} in TOC entry of dump ID {dump_id}"),
        )
        .into());
    }
    let raw = c.take(header.off_size)?;
    let stored_offset = raw
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Ok(ParsedEntry {
        dump_id,
        tag,
        desc,
        namespace,
        toc: TocEntry {
            dump_id,
            had_dumper,
            table_oid,
            oid,
            tag: tag_bytes,
            desc: desc_bytes,
            section,
            defn,
            drop_stmt,
            copy_stmt,
            namespace: namespace_bytes,
            tablespace,
            table_am,
            owner,
            data_offset: (flag == K_OFFSET_POS_SET).then_some(stored_offset),
        },
        field,
        flag,
        stored_offset,
    })
}

/// Buffers and parses the header and TOC.
///
/// Parsing restarts from the last complete item (the header, the entry count, or a
/// TOC entry) whenever the buffer reaches the length the previous attempt found
/// missing, so every byte is parsed a bounded number of times however the input is cut.
#[derive(Debug)]
struct HeadParser {
    buf: Vec<u8>,
    need: usize,
    parsed: usize,
    header: Option<Header>,
    toc_count: Option<usize>,
    entries_parsed: usize,
    data_entries: Vec<DataEntry>,
    /// Every entry, when kept.
    toc: Option<Vec<TocEntry>>,
    /// The inspector builds the stored stream (see [`DumpInspector::recreating`]).
    recreating: bool,
}

impl HeadParser {
    fn new() -> Self {
        HeadParser {
            buf: Vec::new(),
            need: FIXED_HEADER_LEN,
            parsed: 0,
            header: None,
            toc_count: None,
            entries_parsed: 0,
            data_entries: Vec::new(),
            toc: None,
            recreating: false,
        }
    }

    /// Consumes input until the TOC is complete; then hands back the data scanner and
    /// the bytes it copied beyond the TOC.
    fn feed(
        &mut self,
        input: &mut &[u8],
        limit: usize,
    ) -> Result<Option<(DataScanner, Vec<u8>)>, DumpFormatError> {
        while !input.is_empty() {
            let missing = self.need.saturating_sub(self.buf.len());
            let take = missing.max(HEAD_APPEND_STEP).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.header.is_none() {
                check_prefix(&self.buf[..self.buf.len().min(FIXED_HEADER_LEN)])?;
            }
            if self.buf.len() >= self.need && self.parse(limit)? {
                return Ok(Some(self.take_scanner()));
            }
        }
        Ok(None)
    }

    /// Parses as far as the buffer allows; true once the whole TOC is parsed.
    fn parse(&mut self, limit: usize) -> Result<bool, DumpFormatError> {
        loop {
            let int_size = match &self.header {
                Some(header) => header.int_size,
                None => usize::from(self.buf[8]),
            };
            let mut c = Cursor {
                buf: &self.buf,
                pos: self.parsed,
                int_size,
            };
            let step = match (&self.header, self.toc_count) {
                (None, _) => parse_header(&mut c).map(|h| self.header = Some(h)),
                (Some(_), None) => {
                    let at = c.pos;
                    c.int().and_then(|count| {
                        let count = usize::try_from(count).map_err(|_| {
                            corrupt(at as u64, format!("TOC entry count {count} is negative"))
                        })?;
                        self.toc_count = Some(count);
                        Ok(())
                    })
                }
                (Some(header), Some(count)) if self.entries_parsed < count => {
                    parse_entry(&mut c, header).map(|mut entry| {
                        self.entries_parsed += 1;
                        let toc = std::mem::take(&mut entry.toc);
                        if let Some(kept) = &mut self.toc {
                            kept.push(toc);
                        }
                        if entry.flag != K_OFFSET_NO_DATA {
                            self.data_entries.push(DataEntry::new(entry));
                        }
                    })
                }
                (Some(_), Some(_)) => return Ok(true),
            };
            let too_large = |at: usize, end: usize| DumpFormatError::TocTooLarge {
                offset: at as u64,
                end: end as u64,
                limit,
            };
            match step {
                Ok(()) if c.pos > limit => return Err(too_large(self.parsed, c.pos)),
                Ok(()) => self.parsed = c.pos,
                Err(Stop::Short { at, need }) => {
                    if need > limit {
                        return Err(too_large(at, need));
                    }
                    self.need = need;
                    return Ok(false);
                }
                Err(Stop::Bad(err)) => return Err(err),
            }
        }
    }

    fn take_scanner(&mut self) -> (DataScanner, Vec<u8>) {
        let toc_end = self.parsed;
        let leftover = self.buf.split_off(toc_end);
        let head = std::mem::take(&mut self.buf);
        let entries = std::mem::take(&mut self.data_entries);
        let by_id = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.dump_id, i))
            .collect();
        let header = self
            .header
            .clone()
            .expect("a parsed TOC follows a parsed header");
        let level = (header.version.1 < MINOR_COMPRESSION_BYTE)
            .then(|| zlib_level(header.compression))
            .flatten();
        let mut out = Vec::new();
        let stored = self.recreating.then(|| {
            // The head is stored as it is; the writer holds it for the offset patch.
            out.extend_from_slice(&head);
            Box::new(match level {
                Some(_) => StoredStreamBuilder::new(toc_end as u64),
                None => StoredStreamBuilder::passing_through(toc_end as u64),
            })
        });
        let scan = DataScanner {
            int_size: header.int_size,
            stored,
            out,
            level,
            pos: toc_end as u64,
            toc_end: toc_end as u64,
            state: ScanState::BlockStart,
            partial: [0; 9],
            partial_len: 0,
            entries,
            by_id,
            block_order: Vec::new(),
            blocks_done: 0,
            last_frame: Vec::new(),
            last_frame_len: 0,
            inflater: None,
            inflated_to_end: false,
            inflate_failed: false,
            scratch: Vec::new(),
            toc_entries: self.entries_parsed,
            toc: self.toc.take(),
            header,
            head_digest: fnv1a(&head),
        };
        (scan, leftover)
    }

    fn truncation(&self) -> DumpFormatError {
        if self.buf.is_empty() {
            return DumpFormatError::Empty;
        }
        let context = match (&self.header, self.toc_count) {
            (None, _) => "archive header".to_owned(),
            (Some(_), None) => "table of contents entry count".to_owned(),
            (Some(_), Some(count)) => {
                format!(
                    "table of contents (entry {} of {count})",
                    self.entries_parsed + 1
                )
            }
        };
        DumpFormatError::Truncated {
            offset: self.buf.len() as u64,
            context,
        }
    }
}

#[derive(Debug)]
struct DataEntry {
    dump_id: i32,
    tag: Option<String>,
    desc: Option<String>,
    namespace: Option<String>,
    /// Payload bytes of the frames seen so far, and marks on the way.
    copy_len: u64,
    trailer_len: u64,
    marks: Vec<FrameMark>,
    field: usize,
    flag: u8,
    stored_offset: u64,
    start: Option<u64>,
    end: Option<u64>,
    large_objects: bool,
}

impl DataEntry {
    fn new(entry: ParsedEntry) -> Self {
        DataEntry {
            dump_id: entry.dump_id,
            tag: entry.tag,
            desc: entry.desc,
            namespace: entry.namespace,
            copy_len: 0,
            trailer_len: 0,
            marks: Vec::new(),
            field: entry.field,
            flag: entry.flag,
            stored_offset: entry.stored_offset,
            start: None,
            end: None,
            large_objects: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ScanState {
    /// Between blocks: a block type byte or the end of the archive.
    BlockStart,
    /// Reading the dump ID of the block whose type byte is at `start`.
    BlockId { start: u64, large_objects: bool },
    /// Reading a chunk length; zero ends the table data or the current large object.
    ChunkLen { entry: usize },
    /// Skipping chunk bytes.
    Payload { entry: usize, remaining: u64 },
    /// Reading a large object's OID; zero ends the block.
    LoOid { entry: usize },
}

/// Follows the data blocks after the TOC without keeping their bytes.
#[derive(Debug)]
struct DataScanner {
    int_size: usize,
    pos: u64,
    toc_end: u64,
    state: ScanState,
    /// An int split across two feeds.
    partial: [u8; 9],
    partial_len: usize,
    /// TOC entries with data, in TOC order.
    entries: Vec<DataEntry>,
    by_id: HashMap<i32, usize>,
    block_order: Vec<usize>,
    blocks_done: usize,
    /// The current table's last frame, kept when it is short enough to be the
    /// COPY terminator, and its length.
    last_frame: Vec<u8>,
    last_frame_len: u64,
    /// The zlib stream of the compressed table whose block is being read.
    inflater: Option<flate2::Decompress>,
    inflated_to_end: bool,
    inflate_failed: bool,
    scratch: Vec<u8>,
    toc_entries: usize,
    toc: Option<Vec<TocEntry>>,
    header: Header,
    head_digest: u64,
    /// The stored stream being built, when recreating, and its bytes not yet taken.
    stored: Option<Box<StoredStreamBuilder>>,
    out: Vec<u8>,
    /// The zlib level the table data was compressed at, where the header says.
    level: Option<u8>,
}

impl DataScanner {
    /// Passes original bytes to the stored stream: as frames of the open span, or
    /// as bytes stored as they are.
    fn route(&mut self, bytes: &[u8]) {
        if let Some(b) = &mut self.stored {
            if b.is_open() {
                b.frames(bytes, &mut self.out);
            } else {
                b.raw(bytes, &mut self.out);
            }
        }
    }

    /// Takes the next int from `input` (passing its bytes to the stored stream), or
    /// stashes its first bytes and returns None when `input` ends inside it.
    fn next_int(&mut self, input: &mut &[u8]) -> Option<(bool, u64)> {
        let width = 1 + self.int_size;
        if self.partial_len == 0 && input.len() >= width {
            let (raw, rest) = input.split_at(width);
            *input = rest;
            self.pos += width as u64;
            self.route(raw);
            return Some(split_int(raw));
        }
        let take = (width - self.partial_len).min(input.len());
        self.route(&input[..take]);
        self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&input[..take]);
        self.partial_len += take;
        *input = &input[take..];
        self.pos += take as u64;
        if self.partial_len < width {
            return None;
        }
        self.partial_len = 0;
        Some(split_int(&self.partial[..width]))
    }

    fn feed(&mut self, mut input: &[u8]) -> Result<(), DumpFormatError> {
        while !input.is_empty() {
            match self.state {
                ScanState::Payload { entry, remaining } => {
                    let n = remaining.min(input.len() as u64);
                    self.route(&input[..n as usize]);
                    if self.header.compression == 0
                        && self.last_frame_len <= COPY_TERMINATOR.len() as u64
                        && !self.entries[entry].large_objects
                    {
                        self.last_frame.extend_from_slice(&input[..n as usize]);
                    }
                    if self.inflater.is_some() {
                        self.inflate(entry, &input[..n as usize]);
                    }
                    input = &input[n as usize..];
                    self.pos += n;
                    self.state = if n == remaining {
                        ScanState::ChunkLen { entry }
                    } else {
                        ScanState::Payload {
                            entry,
                            remaining: remaining - n,
                        }
                    };
                }
                ScanState::BlockStart => {
                    if self.blocks_done == self.entries.len() {
                        return Err(DumpFormatError::TrailingGarbage { offset: self.pos });
                    }
                    let large_objects = match input[0] {
                        BLK_DATA => false,
                        BLK_BLOBS => true,
                        other => {
                            return Err(corrupt(
                                self.pos,
                                format!("unknown data block type {other}"),
                            ));
                        }
                    };
                    self.state = ScanState::BlockId {
                        start: self.pos,
                        large_objects,
                    };
                    self.route(&input[..1]);
                    input = &input[1..];
                    self.pos += 1;
                }
                ScanState::BlockId {
                    start,
                    large_objects,
                } => {
                    let id = self.next_int(&mut input);
                    let Some(id) = id else {
                        break;
                    };
                    let entry = self.start_block(start, id, large_objects)?;
                    self.state = if large_objects {
                        ScanState::LoOid { entry }
                    } else {
                        ScanState::ChunkLen { entry }
                    };
                }
                ScanState::ChunkLen { entry } => {
                    let len = self.next_int(&mut input);
                    let Some((negative, len)) = len else {
                        break;
                    };
                    let frame_start = self.pos - 1 - self.int_size as u64;
                    self.note_frame(entry, frame_start, if negative { 0 } else { len });
                    if len == 0 {
                        self.state = if self.entries[entry].large_objects {
                            ScanState::LoOid { entry }
                        } else {
                            self.end_block(entry)
                        };
                    } else if negative {
                        let at = self.pos - 1 - self.int_size as u64;
                        return Err(corrupt(at, format!("negative chunk length -{len}")));
                    } else {
                        self.state = ScanState::Payload {
                            entry,
                            remaining: len,
                        };
                    }
                }
                ScanState::LoOid { entry } => {
                    let oid = self.next_int(&mut input);
                    let Some((_, oid)) = oid else {
                        break;
                    };
                    // OIDs above 2^31 arrive as negative ints; only zero ends the block.
                    self.state = if oid == 0 {
                        self.end_block(entry)
                    } else {
                        ScanState::ChunkLen { entry }
                    };
                }
            }
        }
        Ok(())
    }

    fn start_block(
        &mut self,
        start: u64,
        (negative, id): (bool, u64),
        large_objects: bool,
    ) -> Result<usize, DumpFormatError> {
        let at = start + 1;
        let known = if negative {
            None
        } else {
            i32::try_from(id).ok().and_then(|id| self.by_id.get(&id))
        };
        let sign = if negative { "-" } else { "" };
        let &entry = known.ok_or_else(|| {
            corrupt(
                at,
                format!("data block names dump ID {sign}{id}, which has no TOC entry with data"),
            )
        })?;
        let e = &mut self.entries[entry];
        if let Some(first) = e.start {
            return Err(corrupt(
                at,
                format!(
                    "second data block for dump ID {} (the first is at byte offset {first})",
                    e.dump_id
                ),
            ));
        }
        e.start = Some(start);
        e.large_objects = large_objects;
        if !large_objects
            && e.desc.as_deref() == Some("TABLE DATA")
            && self.header.is_zlib()
            && !self.inflate_failed
        {
            self.inflater = Some(flate2::Decompress::new(true));
            self.scratch.resize(64 << 10, 0);
            self.last_frame.clear();
            if let (Some(b), Some(level)) = (&mut self.stored, self.level) {
                b.open(level, self.int_size);
            }
        }
        self.block_order.push(entry);
        Ok(entry)
    }

    /// Records where table data frames lie, for reading one table alone later;
    /// only uncompressed archives, whose payloads are the COPY text itself.
    fn note_frame(&mut self, entry: usize, frame_start: u64, len: u64) {
        let e = &mut self.entries[entry];
        if e.large_objects {
            return;
        }
        if self.header.compression != 0 {
            // Compressed text is read from the start of the block: one mark there.
            if e.marks.is_empty() {
                e.marks.push(FrameMark {
                    dump_offset: frame_start,
                    copy_offset: 0,
                });
            }
            return;
        }
        if len > 0 {
            self.last_frame.clear();
            self.last_frame_len = len;
        }
        if e.marks
            .last()
            .is_none_or(|m| e.copy_len - m.copy_offset >= MARK_EVERY_BYTES)
        {
            e.marks.push(FrameMark {
                dump_offset: frame_start,
                copy_offset: e.copy_len,
            });
        }
        e.copy_len += len;
    }

    /// Inflates compressed table data as it streams by, to learn the length of
    /// its COPY text and its last bytes; a stream that does not inflate leaves the
    /// archive without table files.
    fn inflate(&mut self, entry: usize, mut input: &[u8]) {
        let Some(inflater) = &mut self.inflater else {
            return;
        };
        let e = &mut self.entries[entry];
        // Until the input is taken and a call leaves room in the output: a call that
        // fills it may hold text back, which would then surface only with the next
        // frame, or never after the block's last.
        let mut full = false;
        while !input.is_empty() || full {
            let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
            let status =
                inflater.decompress(input, &mut self.scratch, flate2::FlushDecompress::None);
            let consumed = (inflater.total_in() - before_in) as usize;
            let produced = (inflater.total_out() - before_out) as usize;
            full = produced == self.scratch.len();
            input = &input[consumed..];
            e.copy_len += produced as u64;
            let out = &self.scratch[..produced];
            if let Some(b) = &mut self.stored {
                b.text(out, &mut self.out);
            }
            let keep = COPY_TERMINATOR.len();
            self.last_frame
                .extend_from_slice(&out[out.len().saturating_sub(keep)..]);
            let excess = self.last_frame.len().saturating_sub(keep);
            self.last_frame.drain(..excess);
            match status {
                Ok(flate2::Status::StreamEnd) => {
                    self.inflated_to_end = true;
                    if !input.is_empty() {
                        self.inflate_failed = true;
                        if let Some(b) = &mut self.stored {
                            b.abandon(&mut self.out);
                        }
                    }
                    return;
                }
                Ok(_) if consumed == 0 && produced == 0 => return,
                Ok(_) => {}
                Err(_) => {
                    self.inflate_failed = true;
                    self.inflater = None;
                    if let Some(b) = &mut self.stored {
                        b.abandon(&mut self.out);
                    }
                    return;
                }
            }
        }
    }

    fn end_block(&mut self, entry: usize) -> ScanState {
        // pg_dump ends each table's COPY text with the end-of-data line of a SQL
        // script; `COPY … TO STDOUT` prints none, and a table's file is that text.
        let compressed_table = self.inflater.take().is_some();
        if compressed_table && !self.inflated_to_end {
            self.inflate_failed = true;
        }
        if let Some(b) = &mut self.stored {
            if !self.inflated_to_end {
                b.abandon(&mut self.out);
            }
            b.close(&mut self.out);
        }
        let whole_frame =
            self.header.compression == 0 && self.last_frame_len == COPY_TERMINATOR.len() as u64;
        if (whole_frame || compressed_table) && self.last_frame == COPY_TERMINATOR {
            let n = COPY_TERMINATOR.len() as u64;
            self.entries[entry].copy_len -= n;
            self.entries[entry].trailer_len = n;
        }
        self.inflated_to_end = false;
        self.last_frame.clear();
        self.last_frame_len = 0;
        self.entries[entry].end = Some(self.pos);
        self.blocks_done += 1;
        ScanState::BlockStart
    }

    fn finish(self) -> Result<DumpLayout, DumpFormatError> {
        let inside = |entry: usize| {
            let e = &self.entries[entry];
            let kind = if e.large_objects {
                "large-object block"
            } else {
                "data block"
            };
            format!(
                "{kind} of dump ID {} that starts at byte offset {}",
                e.dump_id,
                e.start.unwrap_or(0)
            )
        };
        let context = match self.state {
            ScanState::BlockStart => None,
            ScanState::BlockId { start, .. } => Some(format!(
                "header of the data block that starts at byte offset {start}"
            )),
            ScanState::ChunkLen { entry }
            | ScanState::Payload { entry, .. }
            | ScanState::LoOid { entry } => Some(inside(entry)),
        };
        if let Some(context) = context {
            return Err(DumpFormatError::Truncated {
                offset: self.pos,
                context,
            });
        }
        if let Some(first) = self.entries.iter().find(|e| e.end.is_none()) {
            return Err(DumpFormatError::MissingDataBlocks {
                offset: self.pos,
                missing: self.entries.len() - self.blocks_done,
                dump_id: first.dump_id,
            });
        }
        let block_span = |e: &DataEntry| {
            let start = e.start.expect("every entry's block ended");
            (start, e.end.expect("every entry's block ended") - start)
        };
        let data_blocks = self
            .block_order
            .iter()
            .map(|&i| {
                let e = &self.entries[i];
                let (offset, len) = block_span(e);
                DataBlock {
                    dump_id: e.dump_id,
                    offset,
                    len,
                    large_objects: e.large_objects,
                }
            })
            .collect();
        let patches = self
            .entries
            .iter()
            .map(|e| OffsetPatch {
                dump_id: e.dump_id,
                field: e.field as u64,
                data_offset: block_span(e).0,
            })
            .collect();
        let contents = self.contents();
        let recreation = self.stored.and_then(|b| b.finish());
        let offsets_were_set = self
            .entries
            .iter()
            .all(|e| e.flag == K_OFFSET_POS_SET && Some(e.stored_offset) == e.start);
        let ts = &self.header.timestamp;
        Ok(DumpLayout {
            total_len: self.pos,
            toc_end: self.toc_end,
            version: self.header.version,
            compression: self.header.compression,
            header_timestamp: ts.start as u64..ts.end as u64,
            toc_entries: self.toc_entries,
            entries_with_data: self.entries.len(),
            offsets_were_set,
            data_blocks,
            contents,
            recreation,
            off_size: self.header.off_size as u8,
            head_digest: self.head_digest,
            patches,
        })
    }
}

impl DataScanner {
    fn archive_header(&self) -> ArchiveHeader {
        let h = &self.header;
        ArchiveHeader {
            version: h.version,
            int_size: h.int_size as u8,
            off_size: h.off_size as u8,
            compression: h.compression,
            created: h.created,
            dbname: h.dbname.clone(),
            server_version: h.server_version.clone(),
            dump_version: h.dump_version.clone(),
            toc_entries: self.toc_entries,
        }
    }

    /// The tables and where their COPY text lies, for an uncompressed archive whose
    /// table entries all name their schema and table in UTF-8; `None` otherwise.
    fn contents(&self) -> Option<DumpContents> {
        let compressed = self.header.compression != 0;
        if (compressed && !self.header.is_zlib()) || self.inflate_failed {
            return None;
        }
        let mut tables = Vec::new();
        for &i in &self.block_order {
            let e = &self.entries[i];
            if e.large_objects || e.desc.as_deref() != Some("TABLE DATA") {
                continue;
            }
            tables.push(TableData {
                schema: e.namespace.clone()?,
                table: e.tag.clone()?,
                dump_id: e.dump_id,
                copy_len_bytes: e.copy_len,
                marks: e.marks.clone(),
                trailer_len_bytes: e.trailer_len,
            });
        }
        Some(DumpContents {
            int_size: u8::try_from(self.int_size).ok()?,
            tables,
            compressed,
        })
    }
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`, and plenty to
/// tell one archive's head from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a synthetic TOC entry carries in the data section.
    #[derive(Clone)]
    enum Payload {
        None,
        Table(Vec<Vec<u8>>),
        LargeObjects(Vec<(u32, Vec<Vec<u8>>)>),
    }

    #[derive(Clone)]
    struct Entry {
        dump_id: i32,
        desc: &'static str,
        payload: Payload,
    }

    /// Builds archives the way pg_dump does, TOC first with offsets unset, and for a
    /// "seekable" archive rewrites the TOC with the offsets afterwards.
    struct Synth {
        minor: u8,
        int_size: usize,
        off_size: usize,
        compression: i32,
        seconds: i64,
        entries: Vec<Entry>,
    }

    fn w_int(out: &mut Vec<u8>, value: i64, int_size: usize) {
        out.push(u8::from(value < 0));
        let mut magnitude = value.unsigned_abs();
        for _ in 0..int_size {
            out.push(magnitude as u8);
            magnitude >>= 8;
        }
    }

    fn w_str(out: &mut Vec<u8>, s: Option<&str>, int_size: usize) {
        match s {
            None => w_int(out, -1, int_size),
            Some(s) => {
                w_int(out, s.len() as i64, int_size);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    impl Synth {
        fn new(entries: Vec<Entry>) -> Self {
            Synth {
                minor: 14,
                int_size: 4,
                off_size: 8,
                compression: 0,
                seconds: 7,
                entries,
            }
        }

        fn int(&self, out: &mut Vec<u8>, v: i64) {
            assert!(
                self.int_size >= 8 || v.unsigned_abs() >> (8 * self.int_size) == 0,
                "{v} too wide"
            );
            w_int(out, v, self.int_size);
        }

        fn str(&self, out: &mut Vec<u8>, s: Option<&str>) {
            w_str(out, s, self.int_size);
        }

        fn toc(&self, offsets: &HashMap<i32, u64>) -> Vec<u8> {
            let mut out = Vec::new();
            self.int(&mut out, self.entries.len() as i64);
            for e in &self.entries {
                self.int(&mut out, i64::from(e.dump_id));
                self.int(&mut out, i64::from(!matches!(e.payload, Payload::None)));
                self.str(&mut out, Some("1259"));
                self.str(&mut out, Some("16384"));
                self.str(&mut out, Some("tag"));
                self.str(&mut out, Some(e.desc));
                self.int(&mut out, 2);
                self.str(&mut out, Some("CREATE TABLE t (x int);\n"));
                self.str(&mut out, Some(""));
                self.str(&mut out, None);
                self.str(&mut out, Some("public"));
                self.str(&mut out, Some(""));
                if self.minor >= 14 {
                    self.str(&mut out, Some("heap"));
                }
                if self.minor >= 16 {
                    self.int(&mut out, i64::from(b'r'));
                }
                self.str(&mut out, Some("postgres"));
                self.str(&mut out, Some("false"));
                self.str(&mut out, Some("1"));
                self.str(&mut out, Some("2"));
                self.str(&mut out, None);
                let (flag, pos) = match (&e.payload, offsets.get(&e.dump_id)) {
                    (Payload::None, _) => (K_OFFSET_NO_DATA, 0),
                    (_, None) => (K_OFFSET_POS_NOT_SET, 0),
                    (_, Some(&pos)) => (K_OFFSET_POS_SET, pos),
                };
                out.push(flag);
                out.extend_from_slice(&pos.to_le_bytes()[..self.off_size]);
            }
            out
        }

        fn chunks(&self, out: &mut Vec<u8>, chunks: &[Vec<u8>]) {
            for chunk in chunks {
                self.int(out, chunk.len() as i64);
                out.extend_from_slice(chunk);
            }
            self.int(out, 0);
        }

        /// Returns the archive and its header timestamp range.
        fn build(&self, seekable: bool) -> (Vec<u8>, Range<usize>) {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&[
                1,
                self.minor,
                0,
                self.int_size as u8,
                self.off_size as u8,
                ARCH_CUSTOM,
            ]);
            if self.minor >= MINOR_COMPRESSION_BYTE {
                out.push(self.compression as u8);
            } else {
                self.int(&mut out, i64::from(self.compression));
            }
            let ts_start = out.len();
            for v in [self.seconds, 30, 12, 24, 10, 125, 0] {
                self.int(&mut out, v);
            }
            let ts = ts_start..out.len();
            self.str(&mut out, Some("db"));
            self.str(&mut out, Some("15.8"));
            self.str(&mut out, Some("15.8"));
            let toc_start = out.len();
            let toc = self.toc(&HashMap::new());
            out.extend_from_slice(&toc);
            let mut offsets = HashMap::new();
            for e in &self.entries {
                match &e.payload {
                    Payload::None => {}
                    Payload::Table(chunks) => {
                        offsets.insert(e.dump_id, out.len() as u64);
                        out.push(BLK_DATA);
                        self.int(&mut out, i64::from(e.dump_id));
                        self.chunks(&mut out, chunks);
                    }
                    Payload::LargeObjects(los) => {
                        offsets.insert(e.dump_id, out.len() as u64);
                        out.push(BLK_BLOBS);
                        self.int(&mut out, i64::from(e.dump_id));
                        for (oid, chunks) in los {
                            // pg_dump passes the unsigned OID to WriteInt(int).
                            self.int(&mut out, i64::from(*oid as i32));
                            self.chunks(&mut out, chunks);
                        }
                        self.int(&mut out, 0);
                    }
                }
            }
            if seekable {
                let rewritten = self.toc(&offsets);
                assert_eq!(rewritten.len(), toc.len());
                out[toc_start..toc_start + toc.len()].copy_from_slice(&rewritten);
            }
            (out, ts)
        }
    }

    fn rows(n: usize, width: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{i:0width$}\n").into_bytes())
            .collect()
    }

    fn sample_entries() -> Vec<Entry> {
        vec![
            Entry {
                dump_id: 1,
                desc: "ENCODING",
                payload: Payload::None,
            },
            Entry {
                dump_id: 5,
                desc: "TABLE",
                payload: Payload::None,
            },
            Entry {
                dump_id: 9,
                desc: "TABLE DATA",
                payload: Payload::Table(rows(50, 20)),
            },
            Entry {
                dump_id: 10,
                desc: "TABLE DATA",
                payload: Payload::Table(Vec::new()),
            },
            Entry {
                dump_id: 11,
                desc: "SEQUENCE SET",
                payload: Payload::None,
            },
            Entry {
                dump_id: 12,
                desc: "BLOBS",
                payload: Payload::LargeObjects(vec![
                    (16400, vec![b"hello ".to_vec(), b"world".to_vec()]),
                    (3_000_000_000, vec![vec![0u8; 300]]),
                    (16401, Vec::new()),
                ]),
            },
            Entry {
                dump_id: 13,
                desc: "TABLE DATA",
                payload: Payload::Table(vec![vec![7u8; 60_000]]),
            },
            Entry {
                dump_id: 14,
                desc: "INDEX",
                payload: Payload::None,
            },
        ]
    }

    fn inspect_in(bytes: &[u8], piece: usize) -> Result<DumpLayout, DumpFormatError> {
        let mut inspector = DumpInspector::new();
        for chunk in bytes.chunks(piece.max(1)) {
            inspector.feed(chunk)?;
        }
        inspector.finish()
    }

    fn inspect(bytes: &[u8]) -> Result<DumpLayout, DumpFormatError> {
        inspect_in(bytes, bytes.len())
    }

    /// Feeds in pseudo-random piece sizes from 0 to 40 bytes.
    fn inspect_ragged(bytes: &[u8], seed: u64) -> Result<DumpLayout, DumpFormatError> {
        let mut state = seed;
        let mut inspector = DumpInspector::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let n = ((state >> 33) % 41) as usize;
            let (piece, tail) = rest.split_at(n.min(rest.len()));
            inspector.feed(piece)?;
            rest = tail;
        }
        inspector.finish()
    }

    /// The COPY text of `table` in `archive`, walked frame by frame from the mark
    /// before `from` to the end of the block, as a reader of one table does.
    fn copy_text_from(archive: &[u8], int_size: usize, table: &TableData, from: u64) -> Vec<u8> {
        let mark = table.mark_before(from).expect("a table has a first mark");
        let (mut pos, mut copy) = (mark.dump_offset as usize, mark.copy_offset);
        let mut out = Vec::new();
        while let Some(len) = crate::dump_data::frame_len(&archive[pos..], int_size) {
            let payload = &archive[pos + 1 + int_size..][..len as usize];
            let skip = from.saturating_sub(copy).min(len) as usize;
            let keep = table.copy_len_bytes.saturating_sub(copy).min(len) as usize;
            out.extend_from_slice(&payload[skip.min(keep)..keep]);
            copy += len;
            pos += 1 + int_size + len as usize;
        }
        out
    }

    #[test]
    fn each_table_s_copy_text_is_found_from_its_marks() {
        let rows: Vec<Vec<u8>> = (0..40000)
            .map(|i| format!("{i}\trow number {i} of a table\n").into_bytes())
            .collect();
        let whole: Vec<u8> = rows.concat();
        assert!(whole.len() as u64 > 2 * MARK_EVERY_BYTES);
        let mut rows = rows;
        rows.push(COPY_TERMINATOR.to_vec());
        let mut entries = sample_entries();
        entries.push(Entry {
            dump_id: 20,
            desc: "TABLE DATA",
            payload: Payload::Table(rows),
        });
        entries.push(Entry {
            dump_id: 21,
            desc: "TABLE DATA",
            payload: Payload::Table(vec![COPY_TERMINATOR.to_vec()]),
        });
        // A last row as short as the terminator stays.
        entries.push(Entry {
            dump_id: 22,
            desc: "TABLE DATA",
            payload: Payload::Table(vec![b"1\t2\n".to_vec(), b"ab\tc\n".to_vec()]),
        });
        let synth = Synth::new(entries);
        let (archive, _) = synth.build(false);
        let contents = inspect(&archive).unwrap().contents.expect("uncompressed");
        assert_eq!(contents.int_size, 4);
        let big = contents.tables.iter().find(|t| t.dump_id == 20).unwrap();
        assert_eq!((big.schema.as_str(), big.table.as_str()), ("public", "tag"));
        assert_eq!(big.copy_len_bytes, whole.len() as u64);
        assert_eq!(big.trailer_len_bytes, COPY_TERMINATOR.len() as u64);
        assert!(big.marks.len() >= 3, "{:?}", big.marks);
        for from in [
            0,
            1,
            35,
            MARK_EVERY_BYTES - 1,
            MARK_EVERY_BYTES + 17,
            whole.len() as u64 - 3,
        ] {
            assert_eq!(
                copy_text_from(&archive, 4, big, from),
                whole[from as usize..],
                "from {from}"
            );
        }
        let empty = contents.tables.iter().find(|t| t.dump_id == 21).unwrap();
        assert_eq!(empty.copy_len_bytes, 0);
        assert_eq!(copy_text_from(&archive, 4, empty, 0), b"");
        // Large objects and entries that are not table data have no COPY text.
        let ids: Vec<i32> = contents.tables.iter().map(|t| t.dump_id).collect();
        assert_eq!(ids, [9, 10, 13, 20, 21, 22]);
        let short = &contents.tables[5];
        assert_eq!(short.trailer_len_bytes, 0);
        assert_eq!(copy_text_from(&archive, 4, short, 0), b"1\t2\nab\tc\n");

        let compressed = Synth {
            compression: -1,
            ..Synth::new(sample_entries())
        };
        assert_eq!(inspect(&compressed.build(false).0).unwrap().contents, None);
    }

    #[test]
    fn a_compressed_table_s_text_length_is_learned_by_inflating_it() {
        use std::io::Write;
        let text: Vec<u8> = (0..20000)
            .flat_map(|i| format!("{i}\tsome row {i}\n").into_bytes())
            .collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        z.write_all(COPY_TERMINATOR).unwrap();
        let stream = z.finish().unwrap();
        let frames: Vec<Vec<u8>> = stream.chunks(4096).map(<[u8]>::to_vec).collect();
        let table = |dump_id, payload| Entry {
            dump_id,
            desc: "TABLE DATA",
            payload,
        };
        let synth = Synth {
            compression: -1,
            ..Synth::new(vec![table(9, Payload::Table(frames.clone()))])
        };
        let contents = inspect(&synth.build(false).0).unwrap().contents.unwrap();
        assert!(contents.compressed);
        let t = &contents.tables[0];
        assert_eq!(t.copy_len_bytes, text.len() as u64);
        assert_eq!(t.trailer_len_bytes, COPY_TERMINATOR.len() as u64);
        assert_eq!(t.marks.len(), 1);

        // A stream cut short leaves the archive without table files.
        let cut = Synth {
            compression: -1,
            ..Synth::new(vec![table(9, Payload::Table(frames[..1].to_vec()))])
        };
        assert_eq!(inspect(&cut.build(false).0).unwrap().contents, None);
    }

    #[test]
    fn piped_archive_is_patched_into_the_seekable_one() {
        let synth = Synth::new(sample_entries());
        let (piped, ts) = synth.build(false);
        let (seekable, _) = synth.build(true);
        assert_ne!(piped, seekable);

        let layout = inspect(&piped).unwrap();
        assert!(!layout.offsets_were_set);
        assert_eq!(layout.total_len, piped.len() as u64);
        assert_eq!(layout.toc_entries, 8);
        assert_eq!(layout.entries_with_data, 4);
        assert_eq!(layout.header_timestamp, ts.start as u64..ts.end as u64);
        assert_eq!(layout.header_timestamp, 16..51);
        assert_eq!(layout.version, (1, 14, 0));
        assert!(!layout.is_compressed());
        let ids: Vec<i32> = layout.data_blocks.iter().map(|b| b.dump_id).collect();
        assert_eq!(ids, [9, 10, 12, 13]);
        assert!(layout.data_blocks[2].large_objects);
        let end = layout.data_blocks.last().map(|b| b.offset + b.len);
        assert_eq!(end, Some(piped.len() as u64));
        assert_eq!(layout.data_blocks[0].offset, layout.toc_end);

        let toc_end = layout.toc_end as usize;
        let patched = layout.patch_head(&piped[..toc_end]).unwrap();
        assert_eq!(patched, seekable[..toc_end]);

        let seek_layout = inspect(&seekable).unwrap();
        assert!(seek_layout.offsets_were_set);
        assert_eq!(
            seek_layout.patch_head(&seekable[..toc_end]).unwrap(),
            seekable[..toc_end]
        );
    }

    #[test]
    fn any_feeding_pattern_gives_the_same_layout() {
        let (piped, _) = Synth::new(sample_entries()).build(false);
        let whole = inspect(&piped).unwrap();
        assert_eq!(inspect_in(&piped, 1).unwrap(), whole);
        assert_eq!(inspect_in(&piped, 2).unwrap(), whole);
        assert_eq!(inspect_in(&piped, 4096).unwrap(), whole);
        for seed in 0..20 {
            assert_eq!(inspect_ragged(&piped, seed).unwrap(), whole);
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let (piped, _) = Synth::new(sample_entries()).build(false);
        for cut in 0..piped.len() {
            let err = inspect(&piped[..cut]).unwrap_err();
            match err {
                DumpFormatError::Empty => assert_eq!(cut, 0),
                DumpFormatError::Truncated { offset, .. }
                | DumpFormatError::MissingDataBlocks { offset, .. } => {
                    assert_eq!(offset, cut as u64)
                }
                other => panic!("cut at {cut}: unexpected {other}"),
            }
        }
        // Byte-wise feeding must also notice truncation, with the same error.
        for cut in [3, 30, 100, piped.len() / 2, piped.len() - 1] {
            assert_eq!(inspect_in(&piped[..cut], 1), inspect(&piped[..cut]));
        }
    }

    #[test]
    fn truncation_messages_say_where() {
        let (piped, _) = Synth::new(sample_entries()).build(false);
        let layout = inspect(&piped).unwrap();
        let msg = |cut: usize| inspect(&piped[..cut]).unwrap_err().to_string();
        assert!(msg(20).contains("inside the archive header"), "{}", msg(20));
        let toc_msg = msg(layout.toc_end as usize - 3);
        assert!(
            toc_msg.contains("table of contents (entry 8 of 8)"),
            "{toc_msg}"
        );
        let first = layout.data_blocks[0];
        let data_msg = msg(first.offset as usize + 30);
        assert!(data_msg.contains(&format!(
            "data block of dump ID 9 that starts at byte offset {}",
            first.offset
        )));
        let lo = layout.data_blocks[2];
        assert!(msg((lo.offset + lo.len) as usize - 1).contains("large-object block of dump ID 12"));
        let gap = msg(layout.data_blocks[3].offset as usize);
        assert!(
            gap.contains("1 TOC entries with data have no data block, the first being dump ID 13"),
            "{gap}"
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let (mut piped, _) = Synth::new(sample_entries()).build(false);
        let len = piped.len() as u64;
        for extra in [&[0u8][..], &[BLK_DATA, 0, 9, 0, 0, 0], b"garbage"] {
            piped.truncate(len as usize);
            piped.extend_from_slice(extra);
            assert_eq!(
                inspect(&piped).unwrap_err(),
                DumpFormatError::TrailingGarbage { offset: len }
            );
        }
    }

    #[test]
    fn archive_without_data_ends_with_its_toc() {
        let entries = vec![Entry {
            dump_id: 3,
            desc: "SCHEMA",
            payload: Payload::None,
        }];
        let (bytes, _) = Synth::new(entries).build(false);
        let layout = inspect(&bytes).unwrap();
        assert_eq!(layout.toc_end, bytes.len() as u64);
        assert_eq!(layout.entries_with_data, 0);
        assert!(layout.offsets_were_set);
        assert_eq!(layout.patch_head(&bytes).unwrap(), bytes);
        let mut longer = bytes.clone();
        longer.push(1);
        assert_eq!(
            inspect(&longer).unwrap_err(),
            DumpFormatError::TrailingGarbage {
                offset: bytes.len() as u64
            }
        );
    }

    #[test]
    fn other_versions_and_sizes() {
        for minor in [12, 13, 14, 15, 16] {
            for (int_size, off_size) in [(4, 8), (8, 8), (4, 4), (8, 5)] {
                let mut synth = Synth::new(sample_entries());
                synth.minor = minor;
                synth.int_size = int_size;
                synth.off_size = off_size;
                synth.compression = if minor >= 15 { 3 } else { -1 };
                let (piped, _) = synth.build(false);
                let (seekable, _) = synth.build(true);
                let layout = inspect_ragged(&piped, u64::from(minor)).unwrap();
                assert_eq!(layout.version, (1, minor, 0));
                assert_eq!(layout.compression, synth.compression);
                assert!(layout.is_compressed());
                let head = layout
                    .patch_head(&piped[..layout.toc_end as usize])
                    .unwrap();
                assert_eq!(
                    head,
                    seekable[..layout.toc_end as usize],
                    "1.{minor} int {int_size} off {off_size}"
                );
            }
        }
    }

    #[test]
    fn foreign_input_is_rejected_early() {
        let mut inspector = DumpInspector::new();
        assert_eq!(
            inspector.feed(b"--\n-- PostgreSQL database dump\n"),
            Err(DumpFormatError::BadMagic)
        );
        assert_eq!(inspector.feed(b"PGDMP"), Err(DumpFormatError::BadMagic));
        assert_eq!(inspector.finish().unwrap_err(), DumpFormatError::BadMagic);

        let mut inspector = DumpInspector::new();
        inspector.feed(b"PG").unwrap();
        assert_eq!(inspector.feed(b"X"), Err(DumpFormatError::BadMagic));

        let mut tar = vec![0u8; 1024];
        tar[..7].copy_from_slice(b"toc.dat");
        assert_eq!(inspect(&tar).unwrap_err(), DumpFormatError::BadMagic);
        assert_eq!(inspect(&[]).unwrap_err(), DumpFormatError::Empty);
        assert_eq!(
            inspect(b"PGD").unwrap_err().to_string(),
            "Archive is truncated at byte offset 3: it ends inside the archive header"
        );

        let (good, _) = Synth::new(sample_entries()).build(false);
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            inspect_in(&bytes[..FIXED_HEADER_LEN], 1).unwrap_err()
        };
        assert_eq!(
            with(6, 11),
            DumpFormatError::UnsupportedVersion {
                major: 1,
                minor: 11
            }
        );
        assert_eq!(
            with(6, 17),
            DumpFormatError::UnsupportedVersion {
                major: 1,
                minor: 17
            }
        );
        assert_eq!(
            with(5, 2),
            DumpFormatError::UnsupportedVersion {
                major: 2,
                minor: 14
            }
        );
        assert_eq!(with(8, 9), DumpFormatError::UnsupportedIntSize { size: 9 });
        assert_eq!(
            with(9, 0),
            DumpFormatError::UnsupportedOffsetSize { size: 0 }
        );
        assert_eq!(with(10, 3), DumpFormatError::NotCustomFormat { code: 3 });
    }

    #[test]
    fn corrupt_data_sections_are_rejected() {
        let (good, _) = Synth::new(sample_entries()).build(false);
        let layout = inspect(&good).unwrap();
        let first = layout.data_blocks[0].offset as usize;

        let mut bad_type = good.clone();
        bad_type[first] = 2;
        assert!(
            matches!(inspect(&bad_type), Err(DumpFormatError::Corrupt { offset, .. }) if offset == first as u64)
        );

        let mut unknown_id = good.clone();
        unknown_id[first + 2] = 5; // dump ID 5 has no data
        let err = inspect(&unknown_id).unwrap_err();
        assert!(
            err.to_string()
                .contains("dump ID 5, which has no TOC entry with data"),
            "{err}"
        );

        let mut duplicate = good.clone();
        duplicate[layout.data_blocks[1].offset as usize + 2] = 9;
        let err = inspect(&duplicate).unwrap_err();
        assert!(
            err.to_string().contains("second data block for dump ID 9"),
            "{err}"
        );

        let mut negative = good.clone();
        negative[first + 6] = 1; // sign byte of the first chunk length
        let err = inspect(&negative).unwrap_err();
        assert!(err.to_string().contains("negative chunk length"), "{err}");
    }

    #[test]
    fn corrupt_toc_is_rejected() {
        let synth = Synth::new(sample_entries());
        let (good, ts) = synth.build(false);
        // The TOC count follows the three header strings.
        let toc_start = ts.end + 3 * 5 + 2 + 4 + 4;
        let mut negative_count = good.clone();
        negative_count[toc_start] = 1;
        let err = inspect(&negative_count).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Corrupt archive at byte offset {toc_start}: TOC entry count -8 is negative")
        );

        let mut zero_id = good.clone();
        zero_id[toc_start + 6] = 0;
        assert!(matches!(
            inspect(&zero_id),
            Err(DumpFormatError::Corrupt { .. })
        ));

        let layout = inspect(&good).unwrap();
        let flag = layout.patches[0].field as usize;
        let mut bad_flag = good.clone();
        bad_flag[flag] = 7;
        let err = inspect(&bad_flag).unwrap_err();
        assert_eq!(
            err,
            corrupt(
                flag as u64,
                "unknown data offset flag 7 in TOC entry of dump ID 9"
            )
        );
    }

    #[test]
    fn toc_size_is_limited() {
        let (good, ts) = Synth::new(sample_entries()).build(false);
        // Turn the database name length into a huge one.
        let mut huge = good.clone();
        huge[ts.end + 4] = 0x7f;
        let mut inspector = DumpInspector::with_max_toc_len(1 << 20);
        let err = inspector.feed(&huge).unwrap_err();
        assert!(
            matches!(err, DumpFormatError::TocTooLarge { offset, .. } if offset == ts.end as u64),
            "{err}"
        );
        assert!(inspect_in(&good, 7).is_ok());
        let mut tight = DumpInspector::with_max_toc_len(100);
        assert!(matches!(
            tight.feed(&good),
            Err(DumpFormatError::TocTooLarge { .. })
        ));
    }

    #[test]
    fn patch_head_checks_its_input() {
        let synth = Synth::new(sample_entries());
        let (piped, _) = synth.build(false);
        let layout = inspect(&piped).unwrap();
        let toc_end = layout.toc_end as usize;
        assert_eq!(
            layout.patch_head(&piped[..toc_end - 1]),
            Err(DumpFormatError::HeadLength {
                actual: toc_end - 1,
                toc_end: toc_end as u64
            })
        );
        let mut other = piped[..toc_end].to_vec();
        other[12] ^= 1;
        assert_eq!(
            layout.patch_head(&other),
            Err(DumpFormatError::HeadMismatch {
                toc_end: toc_end as u64
            })
        );

        let mut small = Synth::new(sample_entries());
        small.off_size = 1;
        let (piped, _) = small.build(false);
        let layout = inspect(&piped).unwrap();
        let err = layout
            .patch_head(&piped[..layout.toc_end as usize])
            .unwrap_err();
        assert!(
            matches!(err, DumpFormatError::OffsetTooLarge { size: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_stored_offsets_are_corrected() {
        let synth = Synth::new(sample_entries());
        let (mut seekable, _) = synth.build(true);
        let layout = inspect(&seekable).unwrap();
        let field = layout.patches[1].field as usize;
        seekable[field + 1] ^= 0x40;
        let layout = inspect(&seekable).unwrap();
        assert!(!layout.offsets_were_set);
        let toc_end = layout.toc_end as usize;
        let fixed = layout.patch_head(&seekable[..toc_end]).unwrap();
        assert_eq!(fixed, synth.build(true).0[..toc_end]);
    }

    #[test]
    fn error_messages_follow_the_style() {
        let errors = [
            DumpFormatError::Empty,
            DumpFormatError::BadMagic,
            DumpFormatError::UnsupportedVersion {
                major: 1,
                minor: 11,
            },
            DumpFormatError::UnsupportedIntSize { size: 0 },
            DumpFormatError::UnsupportedOffsetSize { size: 9 },
            DumpFormatError::NotCustomFormat { code: 3 },
            DumpFormatError::Truncated {
                offset: 1,
                context: "archive header".into(),
            },
            DumpFormatError::MissingDataBlocks {
                offset: 1,
                missing: 1,
                dump_id: 1,
            },
            DumpFormatError::TrailingGarbage { offset: 1 },
            corrupt(1, "x"),
            DumpFormatError::TocTooLarge {
                offset: 1,
                end: 2,
                limit: 1,
            },
            DumpFormatError::HeadLength {
                actual: 1,
                toc_end: 2,
            },
            DumpFormatError::HeadMismatch { toc_end: 2 },
            DumpFormatError::OffsetTooLarge {
                offset: 1,
                dump_id: 1,
                size: 1,
                field: 1,
            },
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_uppercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert!(msg.contains("byte offset"), "{msg}");
        }
    }

    #[test]
    fn spent_inspector_keeps_failing() {
        let mut inspector = DumpInspector::new();
        assert!(inspector.feed(b"nope").is_err());
        assert_eq!(inspector.feed(b""), Err(DumpFormatError::BadMagic));
        assert_eq!(inspector.bytes_fed(), 4);
        assert_eq!(inspector.toc_end(), None);
    }

    #[test]
    fn toc_end_is_known_once_the_toc_is_fed() {
        let (piped, _) = Synth::new(sample_entries()).build(false);
        let layout = inspect(&piped).unwrap();
        let mut inspector = DumpInspector::new();
        inspector
            .feed(&piped[..layout.toc_end as usize - 1])
            .unwrap();
        assert_eq!(inspector.toc_end(), None);
        inspector
            .feed(&piped[layout.toc_end as usize - 1..layout.toc_end as usize])
            .unwrap();
        assert_eq!(inspector.toc_end(), Some(layout.toc_end));
        assert_eq!(inspector.bytes_fed(), layout.toc_end);
    }
}
