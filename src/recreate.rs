//! Compressed table data stored as its inflated text and re-created byte for byte on
//! read, so that `pg_dump -Fc` at its default compression deduplicates day to day
//! as well as `-Z0` does, while every read returns exactly the bytes that went in.
//!
//! pg_dump compresses each table's COPY text into one zlib stream (deflate at the
//! archive's level, window 15, memory level 8) and writes the stream as frames: an
//! archive int giving the length, then that many bytes. Its output buffer holds 4096
//! bytes and is written whenever it is full, so every frame but the last of a block
//! is 4096 bytes, and a zero length ends the block. Deflate's output is a function of
//! its input and parameters alone, not of how the input was cut, so the same zlib
//! given the inflated text reproduces the stream, and the frames follow from it.
//!
//! That is an observation about one library, not a law, so nothing is trusted: the
//! write path ([`StoredStreamBuilder`]) inflates each stream as it arrives, deflates
//! the text again at once, and compares the result with the original bytes. What
//! matches is stored as text and described by a [`RecreatedSpan`]; from the first
//! byte that does not, the rest of the block is stored as it came. A span records
//! how much text re-creates how many original bytes, so a stream that stops matching
//! half way keeps its matching first half. Reads verify too: a full read checks the
//! hash of the original bytes recorded in the [`Recreation`].
//!
//! Checkpoints are not possible with the zlib API (a deflate state cannot be saved),
//! so a span is re-created from its start; readers keep their deflater where the
//! last read stopped, which serves pg_restore's pattern: it reads a block from its
//! start to its end.
//!
//! Other encoders (GNU gzip, whose block boundaries differ from zlib's) are
//! re-created through preflate-rs: it predicts the encoder's choices from the text
//! and records where the prediction is wrong, so text plus that correction record
//! give the stream back ([`SpanCodec::Preflate`], [`preflate_prefix`]). Its
//! piecewise mode fails on streams it re-creates whole (version 0.7.6: a match not
//! found in the continued hash chain), and on that path it prints to stdout, and it
//! would make every read of a stream's end re-create all of the stream before it.
//! So a long stream is cut at deflate block boundaries into spans of at most
//! [`PREFLATE_TEXT_BYTES`] of text, each re-created on its own: the first as it is,
//! each later one as the tail of a stream that starts with a stored block of the
//! 32 KiB of text before it ([`SpanCodec::PreflateAfter`], [`preflate_after`]).
//! A stored block puts its bytes into the encoder's window and hash chains as the
//! real encoder had them (at gzip's levels 4 to 9 every position is hashed), so
//! preflate-rs predicts the blocks after it as it would have in one piece; the
//! prefix is made from the stored text, never stored as deflate. Blocks start at any
//! bit, so the later spans' bytes are shifted to start at a byte, and the byte where
//! two spans meet is stored as it came.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// pg_dump's compression output buffer (`ZLIB_OUT_SIZE`): the payload of every
/// frame of a compressed block but its last.
pub const FRAME_PAYLOAD_BYTES: usize = 4096;

/// Original bytes not yet matched by re-created ones that the write path holds
/// before it gives up on a stream: deflate's output lags its input by a block of
/// at most a few hundred kilobytes, so a stream this far behind will not match.
const PENDING_LIMIT_BYTES: usize = 8 << 20;

/// The last bytes of a large re-created block that are also stored as they came,
/// after its text. A reader that seeks to a block reads from an aligned offset
/// before it (stdio aligns to its buffer, 8 KiB in pg_restore), which lands in the
/// previous block's last frames; without this copy, those few bytes would cost
/// re-creating the previous table whole.
const TAIL_COPY_BYTES: usize = if cfg!(test) { 4 << 10 } else { 16 << 10 };

/// The size from which a block gets [`TAIL_COPY_BYTES`]: re-creating a block of
/// 0.58 MB took 148 ms in the mount (`pg_restore -t` of the table after it), one of
/// this size takes about 15 ms, and its copy costs at most a quarter of its size.
const TAIL_SPAN_MIN_BYTES: u64 = if cfg!(test) { 16 << 10 } else { 64 << 10 };

/// The most text one preflate span holds. preflate-rs keeps the whole text of a
/// call in memory twice (its parser and its check) beside its tokens, about five
/// bytes per byte of text (0.8 GB measured at ingest with 128 MiB, its own default
/// limit), and a read needs it whole again: this bounds a backup and each open
/// file at about 0.2 GB, and a read at any offset re-creates at most this much
/// text (about a second). Smaller spans cost no more corrections (1.489 MB for
/// 110 MB of text in 8 MiB spans, 1.488 MB in 64 MiB ones), but each one's start
/// costs a stored copy of [`DICTIONARY_BYTES`].
pub const PREFLATE_TEXT_BYTES: usize = if cfg!(test) { 256 << 10 } else { 32 << 20 };

/// The text before a span that its re-creation starts from: deflate refers at
/// most 32 KiB back.
pub const DICTIONARY_BYTES: usize = 32 << 10;

/// How a dump's bytes differ from what is stored for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recreation {
    /// The length of the original file, which every read serves.
    pub original_len_bytes: u64,
    /// Where the hashed part of the original starts: the end of the archive's table
    /// of contents (the head before it is stored as it is).
    pub hashed_from: u64,
    /// blake3 of the original bytes from `hashed_from` to the end, hex; checked by
    /// every full read.
    pub blake3: String,
    /// The re-created spans, by ascending offset. Between two spans (and around
    /// them) the stored bytes are the original ones.
    pub spans: Vec<RecreatedSpan>,
    /// Compressed bytes that did not re-create and are stored as they came.
    #[serde(default)]
    pub kept_raw_bytes: u64,
    /// Not all of a gzip file's text is the spans' text: it has more than one
    /// member, a span was stored as it came, or the spans' text differs from what
    /// the member's CRC covers. The bytes re-create (they are checked on their
    /// own); only the text is not shown as the file's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_partial: bool,
}

/// A run of original bytes (a compressed table's frames) stored as the text they
/// hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecreatedSpan {
    pub original_offset: u64,
    pub original_len_bytes: u64,
    /// Where the inflated text lies in the stored stream, and its length.
    pub stored_offset: u64,
    pub text_len_bytes: u64,
    /// zlib's level, 1 to 9.
    pub level: u8,
    /// The archive's int size, for the frame lengths.
    pub int_size: u8,
    /// Whether the span is the whole block: the stream finished and the block's end
    /// marker written. Otherwise the span is a prefix of the framed output of the
    /// text, and the block's remaining bytes follow as they came.
    pub whole: bool,
    /// How the stored bytes become the original ones.
    #[serde(default, skip_serializing_if = "SpanCodec::is_zlib")]
    pub codec: SpanCodec,
    /// Stored bytes before the text: a [`SpanCodec::Preflate`] span's length and
    /// correction record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub record_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a span's original bytes are made from what is stored for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanCodec {
    /// pg_dump's frames of zlib's deflate at the span's level; what is stored is
    /// the text.
    #[default]
    Zlib,
    /// A bare deflate stream re-created by preflate-rs; what is stored is a 4-byte
    /// little-endian length, a correction record of that length, then the text
    /// (all of it counted in `text_len_bytes`).
    Preflate,
    /// Whole deflate blocks from inside a bare deflate stream, re-created by
    /// preflate-rs as the tail of a stream that starts with a stored block of
    /// `dictionary_bytes` of the text before them. What is stored is laid out as
    /// for [`SpanCodec::Preflate`], the text starting with that dictionary. The
    /// first block starts `first_bit` bits into the original byte before the
    /// span (that byte is stored as it came), or at the span's first byte when 0.
    PreflateAfter {
        dictionary_bytes: u32,
        first_bit: u8,
    },
}

