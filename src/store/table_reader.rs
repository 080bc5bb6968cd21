//! One table's COPY text read out of a stored dump at any offset, by walking the
//! dump's frames from the recorded mark before that offset (see
//! [`crate::dump_data`]); only the chunks that hold those frames are read.
//!
//! A compressed dump's table is one zlib stream, which cannot be entered in the
//! middle: it is inflated from the start of its block, and each open reader keeps
//! its inflater where the last read stopped, so a sequential reader inflates every
//! byte once and a read behind that point starts again from the block's start.
//! Unless the block was stored as its text (see [`crate::recreate`]): then the text
//! is read where it lies, at any offset.

use std::sync::{Arc, Mutex};

use super::reader::FileReader;
use crate::dump_data::{frame_len, split_int, DumpContents, FrameMark, TableData};
use crate::error::{Error, Result};

/// How much of the dump one fetch reads: a frame per row means many small frames,
/// so they are parsed from a window rather than read one by one.
const WINDOW_BYTES: usize = 256 << 10;

/// Reads one table's COPY text from a dump's [`FileReader`].
#[derive(Debug)]
pub struct TableCopyReader {
    dump: Arc<FileReader>,
    table: TableData,
    int_size: usize,
    /// Whether the trailer after the COPY text is read too.
    with_trailer: bool,
    /// Whether the frames hold a zlib stream.
    compressed: bool,
    /// A compressed table's inflater, where the last read left it. Reads of one
    /// open file take turns: two at once would each inflate from the start.
    inflating: tokio::sync::Mutex<Option<Inflating>>,
    /// The frame where the last read stopped: a sequential reader goes on from
    /// there instead of from the mark before it.
    resume: Mutex<Option<FrameMark>>,
}

/// How much of a table stored as text is loaded ahead of a read.
const TEXT_PREFETCH_BYTES: u64 = 16 << 20;

/// How much inflated text a compressed table's reader keeps behind its last read.
const KEEP_BEHIND_BYTES: u64 = 4 << 20;

/// A compressed table being inflated.
struct Inflating {
    /// The dump offset of the next frame.
    frame: u64,
    inflater: flate2::Decompress,
    /// Inflated text not yet read past, and its offset in the text.
    pending: Vec<u8>,
    pending_at: u64,
    /// The block's frames have all been inflated.
    done: bool,
}

impl std::fmt::Debug for Inflating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflating")
            .field("frame", &self.frame)
            .field("pending_at", &self.pending_at)
            .finish_non_exhaustive()
    }
}

/// Dump bytes read ahead of a walk through many small frames.
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    fn new(start: u64) -> Self {
        Window {
            start,
            bytes: Vec::new(),
        }
    }

    /// Makes the window hold `n` bytes at `offset` of `dump` (reading a new one
    /// there if it does not) and returns where they start in it; `None` when the
    /// dump ends before them.
    ///
    /// Errors: those of [`FileReader::read_at`].
    async fn fill(&mut self, dump: &FileReader, offset: u64, n: usize) -> Result<Option<usize>> {
        let inside =
            offset >= self.start && offset + n as u64 <= self.start + self.bytes.len() as u64;
        if !inside {
            self.start = offset;
            self.bytes = dump.read_at(offset, n.max(WINDOW_BYTES)).await?;
            if self.bytes.len() < n {
                return Ok(None);
            }
        }
        Ok(Some((offset - self.start) as usize))
    }
}

impl TableCopyReader {
    /// A reader of `table` of the dump `dump` reads, whose `contents` say how its
    /// frames are written.
    pub fn new(dump: Arc<FileReader>, table: TableData, contents: &DumpContents) -> Self {
        TableCopyReader {
            dump,
            table,
            int_size: usize::from(contents.int_size),
            with_trailer: false,
            compressed: contents.compressed,
            inflating: tokio::sync::Mutex::new(None),
            resume: Mutex::new(None),
        }
    }

    /// The same reader of the whole block's payload: the COPY text and pg_dump's
    /// end-of-data line after it, as a SQL script shows them.
    pub fn with_trailer(mut self) -> Self {
        self.with_trailer = true;
        self
    }