impl SpanCodec {
    fn is_zlib(&self) -> bool {
        *self == SpanCodec::Zlib
    }

    /// Whether a span is re-created whole in one step (preflate-rs), not piece by
    /// piece as it is read (zlib).
    pub fn is_whole_step(&self) -> bool {
        !self.is_zlib()
    }
}

/// The longest run of whole deflate blocks at the start of a bare deflate stream
/// that preflate-rs re-creates, as text and correction record.
pub struct Preflated {
    /// The stream bytes the record and text re-create.
    pub deflate_len: usize,
    pub corrections: Vec<u8>,
    text: preflate_rs::PlainText,
}

impl Preflated {
    /// The text the re-created bytes hold.
    pub fn text(&self) -> &[u8] {
        self.text.text()
    }

    /// Whether the text and correction record give back `original`, the stream
    /// bytes split.
    pub fn recreates(&self, original: &[u8]) -> bool {
        recreate_deflate(self.text(), &self.corrections).is_some_and(|m| m == original)
    }
}

/// preflate-rs's settings for splitting a span. Its own check is off: the caller
/// checks the split with [`Preflated::recreates`] or [`PreflatedAfter::recreates`]
/// (on another core, while the next span is split), as it needs the same work.
fn split_config(plain_text_limit: usize) -> preflate_rs::PreflateConfig {
    preflate_rs::PreflateConfig {
        plain_text_limit,
        verify_compression: false,
        ..Default::default()
    }
}

/// Splits the start of a bare deflate stream into text and a correction record,
/// up to [`PREFLATE_TEXT_BYTES`] of text, not yet checked (see
/// [`Preflated::recreates`]); `None` when nothing splits (an encoder preflate-rs
/// cannot follow, or damage).
pub fn preflate_prefix(deflate: &[u8]) -> Option<Preflated> {
    let config = split_config(PREFLATE_TEXT_BYTES);
    // A library that asserts on input it cannot follow must not take the backup
    // down with it: what it cannot do is stored as it came.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut p = preflate_rs::PreflateStreamProcessor::new(&config);
        let r = p.decompress(deflate).ok()?;
        (r.compressed_size > 0).then(|| Preflated {
            deflate_len: r.compressed_size,
            corrections: r.corrections,
            text: p.detach_plain_text(),
        })
    }))
    .ok()
    .flatten()
}

/// Whole deflate blocks from inside a stream that preflate-rs re-creates after the
/// text before them (see [`SpanCodec::PreflateAfter`]).
pub struct PreflatedAfter {
    /// The stream bytes re-created, from the first byte the first block wholly
    /// owns: the byte after the one it starts in when `first_bit` is not 0.
    pub deflate_len: usize,
    pub first_bit: u8,
    pub corrections: Vec<u8>,
    dictionary_bytes: usize,
    /// The dictionary, then the text of the blocks.
    text: preflate_rs::PlainText,
}

impl PreflatedAfter {
    /// The text the re-created blocks hold.
    pub fn text(&self) -> &[u8] {
        &self.text.text()[self.dictionary_bytes..]
    }

    /// Whether the dictionary, text and correction record give back `original`,
    /// the stream bytes split (less the first one when `first_bit` is not 0).
    pub fn recreates(&self, original: &[u8]) -> bool {
        recreate_deflate(self.text.text(), &self.corrections)
            .and_then(|m| {
                unshift_after(
                    m,
                    &self.text.text()[..self.dictionary_bytes],
                    self.first_bit,
                )
            })
            .is_some_and(|m| m == original)
    }
}

/// A stored deflate block of `dictionary` (not the last block): the start of the
/// stream a [`SpanCodec::PreflateAfter`] span is re-created as the tail of.
fn stored_block(dictionary: &[u8]) -> Vec<u8> {
    let len = u16::try_from(dictionary.len()).expect("a dictionary fits a stored block");
    let mut b = Vec::with_capacity(5 + dictionary.len());
    // BFINAL 0 and BTYPE 00 in the first three bits, then padding to the byte.
    b.push(0);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&(!len).to_le_bytes());
    b.extend_from_slice(dictionary);
    b
}

/// The bits of `deflate` from bit `first_bit` of its first byte on, packed from
/// bit 0 (deflate fills each byte from its lowest bit).
fn bits_from(deflate: &[u8], first_bit: u8) -> Vec<u8> {
    if first_bit == 0 {
        return deflate.to_vec();
    }
    (0..deflate.len())
        .map(|i| {
            (deflate[i] >> first_bit) | deflate.get(i + 1).map_or(0, |&n| n << (8 - first_bit))
        })
        .collect()
}

/// The inverse of [`bits_from`], less the first byte when `first_bit` is not 0
/// (its low bits are not in `bits`): the original bytes the shifted ones wholly
/// hold.
fn bytes_of_bits(bits: &[u8], first_bit: u8) -> Vec<u8> {
    if first_bit == 0 {
        return bits.to_vec();
    }
    bits.windows(2)
        .map(|w| (w[0] >> (8 - first_bit)) | (w[1] << first_bit))
        .collect()
}

/// The bit of `deflate`, counted from its first byte's lowest, from `from_bit`
/// (0 to 7) to 7 bits after it, at which a deflate block starts that continues a
/// stream whose text so far ends with `dictionary`, or `None`.
///
/// preflate-rs reports where a span ends in whole bytes, so the next block is
/// known only to start within the 8 bits after that. It is found by inflating from
/// each of them with the dictionary: from a wrong bit zlib soon meets an impossible
/// code or a distance before the dictionary. A wrong answer costs only
/// compactness: preflate-rs then fails on the span, or its check does, and the
/// rest of the stream is stored as it came.
pub fn block_start(deflate: &[u8], from_bit: u8, dictionary: &[u8]) -> Option<usize> {
    let mut out = vec![0u8; 64 << 10];
    let from_bit = usize::from(from_bit);
    (from_bit..from_bit + 8).find(|&bit| {
        let probe = deflate.get(bit / 8..).unwrap_or_default();
        let input = bits_from(&probe[..probe.len().min(1 << 20)], (bit % 8) as u8);
        let mut z = flate2::Decompress::new(false);
        if z.set_dictionary(dictionary).is_err() {
            return false;
        }
        // A wrong bit can read as a short last block: the stream must end where the
        // input does, or go on for the whole probe.
        match z.decompress(&input, &mut out, flate2::FlushDecompress::None) {
            Ok(flate2::Status::StreamEnd) => z.total_in() == input.len() as u64,
            Ok(_) => z.total_out() == out.len() as u64,
            Err(_) => false,
        }
    })
}

/// Splits whole deflate blocks from bit `first_bit` of the first byte of `deflate`
/// on, up to [`PREFLATE_TEXT_BYTES`] of text, into text and a correction record
/// that re-create them after a stored block of `dictionary` (the 32 KiB of text
/// before them), not yet checked (see [`PreflatedAfter::recreates`]); `None` when
/// nothing splits.
pub fn preflate_after(dictionary: &[u8], deflate: &[u8], first_bit: u8) -> Option<PreflatedAfter> {
    let mut stream = stored_block(dictionary);
    let prefix = stream.len();
    stream.extend(bits_from(deflate, first_bit));
    let config = split_config(PREFLATE_TEXT_BYTES + dictionary.len());
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut p = preflate_rs::PreflateStreamProcessor::new(&config);
        let r = p.decompress(&stream).ok()?;
        // The bytes of the shifted stream past the prefix, less the one whose low
        // bits the span does not own.
        let original_len = r
            .compressed_size
            .checked_sub(prefix)?
            .checked_sub(usize::from(first_bit > 0))?;
        if original_len == 0 {
            return None;
        }
        let text = p.detach_plain_text();
        text.text()
            .starts_with(dictionary)
            .then_some(PreflatedAfter {
                deflate_len: original_len,
                first_bit,
                corrections: r.corrections,
                dictionary_bytes: dictionary.len(),
                text,
            })
    }))
    .ok()
    .flatten()
}

/// The deflate stream preflate-rs re-creates from `text` and `corrections`, or
/// `None` when they do not make one (damage, or a split that was wrong).
fn recreate_deflate(text: &[u8], corrections: &[u8]) -> Option<Vec<u8>> {
    // A library that asserts on input it cannot follow must not take the backup
    // or the mount down with it.
    std::panic::catch_unwind(|| preflate_rs::recreate_whole_deflate_stream(text, corrections))
        .ok()?
        .ok()
}

/// The original bytes a [`SpanCodec::PreflateAfter`] span's re-created stream
/// `made` holds after its stored block of `dictionary`.
fn unshift_after(made: Vec<u8>, dictionary: &[u8], first_bit: u8) -> Option<Vec<u8>> {
    let bits = made.strip_prefix(&stored_block(dictionary)[..])?;
    Some(bytes_of_bits(bits, first_bit))
}

/// The deflate bytes a [`SpanCodec::Preflate`] or [`SpanCodec::PreflateAfter`]
/// span's stored bytes re-create, or `None` when they do not (damage).
fn preflate_recreate(stored: &[u8], codec: SpanCodec) -> Option<Vec<u8>> {
    let n = u32::from_le_bytes(stored.get(..4)?.try_into().ok()?) as usize;
    let corrections = stored.get(4..4 + n)?;
    let text = stored.get(4 + n..)?;
    let made = recreate_deflate(text, corrections)?;
    match codec {
        SpanCodec::PreflateAfter {
            dictionary_bytes,
            first_bit,
        } => unshift_after(made, text.get(..dictionary_bytes as usize)?, first_bit),
        _ => Some(made),
    }
}

impl RecreatedSpan {
    /// The first original offset past the span.
    pub fn original_end(&self) -> u64 {
        self.original_offset + self.original_len_bytes
    }

    /// The first stored offset past the span's text.
    pub fn stored_end(&self) -> u64 {
        self.stored_offset + self.text_len_bytes
    }
}

/// Where an original offset lies in the stored stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// At this stored offset, stored as it is, for up to `run` bytes.
    Stored { offset: u64, run: u64 },
    /// Inside span `span` (an index into [`Recreation::spans`]), `into` bytes past
    /// its start.
    Span { span: usize, into: u64 },
}

impl Recreation {
    /// Where original byte `offset` (below the original length) is stored.
    pub fn locate(&self, offset: u64) -> Located {
        let i = self.spans.partition_point(|s| s.original_offset <= offset);
        let (orig_base, stored_base) = match i.checked_sub(1).map(|j| (j, &self.spans[j])) {
            Some((j, s)) if offset < s.original_end() => {
                return Located::Span {
                    span: j,
                    into: offset - s.original_offset,
                }
            }
            Some((_, s)) => (s.original_end(), s.stored_end()),
            None => (0, 0),
        };
        let next = self
            .spans
            .get(i)
            .map_or(self.original_len_bytes, |s| s.original_offset);
        Located::Stored {
            offset: stored_base + (offset - orig_base),
            run: next - offset,
        }
    }

    /// The span whose text is the whole of the block whose first frame starts at
    /// original offset `offset`, if that block was re-created whole.
    pub fn whole_span_at(&self, offset: u64) -> Option<&RecreatedSpan> {
        let i = self.spans.partition_point(|s| s.original_offset < offset);
        self.spans
            .get(i)
            .filter(|s| s.original_offset == offset && s.whole)
    }

    /// Where the text of a gzip file lies in the stored stream, as `(offset,
    /// length)` pieces in the text's order, when all of it is there: one member,
    /// each of whose spans was re-created. Besides them only its gzip header and
    /// trailer are stored, and the bytes where two spans meet; a gap of at most two
    /// bytes holds no text (a deflate block with any takes more than 16 bits).
    pub fn text_pieces(&self) -> Option<Vec<(u64, u64)>> {
        if self.text_partial {
            return None;
        }
        let (first, rest) = self.spans.split_first()?;
        if first.codec != SpanCodec::Preflate
            || rest
                .iter()
                .any(|s| !matches!(s.codec, SpanCodec::PreflateAfter { .. }))
        {
            return None;
        }
        // Older manifests have no `text_partial`: a lone span left bytes as they
        // came only when it stopped short of its stream's end.
        let seams_only = self
            .spans
            .windows(2)
            .all(|w| w[1].original_offset - w[0].original_end() <= 2)
            && (self.spans.len() > 1 || self.kept_raw_bytes == 0);
        // The gzip trailer is 8 bytes; before it, at most the last byte's padding.
        let last = self.spans.last()?;
        if !seams_only || self.original_len_bytes.checked_sub(last.original_end())? > 9 {
            return None;
        }
        Some(
            self.spans
                .iter()
                .map(|s| {
                    (
                        s.stored_offset + s.record_bytes,
                        s.text_len_bytes - s.record_bytes,
                    )
                })
                .collect(),
        )
    }