    /// The length of what is read: the COPY text, and the trailer if asked for.
    pub fn len(&self) -> u64 {
        self.table.copy_len_bytes
            + if self.with_trailer {
                self.table.trailer_len_bytes
            } else {
                0
            }
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dump the table is read from.
    pub fn dump(&self) -> &FileReader {
        &self.dump
    }

    /// Where in the dump the last read stopped, to load the chunks after it ahead.
    pub fn dump_offset_reached(&self) -> Option<u64> {
        self.resume
            .lock()
            .expect("resume lock")
            .map(|m| m.dump_offset)
    }

    /// The table, for messages.
    pub fn what(&self) -> String {
        format!(
            "Table {} of {}",
            self.table.qualified_name(),
            self.dump.what()
        )
    }

    /// Up to `size` bytes of COPY text at `offset`; fewer only at its end.
    ///
    /// Errors: those of [`FileReader::read_at`]; `Corrupt` when the frames found do
    /// not add up to what was recorded when the dump was stored.
    pub async fn read_at(&self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(size as u64).min(self.len());
        if offset >= end {
            return Ok(Vec::new());
        }
        if self.compressed {
            return self.read_inflated(offset, end).await;
        }
        let mark = self
            .table
            .mark_before(offset)
            .ok_or_else(|| self.damaged("has no recorded frames"))?;
        let resume = *self.resume.lock().expect("resume lock");
        let mut at = match resume {
            Some(r) if r.copy_offset <= offset && r.copy_offset > mark.copy_offset => r,
            _ => mark,
        };
        let header = 1 + self.int_size;
        let mut window = Window::new(at.dump_offset);
        let mut out = Vec::with_capacity((end - offset) as usize);
        while at.copy_offset < end {
            let i = self.ensure(&mut window, at.dump_offset, header).await?;
            let len = frame_len(&window.bytes[i..], self.int_size)
                .ok_or_else(|| self.damaged("ends before its recorded length"))?;
            let payload = at.dump_offset + header as u64;
            let from = offset.max(at.copy_offset);
            let to = end.min(at.copy_offset + len);
            if from < to {
                let n = (to - from) as usize;
                let i = self
                    .ensure(&mut window, payload + (from - at.copy_offset), n)
                    .await?;
                out.extend_from_slice(&window.bytes[i..i + n]);
            }
            if at.copy_offset + len > end {
                break;
            }
            at = FrameMark {
                dump_offset: payload + len,
                copy_offset: at.copy_offset + len,
            };
        }
        *self.resume.lock().expect("resume lock") = Some(at);
        Ok(out)
    }

    /// The inflated text in `offset..end`, continuing from where the last read
    /// stopped when that is not past `offset`.
    async fn read_inflated(&self, offset: u64, end: u64) -> Result<Vec<u8>> {
        let first = self
            .table
            .mark_before(0)
            .ok_or_else(|| self.damaged("has no recorded frames"))?
            .dump_offset;
        if let Some(text_at) = self.dump.text_of_block_at(first) {
            // Stored as its text: read there, with nothing to inflate.
            let out = self
                .dump
                .read_stored_at(text_at + offset, (end - offset) as usize)
                .await?;
            if out.len() as u64 != end - offset {
                return Err(self.damaged("ends before its recorded length"));
            }
            let left = self.len() - end;
            self.dump
                .prefetch_stored(text_at + end, left.min(TEXT_PREFETCH_BYTES));
            return Ok(out);
        }
        let mut kept = self.inflating.lock().await;
        let mut cur = match kept.take().filter(|c| c.pending_at <= offset) {
            Some(c) => c,
            None => Inflating {
                frame: self
                    .table
                    .mark_before(0)
                    .ok_or_else(|| self.damaged("has no recorded frames"))?
                    .dump_offset,
                inflater: flate2::Decompress::new(true),
                pending: Vec::new(),
                pending_at: 0,
                done: false,
            },
        };
        let header = 1 + self.int_size;
        let mut window = Window::new(cur.frame);
        loop {
            // Text just behind the read is kept: the kernel's readahead sends
            // requests a little out of order, and each would start over.
            let keep_from = offset.saturating_sub(KEEP_BEHIND_BYTES);
            if cur.pending_at < keep_from {
                let skip = ((keep_from - cur.pending_at) as usize).min(cur.pending.len());
                cur.pending.drain(..skip);
                cur.pending_at += skip as u64;
            }
            if cur.pending_at + cur.pending.len() as u64 >= end || cur.done {
                break;
            }
            let i = self.ensure(&mut window, cur.frame, header).await?;
            let Some(len) = frame_len(&window.bytes[i..], self.int_size) else {
                cur.done = true;
                continue;
            };
            let j = self
                .ensure(&mut window, cur.frame + header as u64, len as usize)
                .await?;
            let mut input = &window.bytes[j..j + len as usize];
            // Until the input is taken and a call leaves room in the output: a call
            // that fills it may hold text back.
            let mut full = false;
            while !input.is_empty() || full {
                cur.pending.reserve(64 << 10);
                let room = cur.pending.capacity() - cur.pending.len();
                let (before, made) = (cur.inflater.total_in(), cur.inflater.total_out());
                let status = cur
                    .inflater
                    .decompress_vec(input, &mut cur.pending, flate2::FlushDecompress::None)
                    .map_err(|e| self.damaged(&format!("does not inflate ({e})")))?;
                input = &input[(cur.inflater.total_in() - before) as usize..];
                full = (cur.inflater.total_out() - made) as usize == room;
                if status == flate2::Status::StreamEnd {
                    break;
                }
            }
            cur.frame += header as u64 + len;
        }
        let from = (offset - cur.pending_at) as usize;
        let to = ((end - cur.pending_at) as usize).min(cur.pending.len());
        if from > to || to - from != (end - offset) as usize {
            return Err(self.damaged("ends before its recorded length"));
        }
        let out = cur.pending[from..to].to_vec();
        *kept = Some(cur);
        Ok(out)
    }

    /// Makes the window hold `n` dump bytes at `offset` (reading a new one there if
    /// it does not) and returns where they start in it.
    async fn ensure(&self, window: &mut Window, offset: u64, n: usize) -> Result<usize> {
        window
            .fill(&self.dump, offset, n)
            .await?
            .ok_or_else(|| self.damaged("runs past the end of the dump"))
    }

    fn damaged(&self, how: &str) -> Error {
        Error::Corrupt(format!(
            "{} {how}: the dump's frames do not match the manifest",
            self.what()
        ))
    }
}

/// The large objects of the `BLOBS` block at `offset` of a dump whose `contents`
/// say how it is written: each object's OID and bytes (inflated, in a compressed
/// dump, where each object is a zlib stream of its own), in archive order. `None`
/// when they add up to more than `limit_bytes`.
///
/// Errors: those of [`FileReader::read_at`]; `Corrupt` when the block is not a
/// large-object block, ends early or does not inflate.
pub async fn read_large_objects(
    dump: &FileReader,
    offset: u64,
    contents: &DumpContents,
    limit_bytes: u64,
) -> Result<Option<Vec<(u32, Vec<u8>)>>> {
    let width = 1 + usize::from(contents.int_size);
    let damaged = |how: &str| {
        Error::Corrupt(format!(
            "The large-object block at byte {offset} of {} {how}",
            dump.what()
        ))
    };
    let mut pos = offset;
    let mut window = Window::new(offset);
    let read = async |window: &mut Window, at: u64, n: usize| -> Result<Vec<u8>> {
        let i = window
            .fill(dump, at, n)
            .await?
            .ok_or_else(|| damaged("runs past the end of the dump"))?;
        Ok(window.bytes[i..i + n].to_vec())
    };
    let kind = read(&mut window, pos, 1).await?;
    if kind[0] != 3 {
        return Err(damaged("is not one"));
    }
    pos += 1 + width as u64; // the block's dump ID
    let mut objects = Vec::new();
    let mut total = 0u64;
    loop {
        let (negative, magnitude) = split_int(&read(&mut window, pos, width).await?);
        pos += width as u64;
        if magnitude == 0 {
            return Ok(Some(objects));
        }
        // pg_dump writes an OID as a signed int: those above 2^31 arrive negative.
        let signed =
            i64::try_from(magnitude).map_err(|_| damaged("names an OID beyond 32 bits"))?;
        let oid = i32::try_from(if negative { -signed } else { signed })
            .map(|v| v as u32)
            .or_else(|_| u32::try_from(signed))
            .map_err(|_| damaged("names an OID beyond 32 bits"))?;
        let mut data = Vec::new();
        loop {
            let (negative, len) = split_int(&read(&mut window, pos, width).await?);
            pos += width as u64;
            if negative {
                return Err(damaged("has a negative length"));
            }
            if len == 0 {
                break;
            }
            if data.len() as u64 + len > limit_bytes {
                return Ok(None);
            }
            data.extend_from_slice(&read(&mut window, pos, len as usize).await?);
            pos += len;
        }
        if contents.compressed {
            use std::io::Read;
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(data.as_slice())
                .take(limit_bytes + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| damaged(&format!("holds an object that does not inflate ({e})")))?;
            data = inflated;
        }
        total += data.len() as u64;
        if total > limit_bytes {
            return Ok(None);
        }
        objects.push((oid, data));
    }
}