    /// Original bytes re-created from stored text.
    pub fn recreated_bytes(&self) -> u64 {
        self.spans.iter().map(|s| s.original_len_bytes).sum()
    }
}

/// Deflates text the way pg_dump does and frames the output as it frames it.
pub struct FramedDeflate {
    deflate: flate2::Compress,
    int_size: usize,
    /// Compressed bytes of the frame being filled.
    frame: Vec<u8>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for FramedDeflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedDeflate")
            .field("total_in", &self.deflate.total_in())
            .finish_non_exhaustive()
    }
}

impl FramedDeflate {
    /// A stream at zlib `level` (1 to 9) whose frame lengths are archive ints of
    /// `int_size` bytes.
    pub fn new(level: u8, int_size: usize) -> Self {
        FramedDeflate {
            deflate: flate2::Compress::new(flate2::Compression::new(u32::from(level)), true),
            int_size,
            frame: Vec::with_capacity(FRAME_PAYLOAD_BYTES),
            scratch: vec![0; 64 << 10],
        }
    }

    /// Deflates `text` and appends to `out` every whole frame it completes.
    pub fn feed(&mut self, mut text: &[u8], out: &mut Vec<u8>) {
        // Until the input is taken and a call leaves room in the output: a call
        // that fills it may hold more output back, and what a given text yields
        // must not depend on how it was cut.
        loop {
            let before = self.deflate.total_in();
            let (_, full) = self.run(text, flate2::FlushCompress::None, out);
            text = &text[(self.deflate.total_in() - before) as usize..];
            if text.is_empty() && !full {
                return;
            }
        }
    }

    /// Ends the stream: appends its last frames and the block's end marker.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        while !self.run(&[], flate2::FlushCompress::Finish, out).0 {}
        if !self.frame.is_empty() {
            let frame = std::mem::take(&mut self.frame);
            self.write_frame(&frame, out);
        }
        write_int(out, 0, self.int_size);
    }

    /// One deflate call: whether the stream ended, and whether the output buffer
    /// was filled.
    fn run(
        &mut self,
        input: &[u8],
        flush: flate2::FlushCompress,
        out: &mut Vec<u8>,
    ) -> (bool, bool) {
        let before = self.deflate.total_out();
        let status = self
            .deflate
            .compress(input, &mut self.scratch, flush)
            // Deflate fails only on misuse (a call after the end): a bug here.
            .expect("deflate accepts its input");
        let produced = (self.deflate.total_out() - before) as usize;
        let mut bytes = &self.scratch[..produced];
        while !bytes.is_empty() {
            let take = (FRAME_PAYLOAD_BYTES - self.frame.len()).min(bytes.len());
            self.frame.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.frame.len() == FRAME_PAYLOAD_BYTES {
                let frame = std::mem::take(&mut self.frame);
                self.write_frame(&frame, out);
                self.frame = frame;
                self.frame.clear();
            }
        }
        (
            status == flate2::Status::StreamEnd,
            produced == self.scratch.len(),
        )
    }

    fn write_frame(&self, payload: &[u8], out: &mut Vec<u8>) {
        write_int(out, payload.len() as u64, self.int_size);
        out.extend_from_slice(payload);
    }
}

/// An archive int: a zero sign byte and `int_size` little-endian magnitude bytes.
fn write_int(out: &mut Vec<u8>, value: u64, int_size: usize) {
    out.push(0);
    out.extend((0..int_size).map(|i| (value >> (8 * i)) as u8));
}

/// The level pg_dump's zlib uses for an archive's compression setting.
pub fn zlib_level(compression: i32) -> Option<u8> {
    match compression {
        -1 => Some(6),
        1..=9 => Some(compression as u8),
        _ => None,
    }
}

/// Builds the stored stream of a dump from its original bytes: the original bytes
/// as they are, except each compressed table's frames, which become the text they
/// hold wherever deflating that text again gives them back.
///
/// Fed in stream order by the dump parser, which knows where the frames are: bytes
/// outside them to [`StoredStreamBuilder::raw`], a block's frames to
/// [`StoredStreamBuilder::frames`] between [`StoredStreamBuilder::open`] and
/// [`StoredStreamBuilder::close`], and the text inflated from them to
/// [`StoredStreamBuilder::text`] right after the frame bytes it came from. Every
/// call appends to `out` what is to be stored in their place.
#[derive(Debug)]
pub struct StoredStreamBuilder {
    hashed_from: u64,
    original_pos: u64,
    stored_pos: u64,
    /// The hash of the original, `None` when no span can open (nothing to check).
    hasher: Option<blake3::Hasher>,
    spans: Vec<RecreatedSpan>,
    open: Option<OpenSpan>,
    kept_raw_bytes: u64,
    text_partial: bool,
}

#[derive(Debug)]
struct OpenSpan {
    original_offset: u64,
    stored_offset: u64,
    level: u8,
    int_size: usize,
    deflate: FramedDeflate,
    /// Original bytes not yet matched, from `original_offset + matched` on.
    pending: Vec<u8>,
    /// Re-created bytes not yet matched.
    made: Vec<u8>,
    matched: u64,
    text_len: u64,
    /// The stream stopped matching: the rest of the block is stored as it comes.
    given_up: bool,
    /// At least the last [`TAIL_COPY_BYTES`] original bytes fed, when there were
    /// that many.
    tail: Vec<u8>,
}

impl StoredStreamBuilder {
    /// A builder for a stream whose first `start` bytes (the archive's head) are
    /// stored as they are, elsewhere.
    pub fn new(start: u64) -> Self {
        StoredStreamBuilder {
            hashed_from: start,
            original_pos: start,
            stored_pos: start,
            hasher: Some(blake3::Hasher::new()),
            spans: Vec::new(),
            open: None,
            kept_raw_bytes: 0,
            text_partial: false,
        }
    }

    /// A builder that stores every byte as it is, for an archive with nothing to
    /// re-create (uncompressed, or a level it does not name): it hashes nothing, and
    /// [`StoredStreamBuilder::open`] must not be called.
    pub fn passing_through(start: u64) -> Self {
        StoredStreamBuilder {
            hasher: None,
            ..Self::new(start)
        }
    }

    /// Original bytes outside any compressed table's frames.
    pub fn raw(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        debug_assert!(self.open.is_none(), "raw bytes inside a span");
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        self.original_pos += bytes.len() as u64;
        self.stored_pos += bytes.len() as u64;
        out.extend_from_slice(bytes);
    }

    /// The text stored for the spans is not all the text of the stream (see
    /// [`Recreation::text_partial`]).
    pub fn text_partial(&mut self) {
        self.text_partial = true;
    }

    /// Original bytes of a compressed stream that are stored as they came.
    pub fn kept(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.raw(bytes, out);
        self.kept_raw_bytes += bytes.len() as u64;
    }

    /// Original bytes (the start of a bare deflate stream) that `p` re-creates:
    /// stored as its correction record and text.
    pub fn preflated(&mut self, original: &[u8], p: &Preflated, out: &mut Vec<u8>) {
        debug_assert_eq!(original.len(), p.deflate_len);
        self.preflate_span(
            original,
            &p.corrections,
            p.text(),
            0,
            SpanCodec::Preflate,
            out,
        );
    }

    /// Original bytes (whole blocks from inside a bare deflate stream) that `p`
    /// re-creates: stored as its correction record, its dictionary and its text.
    pub fn preflated_after(&mut self, original: &[u8], p: &PreflatedAfter, out: &mut Vec<u8>) {
        debug_assert_eq!(original.len(), p.deflate_len);
        let codec = SpanCodec::PreflateAfter {
            dictionary_bytes: p.dictionary_bytes as u32,
            first_bit: p.first_bit,
        };
        let text = p.text.text();
        self.preflate_span(
            original,
            &p.corrections,
            text,
            p.dictionary_bytes,
            codec,
            out,
        );
    }

    /// Stores a preflate-rs span: a 4-byte length, the correction record, then
    /// `text` (whose first `dictionary` bytes come before the span's own).
    fn preflate_span(
        &mut self,
        original: &[u8],
        corrections: &[u8],
        text: &[u8],
        dictionary: usize,
        codec: SpanCodec,
        out: &mut Vec<u8>,
    ) {
        debug_assert!(self.open.is_none(), "a preflate span inside a span");
        if let Some(h) = &mut self.hasher {
            h.update(original);
        }
        let stored_before = out.len();
        out.extend_from_slice(&(corrections.len() as u32).to_le_bytes());
        out.extend_from_slice(corrections);
        out.extend_from_slice(text);
        let stored_len = (out.len() - stored_before) as u64;
        self.spans.push(RecreatedSpan {
            original_offset: self.original_pos,
            original_len_bytes: original.len() as u64,
            stored_offset: self.stored_pos,
            text_len_bytes: stored_len,
            level: 0,
            int_size: 0,
            whole: true,
            codec,
            record_bytes: (4 + corrections.len() + dictionary) as u64,
        });
        self.original_pos += original.len() as u64;
        self.stored_pos += stored_len;
    }

    /// A compressed table's frames start here, deflated at zlib `level`.
    pub fn open(&mut self, level: u8, int_size: usize) {
        debug_assert!(self.hasher.is_some(), "a span opened while passing through");
        self.open = Some(OpenSpan {
            original_offset: self.original_pos,
            stored_offset: self.stored_pos,
            level,
            int_size,
            deflate: FramedDeflate::new(level, int_size),
            pending: Vec::new(),
            made: Vec::new(),
            matched: 0,
            text_len: 0,
            given_up: false,
            tail: Vec::new(),
        });
    }

    /// Whether a span is open: between [`StoredStreamBuilder::open`] and
    /// [`StoredStreamBuilder::close`].
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The next original bytes of the open span's frames.
    pub fn frames(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        self.original_pos += bytes.len() as u64;
        let Some(span) = &mut self.open else {
            self.stored_pos += bytes.len() as u64;
            out.extend_from_slice(bytes);
            return;
        };
        if span.given_up {
            self.stored_pos += bytes.len() as u64;
            self.kept_raw_bytes += bytes.len() as u64;
            out.extend_from_slice(bytes);
            return;
        }
        span.pending.extend_from_slice(bytes);
        span.tail.extend_from_slice(bytes);
        if span.tail.len() > 2 * TAIL_COPY_BYTES {
            span.tail.drain(..span.tail.len() - TAIL_COPY_BYTES);
        }
        if span.pending.len() > PENDING_LIMIT_BYTES {
            self.give_up(out);
        }
    }

    /// Text inflated from the frames fed so far.
    pub fn text(&mut self, text: &[u8], out: &mut Vec<u8>) {
        let Some(span) = &mut self.open else { return };
        if span.given_up {
            return;
        }
        out.extend_from_slice(text);
        self.stored_pos += text.len() as u64;
        span.text_len += text.len() as u64;
        span.deflate.feed(text, &mut span.made);
        if !span.settle() {
            self.give_up(out);
        }
    }

    /// The frames could not be inflated (or their text was not whole): what has
    /// matched so far stays re-created, the rest of the block is kept as it comes.
    pub fn abandon(&mut self, out: &mut Vec<u8>) {
        if self.open.as_ref().is_some_and(|s| !s.given_up) {
            self.give_up(out);
        }
    }

    /// The block's frames have all been fed, its end marker included.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        let Some(mut span) = self.open.take() else {
            return;
        };
        if span.given_up {
            return;
        }
        // Compared whole before anything is taken from `pending`: a tail that does
        // not match must still be there to store as it came.
        let mut end = std::mem::take(&mut span.made);
        span.deflate.finish(&mut end);
        if end == span.pending {
            let total = span.matched + span.pending.len() as u64;
            // The text still re-creates the whole block (`whole`); the span just
            // ends before the copied tail, which follows the text.
            let copied = if total >= TAIL_SPAN_MIN_BYTES {
                TAIL_COPY_BYTES.min(span.tail.len())
            } else {
                0
            };
            out.extend_from_slice(&span.tail[span.tail.len() - copied..]);
            self.stored_pos += copied as u64;
            self.spans.push(RecreatedSpan {
                original_offset: span.original_offset,
                original_len_bytes: total - copied as u64,
                stored_offset: span.stored_offset,
                text_len_bytes: span.text_len,
                level: span.level,
                int_size: span.int_size as u8,
                whole: true,
                codec: SpanCodec::Zlib,
                record_bytes: 0,
            });
            return;
        }
        self.open = Some(span);
        self.give_up(out);
        self.open = None;
    }

    /// Ends the open span at what has matched and stores the unmatched original
    /// bytes as they are.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        let Some(span) = &mut self.open else { return };
        span.given_up = true;
        if span.matched > 0 {
            self.spans.push(RecreatedSpan {
                original_offset: span.original_offset,
                original_len_bytes: span.matched,
                stored_offset: span.stored_offset,
                text_len_bytes: span.text_len,
                level: span.level,
                int_size: span.int_size as u8,
                whole: false,
                codec: SpanCodec::Zlib,
                record_bytes: 0,
            });
        } else if span.text_len > 0 {
            // Nothing matched: the text stored so far is dead weight in the stored
            // stream, mapped by no span; the original bytes follow it.
            self.spans.push(RecreatedSpan {
                original_offset: span.original_offset,
                original_len_bytes: 0,
                stored_offset: span.stored_offset,
                text_len_bytes: span.text_len,
                level: span.level,
                int_size: span.int_size as u8,
                whole: false,
                codec: SpanCodec::Zlib,
                record_bytes: 0,
            });
        }
        let pending = std::mem::take(&mut span.pending);
        span.made = Vec::new();
        self.kept_raw_bytes += pending.len() as u64;
        self.stored_pos += pending.len() as u64;
        out.extend_from_slice(&pending);
    }

    /// The stream has ended: how it maps to what was stored, or `None` when nothing
    /// was re-created (the stored stream is the original).
    pub fn finish(self) -> Option<Recreation> {
        debug_assert!(self.open.is_none(), "a span is still open");
        if self.spans.is_empty() {
            return None;
        }
        Some(Recreation {
            original_len_bytes: self.original_pos,
            hashed_from: self.hashed_from,
            blake3: self
                .hasher
                .expect("spans open only where the original is hashed")
                .finalize()
                .to_hex()
                .to_string(),
            spans: self.spans,
            kept_raw_bytes: self.kept_raw_bytes,
            text_partial: self.text_partial,
        })
    }
}

impl OpenSpan {
    /// Matches re-created bytes against original ones as far as both go; false at
    /// the first difference.
    fn settle(&mut self) -> bool {
        let n = self.made.len().min(self.pending.len());
        if self.made[..n] != self.pending[..n] {
            let same = self.made[..n]
                .iter()
                .zip(&self.pending[..n])
                .take_while(|(a, b)| a == b)
                .count();
            // The matching prefix is kept: re-creating it again from the same text
            // gives the same bytes.
            self.matched += same as u64;
            self.pending.drain(..same);
            self.made.drain(..same);
            return false;
        }
        self.matched += n as u64;
        self.pending.drain(..n);
        self.made.drain(..n);
        true
    }
}

/// Re-creates one span's original bytes from its text, continuing where the last
/// request stopped.
#[derive(Debug)]
pub struct SpanRecreator {
    span: RecreatedSpan,
    /// `None` for a preflate-rs span, made in one piece.
    deflate: Option<FramedDeflate>,
    /// Text fed so far.
    text_fed: u64,
    /// Re-created bytes kept, and the span offset of the first.
    made: Vec<u8>,
    made_at: u64,
    finished: bool,
}

/// How many re-created bytes a [`SpanRecreator`] keeps behind the last request,
/// for requests that arrive a little out of order (the kernel's readahead).
const KEEP_BEHIND_BYTES: u64 = 4 << 20;

impl SpanRecreator {
    /// A recreator at the start of `span`.
    pub fn new(span: RecreatedSpan) -> Self {
        SpanRecreator {
            span,
            deflate: (span.codec == SpanCodec::Zlib)
                .then(|| FramedDeflate::new(span.level, usize::from(span.int_size))),
            text_fed: 0,
            made: Vec::new(),
            made_at: 0,
            finished: false,
        }
    }

    /// Whether bytes from span offset `into` on can still be served without
    /// starting over.
    pub fn can_serve(&self, into: u64) -> bool {
        into >= self.made_at
    }

    /// How much text to feed next to produce up to span offset `end`, as
    /// `(stored offset, length)`; `None` once enough has been produced.
    pub fn wants(&self, end: u64) -> Option<(u64, u64)> {
        let have = self.made_at + self.made.len() as u64;
        if have >= end.min(self.span.original_len_bytes) || self.finished {
            return None;
        }
        let left = self.span.text_len_bytes - self.text_fed;
        let step = match self.span.codec {
            // A read that only enters a span (readahead past the end of the table
            // before it) wants its first bytes soon: a short first step.
            SpanCodec::Zlib if self.text_fed == 0 => left.min(64 << 10),
            SpanCodec::Zlib => left.min(1 << 20),
            SpanCodec::Preflate | SpanCodec::PreflateAfter { .. } => left,
        };
        Some((self.span.stored_offset + self.text_fed, step))
    }

    /// Feeds the next text, as [`SpanRecreator::wants`] asked for. Re-created bytes
    /// before `keep_from` may be dropped.
    pub fn feed(&mut self, text: &[u8], keep_from: u64) {
        self.drop_before(keep_from);
        self.text_fed += text.len() as u64;
        let Some(deflate) = &mut self.deflate else {
            // Bytes of another length than the span's are damage, which
            // `bytes` reports by finding none.
            if let Some(made) = preflate_recreate(text, self.span.codec)
                .filter(|m| m.len() as u64 == self.span.original_len_bytes)
            {
                self.made = made;
                self.made_at = 0;
            }
            self.finished = true;
            return;
        };
        deflate.feed(text, &mut self.made);
        if self.text_fed >= self.span.text_len_bytes {
            if self.span.whole {
                deflate.finish(&mut self.made);
            }
            self.finished = true;
        }
    }

    fn drop_before(&mut self, keep_from: u64) {
        let keep_from = keep_from.saturating_sub(KEEP_BEHIND_BYTES);
        if keep_from > self.made_at {
            let n = ((keep_from - self.made_at) as usize).min(self.made.len());
            self.made.drain(..n);
            self.made_at += n as u64;
        }
    }

    /// The re-created bytes in span offsets `into..end`, once produced; `None` when
    /// the text ran out before them (the span does not re-create: damage).
    pub fn bytes(&self, into: u64, end: u64) -> Option<&[u8]> {
        let end = end.min(self.span.original_len_bytes);
        let from = usize::try_from(into.checked_sub(self.made_at)?).ok()?;
        let to = usize::try_from(end - self.made_at).ok()?;
        self.made.get(from..to)
    }
}

/// The whole original from a whole stored stream held in memory, or `None` when a
/// span does not re-create (its text runs out). For tests and the fuzz targets: the
/// read path re-creates piece by piece instead.
pub fn recreate_all(stored: &[u8], rec: &Recreation) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(rec.original_len_bytes as usize);
    let mut at = 0u64;
    while at < rec.original_len_bytes {
        match rec.locate(at) {
            Located::Stored { offset, run } => {
                let from = usize::try_from(offset).ok()?;
                let to = usize::try_from(offset + run).ok()?;
                out.extend_from_slice(stored.get(from..to)?);
                at += run;
            }
            Located::Span { span, into } => {
                let s = rec.spans[span];
                let mut r = SpanRecreator::new(s);
                while let Some((from, len)) = r.wants(s.original_len_bytes) {
                    let from = usize::try_from(from).ok()?;
                    let to = from.checked_add(usize::try_from(len).ok()?)?;
                    r.feed(stored.get(from..to)?, 0);
                }
                out.extend_from_slice(r.bytes(into, s.original_len_bytes)?);
                at = s.original_end();
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Text like a table's COPY data: similar rows with changing numbers.
    fn copy_text(rows: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut x = seed;
        for i in 0..rows {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            writeln!(
                out,
                "{i}\tteam {}\t{}\t2026-11-{:02}",
                x >> 50,
                x >> 40,
                i % 28 + 1
            )
            .unwrap();
        }
        out
    }

    /// A split is trusted only once it gives back the very bytes split: a split
    /// checked against other bytes fails, first span and later ones alike.
    #[test]
    fn a_split_is_checked_against_the_bytes_it_came_from() {
        let text = copy_text(40_000, 3);
        assert!(text.len() > 2 * PREFLATE_TEXT_BYTES);
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(&text).unwrap();
        let deflate = e.finish().unwrap();
        let first = preflate_prefix(&deflate).expect("splits");
        let original = &deflate[..first.deflate_len];
        assert!(first.recreates(original));
        let mut other = original.to_vec();
        other[original.len() / 2] ^= 0x10;
        assert!(!first.recreates(&other));
        assert!(!first.recreates(&original[1..]));

        let dictionary = &first.text()[first.text().len() - DICTIONARY_BYTES..];
        let rest = &deflate[first.deflate_len..];
        let bit = block_start(rest, 0, dictionary).expect("the next block is found");
        let after = preflate_after(dictionary, &rest[bit / 8..], (bit % 8) as u8).unwrap();
        let skip = bit / 8 + usize::from(after.first_bit > 0);
        let original = &rest[skip..skip + after.deflate_len];
        assert!(after.recreates(original));
        assert!(text[first.text().len()..].starts_with(after.text()));
        let mut other = original.to_vec();
        other[0] ^= 1;
        assert!(!after.recreates(&other));
        // Another dictionary gives back the same bytes (deflate names distances,
        // not text) but other text: the reason the gzip inspector checks the
        // spans' text against the member's CRC before it shows the text.
        let wrong = &first.text()[..DICTIONARY_BYTES];
        assert_ne!(wrong, dictionary);
        let moved = preflate_after(wrong, &rest[bit / 8..], (bit % 8) as u8).unwrap();
        assert!(moved.recreates(original));
        assert!(moved.text() != after.text());
    }

    /// Frames `text` as pg_dump does: its zlib output cut at 4096-byte buffers.
    fn pg_dump_frames(text: &[u8], level: u8, int_size: usize, piece: usize) -> Vec<u8> {
        let mut z =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level.into()));
        for p in text.chunks(piece) {
            z.write_all(p).unwrap();
        }
        let stream = z.finish().unwrap();
        let mut out = Vec::new();
        for f in stream.chunks(FRAME_PAYLOAD_BYTES) {
            write_int(&mut out, f.len() as u64, int_size);
            out.extend_from_slice(f);
        }
        write_int(&mut out, 0, int_size);
        out
    }

    /// Feeds `frames` (one block) through a builder the way the dump parser does,
    /// inflating as it goes, after `before` raw bytes; returns the stored stream and
    /// the recreation.
    fn build(
        before: &[u8],
        frames: &[u8],
        level: u8,
        piece: usize,
    ) -> (Vec<u8>, Option<Recreation>) {
        let mut b = StoredStreamBuilder::new(0);
        let mut out = Vec::new();
        b.raw(before, &mut out);
        b.open(level, 4);
        let mut inflate = flate2::Decompress::new(true);
        let mut scratch = vec![0u8; 1 << 16];
        let mut rest = frames;
        loop {
            let (int, after) = rest.split_at(5);
            b.frames(int, &mut out);
            let len = u32::from_le_bytes(int[1..5].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            let (payload, after) = after.split_at(len);
            rest = after;
            for p in payload.chunks(piece) {
                b.frames(p, &mut out);
                let mut input = p;
                let mut full = false;
                while !input.is_empty() || full {
                    let (used_before, made_before) = (inflate.total_in(), inflate.total_out());
                    let status =
                        inflate.decompress(input, &mut scratch, flate2::FlushDecompress::None);
                    let used = (inflate.total_in() - used_before) as usize;
                    let made = (inflate.total_out() - made_before) as usize;
                    full = made == scratch.len();
                    b.text(&scratch[..made], &mut out);
                    input = &input[used..];
                    if status.is_err() {
                        // As the dump parser does when a stream does not inflate.
                        b.abandon(&mut out);
                    }
                    if status.is_err() || (used == 0 && made == 0) {
                        break;
                    }
                }
            }
        }
        b.close(&mut out);
        (out, b.finish())
    }

    #[test]
    fn the_framed_output_of_deflating_text_again_is_pg_dumps() {
        let text = copy_text(20_000, 1);
        for level in [1u8, 6, 9] {
            let frames = pg_dump_frames(&text, level, 4, 77);
            let mut made = Vec::new();
            let mut d = FramedDeflate::new(level, 4);
            for p in text.chunks(5000) {
                d.feed(p, &mut made);
            }
            d.finish(&mut made);
            assert_eq!(made, frames, "level {level}");
        }
    }

    #[test]
    fn what_text_yields_does_not_depend_on_how_it_was_cut() {
        // Incompressible text fills the output buffer on a call that takes the last
        // input: the bytes held back must come out before feed returns, or a span
        // that stops matching could not be re-created from its text in one piece.
        let mut x = 7u64;
        let noise: Vec<u8> = (0..(1 << 20) + 4096)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 33) as u8
            })
            .collect();
        for len in (0..60).map(|k| 60_000 + k * 16_411) {
            let text = &noise[..len];
            let (mut whole, mut cut) = (Vec::new(), Vec::new());
            FramedDeflate::new(6, 4).feed(text, &mut whole);
            let mut d = FramedDeflate::new(6, 4);
            for p in text.chunks(1000) {
                d.feed(p, &mut cut);
            }
            assert!(!whole.is_empty());
            assert!(
                whole == cut,
                "{len} bytes give {} or {}",
                whole.len(),
                cut.len()
            );
        }
    }

    fn read_back(stored: &[u8], rec: &Recreation) -> Vec<u8> {
        recreate_all(stored, rec).expect("every span re-creates")
    }

    #[test]
    fn a_block_is_stored_as_text_and_read_back_exactly() {
        let text = copy_text(30_000, 2);
        let frames = pg_dump_frames(&text, 6, 4, 100);
        let mut original = b"head".to_vec();
        original.extend_from_slice(&frames);
        let (stored, rec) = build(b"head", &frames, 6, 1000);
        let rec = rec.expect("something was re-created");
        assert_eq!(rec.spans.len(), 1);
        assert!(rec.spans[0].whole);
        assert_eq!(rec.kept_raw_bytes, 0);
        let copied = frames.len() - rec.spans[0].original_len_bytes as usize;
        assert_eq!(copied, TAIL_COPY_BYTES, "a large block's tail is copied");
        assert!(
            stored[4..] == [&text[..], &frames[frames.len() - copied..]].concat()[..],
            "the stored stream holds the text, then the block's last bytes"
        );
        assert_eq!(read_back(&stored, &rec), original);
        assert_eq!(rec.blake3, blake3::hash(&original).to_hex().to_string());
        // Reading those last bytes starts no re-creation: they are stored.
        assert!(matches!(
            rec.locate(original.len() as u64 - 1),
            Located::Stored { .. }
        ));
    }

    #[test]
    fn a_stream_another_encoder_made_is_kept_as_it_came() {
        let text = copy_text(30_000, 3);
        // Level 9 frames announced as level 6: re-creating at 6 differs early.
        let frames = pg_dump_frames(&text, 9, 4, 100);
        let mut original = b"xx".to_vec();
        original.extend_from_slice(&frames);
        let (stored, rec) = build(b"xx", &frames, 6, 4096);
        let rec = rec.expect("something was re-created");
        assert!(rec.kept_raw_bytes > 0);
        assert!(rec.spans.iter().all(|s| !s.whole));
        assert_eq!(read_back(&stored, &rec), original);
    }

    #[test]
    fn a_stream_that_stops_matching_keeps_its_matching_start() {
        let text = copy_text(60_000, 4);
        let mut frames = pg_dump_frames(&text, 6, 4, 100);
        // Damage one byte well inside: the frames before it still re-create.
        let at = (frames.len() / 4101) * 3 / 4 * 4101 + 5 + 100;
        frames[at] ^= 0x55;
        let mut original = b"h".to_vec();
        original.extend_from_slice(&frames);
        let (stored, rec) = build(b"h", &frames, 6, 3000);
        let rec = rec.expect("something was re-created");
        let s = rec.spans[0];
        assert!(!s.whole);
        assert!(s.original_len_bytes > 0 && s.original_len_bytes <= at as u64);
        assert_eq!(read_back(&stored, &rec), original);
    }

    /// The text of a gzip file is shown only when all of it is stored: one
    /// member, each span re-created, at most two bytes between spans, a few after
    /// the last (padding, trailer), and the spans' text matching the member's CRC.
    #[test]
    fn text_pieces_only_when_all_the_text_is_stored() {
        let after = SpanCodec::PreflateAfter {
            dictionary_bytes: 10,
            first_bit: 3,
        };
        let span = |o, ol, s, sl, codec, record_bytes| RecreatedSpan {
            original_offset: o,
            original_len_bytes: ol,
            stored_offset: s,
            text_len_bytes: sl,
            level: 0,
            int_size: 0,
            whole: true,
            codec,
            record_bytes,
        };
        let rec = |spans: Vec<RecreatedSpan>, len| Recreation {
            original_len_bytes: len,
            hashed_from: 0,
            blake3: String::new(),
            spans,
            kept_raw_bytes: 3,
            text_partial: false,
        };
        // Header 10 bytes, spans meeting over one byte, then padding and trailer.
        let whole = rec(
            vec![
                span(10, 100, 10, 500, SpanCodec::Preflate, 20),
                span(111, 100, 511, 600, after, 34),
            ],
            111 + 100 + 1 + 8,
        );
        assert_eq!(whole.text_pieces(), Some(vec![(30, 480), (545, 566)]));
        let mut differs = whole.clone();
        differs.text_partial = true;
        assert_eq!(differs.text_pieces(), None);
        // A span kept as it came between the two: its text is not stored.
        let gap = rec(
            vec![
                span(10, 100, 10, 500, SpanCodec::Preflate, 20),
                span(113, 100, 513, 600, after, 34),
            ],
            113 + 100 + 9,
        );
        assert_eq!(gap.text_pieces(), None);
        // The member's end kept as it came.
        let short = rec(
            vec![span(10, 100, 10, 500, SpanCodec::Preflate, 20)],
            10 + 100 + 10,
        );
        assert_eq!(short.text_pieces(), None);
        // A second member starts with a first span again: two scripts.
        let two = rec(
            vec![
                span(10, 100, 10, 500, SpanCodec::Preflate, 20),
                span(111, 100, 511, 600, SpanCodec::Preflate, 20),
            ],
            111 + 100 + 9,
        );
        assert_eq!(two.text_pieces(), None);
    }

    #[test]
    fn locate_maps_raw_runs_around_spans() {
        let span = |o, ol, s, sl| RecreatedSpan {
            original_offset: o,
            original_len_bytes: ol,
            stored_offset: s,
            text_len_bytes: sl,
            level: 6,
            int_size: 4,
            whole: true,
            codec: SpanCodec::Zlib,
            record_bytes: 0,
        };
        let rec = Recreation {
            original_len_bytes: 1000,
            hashed_from: 0,
            blake3: String::new(),
            spans: vec![span(100, 200, 100, 900), span(500, 100, 1200, 50)],
            kept_raw_bytes: 0,
            text_partial: false,
        };
        assert_eq!(
            rec.locate(0),
            Located::Stored {
                offset: 0,
                run: 100
            }
        );
        assert_eq!(rec.locate(150), Located::Span { span: 0, into: 50 });
        assert_eq!(
            rec.locate(300),
            Located::Stored {
                offset: 1000,
                run: 200
            }
        );
        assert_eq!(rec.locate(599), Located::Span { span: 1, into: 99 });
        assert_eq!(
            rec.locate(600),
            Located::Stored {
                offset: 1250,
                run: 400
            }
        );
        assert_eq!(rec.whole_span_at(500).map(|s| s.stored_offset), Some(1200));
        assert_eq!(rec.whole_span_at(501), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the text, the level it was written at, the level announced, the
        /// piece sizes and a damaged byte: the stored stream gives back every byte,
        /// and a stream written at the announced level is re-created whole.
        #[test]
        fn every_stream_reads_back_exactly(
            rows in 0usize..6000,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            written in 1u8..=9,
            announced in 1u8..=9,
            piece in 1usize..9000,
            damage in proptest::option::of(0usize..1_000_000),
            seed in 0u64..1000,
        ) {
            let mut text = copy_text(rows, seed);
            text.extend_from_slice(&noise);
            let mut frames = pg_dump_frames(&text, written, 4, 1 + piece % 977);
            let mut payload_byte = None;
            if let Some(d) = damage {
                // A payload byte, not a frame length: the parser would refuse those.
                let frame = d % (frames.len() / 4101).max(1);
                let at = frame * 4101 + 5 + d % 4096;
                if at < frames.len() - 5 {
                    frames[at] ^= 0xA5;
                    payload_byte = Some(at);
                }
            }
            let (stored, rec) = build(b"HEAD", &frames, announced, piece);
            let mut original = b"HEAD".to_vec();
            original.extend_from_slice(&frames);
            // Nothing re-created: what is stored is the original itself.
            let back = rec.as_ref().map_or_else(|| stored.clone(), |r| read_back(&stored, r));
            proptest::prop_assert!(back == original);
            if written == announced && payload_byte.is_none() {
                let rec = rec.expect("a stream at its level re-creates");
                proptest::prop_assert_eq!(rec.kept_raw_bytes, 0);
                proptest::prop_assert!(rec.spans.len() == 1 && rec.spans[0].whole);
            }
        }
    }
}
