//! `pg_dump | gzip` files on stdin: checked as they stream by (whole gzip members,
//! their CRCs and lengths, a complete plain-SQL dump inside) and stored as their SQL
//! text where the deflate stream re-creates (see [`crate::recreate`]).
//!
//! Every member is inflated with zlib to check it, whatever is stored. Its deflate
//! bytes are held until they hold more than [`PREFLATE_TEXT_BYTES`] of text (or
//! [`HOLD_LIMIT_BYTES`]) or the member ends, then handed to preflate-rs a span at a
//! time: the whole blocks that hold up to that much text, re-created from text and
//! a correction record, each span after the first from the text before it (see
//! [`crate::recreate`]). A span that does not re-create is stored as it came; from
//! the first one preflate-rs cannot split, so is the rest of the member.

#![forbid(unsafe_code)]

use crate::recreate::{
    block_start, preflate_after, preflate_prefix, Preflated, PreflatedAfter, Recreation,
    StoredStreamBuilder, DICTIONARY_BYTES, PREFLATE_TEXT_BYTES,
};

/// The gzip magic, which tells a gzip file from a custom-format archive.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Deflate bytes of one member held for re-creation: a compression ratio below 2
/// would reach this before [`PREFLATE_TEXT_BYTES`] of text.
const HOLD_LIMIT_BYTES: usize = 64 << 20;

/// How much of the text's start and end is kept to recognise a pg_dump script.
const EDGE_BYTES: usize = 512;

/// Why a gzip input is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GzipSqlError {
    #[error("Gzip member {member} has a bad header: {why}")]
    BadHeader { member: u32, why: &'static str },
    #[error("Gzip member {member} is not valid deflate data: {why}")]
    BadDeflate { member: u32, why: String },
    #[error(
        "Gzip member {member} fails its check: its trailer says CRC {stated_crc:08x} and \
         {stated_len} bytes, its data has CRC {crc:08x} and {len} bytes"
    )]
    BadTrailer {
        member: u32,
        stated_crc: u32,
        stated_len: u32,
        crc: u32,
        len: u32,
    },
    #[error("Input ends inside gzip member {member}: the file is truncated")]
    Truncated { member: u32 },
    #[error("Input has bytes after its last gzip member that are not a gzip member")]
    TrailingGarbage,
    #[error(
        "The gzipped text is not a pg_dump plain-text dump: it does not start with \
         \"-- PostgreSQL database dump\""
    )]
    NotADump,
    #[error(
        "The gzipped SQL dump does not end with pg_dump's \"dump complete\" line: pg_dump \
         did not finish"
    )]
    Incomplete,
}

enum State {
    Header,
    Deflate,
    Trailer,
    /// After a member's trailer: the input may end, or another member start.
    Between,
}

/// Checks a `pg_dump | gzip` stream and builds what is stored for it.
pub struct GzipSqlInspector {
    state: State,
    /// Input not yet taken by the state it belongs to.
    pending: Vec<u8>,
    member: u32,
    inflate: flate2::Decompress,
    crc: crc32fast::Hasher,
    member_len: u64,
    scratch: Vec<u8>,
    /// The member's deflate bytes not yet in a span, while it may still be
    /// re-created: the first may hold the last bits of the span before.
    held: Vec<u8>,
    holding: bool,
    /// Whether the member's first span was split.
    split_first: bool,
    /// The member's text in spans so far, and the last [`DICTIONARY_BYTES`] of it.
    text_settled: u64,
    dictionary: Vec<u8>,
    /// The first bit of `held[0]` that is not the last span's: the last span's
    /// bytes ended where its first block started in its first byte.
    first_bit: u8,
    /// The last span split, while its check runs.
    checking: Option<Checking>,
    /// The CRC of the member's text in spans so far.
    span_crc: crc32fast::Hasher,
    head: Vec<u8>,
    tail: Vec<u8>,
    builder: StoredStreamBuilder,
    out: Vec<u8>,
    failed: Option<GzipSqlError>,
}

impl Default for GzipSqlInspector {
    fn default() -> Self {
        GzipSqlInspector {
            state: State::Header,
            pending: Vec::new(),
            member: 0,
            inflate: flate2::Decompress::new(false),
            crc: crc32fast::Hasher::new(),
            member_len: 0,
            scratch: vec![0; 256 << 10],
            held: Vec::new(),
            holding: false,
            split_first: false,
            text_settled: 0,
            dictionary: Vec::new(),
            first_bit: 0,
            checking: None,
            span_crc: crc32fast::Hasher::new(),
            head: Vec::new(),
            tail: Vec::new(),
            builder: StoredStreamBuilder::new(0),
            out: Vec::new(),
            failed: None,
        }
    }
}

impl GzipSqlInspector {
    /// Takes the next bytes of the stream.
    ///
    /// Errors: a [`GzipSqlError`] once the stream is known to be bad; every later
    /// call returns it again.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), GzipSqlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.pending.extend_from_slice(bytes);
        let r = self.advance();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// Appends to `into` what is stored for the bytes fed so far.
    pub fn take_stored(&mut self, into: &mut Vec<u8>) {
        into.append(&mut self.out);
    }

    /// The stream has ended: how the stored bytes map to it, if any of it was
    /// re-created.
    ///
    /// Errors: a [`GzipSqlError`] when the stream is not a whole gzip file of a
    /// whole pg_dump script.
    pub fn finish(self) -> Result<Option<Recreation>, GzipSqlError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.state {
            State::Between => {}
            State::Header if self.member > 0 && self.pending.is_empty() => {}
            State::Header => {
                return Err(GzipSqlError::Truncated {
                    member: self.member + 1,
                })
            }
            State::Deflate | State::Trailer => {
                return Err(GzipSqlError::Truncated {
                    member: self.member,
                })
            }
        }
        if !self.head.starts_with(b"--\n-- PostgreSQL database ") {
            return Err(GzipSqlError::NotADump);
        }
        let complete = [
            &b"-- PostgreSQL database dump complete\n"[..],
            b"-- PostgreSQL database cluster dump complete\n",
        ];
        if !complete
            .iter()
            .any(|line| self.tail.windows(line.len()).any(|w| w == *line))
        {
            return Err(GzipSqlError::Incomplete);
        }
        Ok(self.builder.finish())
    }

    fn advance(&mut self) -> Result<(), GzipSqlError> {
        loop {
            match self.state {
                State::Header | State::Between => {
                    if self.pending.is_empty() {
                        return Ok(());
                    }
                    if matches!(self.state, State::Between) && self.pending[0] != GZIP_MAGIC[0] {
                        return Err(GzipSqlError::TrailingGarbage);
                    }
                    let member = self.member + 1;
                    let Some(n) = header_len(&self.pending, member)? else {
                        self.state = State::Header;
                        return Ok(());
                    };
                    self.builder.raw(&self.pending[..n], &mut self.out);
                    self.pending.drain(..n);
                    self.member = member;
                    self.inflate.reset(false);
                    self.crc = crc32fast::Hasher::new();
                    self.member_len = 0;
                    self.holding = true;
                    self.split_first = false;
                    self.text_settled = 0;
                    self.dictionary.clear();
                    self.span_crc = crc32fast::Hasher::new();
                    self.state = State::Deflate;
                }
                State::Deflate => {
                    if self.pending.is_empty() {
                        return Ok(());
                    }
                    let (taken, ended) = self.inflate_some()?;
                    let input = &self.pending[..taken];
                    if self.holding {
                        self.held.extend_from_slice(input);
                    } else {
                        self.builder.kept(input, &mut self.out);
                    }
                    self.pending.drain(..taken);
                    if self.holding {
                        self.settle_held(ended);
                    }
                    if ended {
                        self.state = State::Trailer;
                    } else if taken == 0 {
                        return Ok(());
                    }
                }
                State::Trailer => {
                    let Some(trailer) = self.pending.get(..8) else {
                        return Ok(());
                    };
                    let stated_crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
                    let stated_len = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
                    let crc = std::mem::take(&mut self.crc).finalize();
                    // ISIZE is the length modulo 2^32.
                    let len = self.member_len as u32;
                    if (stated_crc, stated_len) != (crc, len) {
                        return Err(GzipSqlError::BadTrailer {
                            member: self.member,
                            stated_crc,
                            stated_len,
                            crc,
                            len,
                        });
                    }
                    // Each span's text comes from preflate-rs's own inflating from
                    // the text before it: all of it must be the member's.
                    let span_crc = std::mem::take(&mut self.span_crc).finalize();
                    if self.text_settled == self.member_len && span_crc != crc {
                        tracing::warn!(
                            "The re-created spans of gzip member {} hold other text than \
                             the member (its bytes re-create): its text is not shown",
                            self.member
                        );
                    }
                    if self.text_settled != self.member_len || span_crc != crc || self.member > 1 {
                        self.builder.text_partial();
                    }
                    self.builder.raw(&self.pending[..8], &mut self.out);
                    self.pending.drain(..8);
                    self.state = State::Between;
                }
            }
        }
    }

    /// Inflates from the pending input: how many bytes were taken, and whether the
    /// member's deflate stream ended.
    fn inflate_some(&mut self) -> Result<(usize, bool), GzipSqlError> {
        let start = self.inflate.total_in();
        loop {
            let at = (self.inflate.total_in() - start) as usize;
            let before = self.inflate.total_out();
            let status = self
                .inflate
                .decompress(
                    &self.pending[at..],
                    &mut self.scratch,
                    flate2::FlushDecompress::None,
                )
                .map_err(|e| GzipSqlError::BadDeflate {
                    member: self.member,
                    why: e.to_string(),
                })?;
            let made = (self.inflate.total_out() - before) as usize;
            let text = &self.scratch[..made];
            self.crc.update(text);
            self.member_len += made as u64;
            if self.head.len() < EDGE_BYTES {
                let n = (EDGE_BYTES - self.head.len()).min(made);
                self.head.extend_from_slice(&text[..n]);
            }
            self.tail
                .extend_from_slice(&text[made.saturating_sub(EDGE_BYTES)..]);
            let excess = self.tail.len().saturating_sub(EDGE_BYTES);
            self.tail.drain(..excess);
            let taken = (self.inflate.total_in() - start) as usize;
            if status == flate2::Status::StreamEnd {
                return Ok((taken, true));
            }
            // Until the input is taken and a call leaves room in the output: a
            // call that fills it may hold text back.
            if taken == self.pending.len() && made < self.scratch.len() {
                return Ok((taken, false));
            }
            if made == 0 && taken == at {
                // No progress with input left: zlib wants more than there is.
                return Ok((taken, false));
            }
        }
    }

    /// Splits spans off the held deflate bytes while they hold more than a span's
    /// text, or all of them once the member `ended`, each into text and correction
    /// record, and stores each span once a check on another thread finds it
    /// re-creates (or as it came if not). From the first span preflate-rs cannot
    /// split, the member's bytes are stored as they came.
    fn settle_held(&mut self, ended: bool) {
        loop {
            let behind = self.member_len - self.text_settled;
            if !ended && behind <= PREFLATE_TEXT_BYTES as u64 && self.held.len() <= HOLD_LIMIT_BYTES
            {
                return;
            }
            // A block takes at least 10 bits: one byte left is the last one's end.
            if self.held.len() <= 1 {
                break;
            }
            let split = if !self.split_first {
                preflate_prefix(&self.held).map(|p| {
                    self.split_first = true;
                    self.first_bit = 0;
                    (0, p.deflate_len, Split::First(p))
                })
            } else {
                block_start(&self.held, self.first_bit, &self.dictionary).and_then(|bit| {
                    let p =
                        preflate_after(&self.dictionary, &self.held[bit / 8..], (bit % 8) as u8)?;
                    // The bytes before the one the first block starts in are the
                    // last span's end; that byte holds both when it starts inside.
                    let seam = bit / 8 + usize::from(p.first_bit > 0);
                    self.first_bit = p.first_bit;
                    Some((seam, p.deflate_len, Split::After(p)))
                })
            };
            let Some((seam, len, split)) = split else {
                break;
            };
            let text = split.text();
            self.text_settled += text.len() as u64;
            self.span_crc.update(text);
            // A span shorter than the dictionary leaves text before it in the window.
            self.dictionary
                .extend_from_slice(&text[text.len().saturating_sub(DICTIONARY_BYTES)..]);
            let excess = self.dictionary.len().saturating_sub(DICTIONARY_BYTES);
            self.dictionary.drain(..excess);
            let mut taken: Vec<u8> = self.held.drain(..seam + len).collect();
            let original = taken.split_off(seam);
            self.store_checked();
            self.checking = Some(Checking::start(taken, original, split));
        }
        self.store_checked();
        self.holding = false;
        let held = std::mem::take(&mut self.held);
        self.builder.kept(&held, &mut self.out);
    }

    /// Stores the span being checked, once its check is done.
    fn store_checked(&mut self) {
        let Some(checking) = self.checking.take() else {
            return;
        };
        let (seam, original, split, recreates) = checking.finish();
        self.builder.kept(&seam, &mut self.out);
        match split {
            _ if !recreates => {
                self.builder.text_partial();
                self.builder.kept(&original, &mut self.out)
            }
            Split::First(p) => self.builder.preflated(&original, &p, &mut self.out),
            Split::After(p) => self.builder.preflated_after(&original, &p, &mut self.out),
        }
    }
}

/// A span split off a member, not yet checked.
enum Split {
    First(Preflated),
    After(PreflatedAfter),
}

impl Split {
    fn text(&self) -> &[u8] {
        match self {
            Split::First(p) => p.text(),
            Split::After(p) => p.text(),
        }
    }

    fn recreates(&self, original: &[u8]) -> bool {
        match self {
            Split::First(p) => p.recreates(original),
            Split::After(p) => p.recreates(original),
        }
    }
}

/// A span whose re-creation is being checked on a thread of its own, while the
/// next span is split: the two halves of the work on two cores.
struct Checking(std::thread::JoinHandle<(Vec<u8>, Vec<u8>, Split, bool)>);

impl Checking {
    /// Checks `split` against `original`; `seam` (the bytes before the span,
    /// stored as they came) rides along to be stored with it.
    fn start(seam: Vec<u8>, original: Vec<u8>, split: Split) -> Self {
        Checking(std::thread::spawn(move || {
            let ok = split.recreates(&original);
            (seam, original, split, ok)
        }))
    }

    /// Waits for the check: the seam, the span's bytes, its split and whether it
    /// re-creates them.
    fn finish(self) -> (Vec<u8>, Vec<u8>, Split, bool) {
        // The check catches preflate-rs's panics: one here is a bug of ours.
        self.0.join().expect("the span check does not panic")
    }
}

/// The length of the gzip header at the start of `b`, `None` while it is not all
/// there (RFC 1952).
fn header_len(b: &[u8], member: u32) -> Result<Option<usize>, GzipSqlError> {
    let bad = |why| GzipSqlError::BadHeader { member, why };
    if b.len() >= 2 && b[..2] != GZIP_MAGIC {
        return Err(bad("no gzip magic"));
    }
    if b.len() < 10 {
        return Ok(None);
    }
    if b[2] != 8 {
        return Err(bad("its compression method is not deflate"));
    }
    let flags = b[3];
    if flags & 0xe0 != 0 {
        return Err(bad("it sets reserved flags"));
    }
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(len) = b.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            match b
                .get(at..)
                .and_then(|rest| rest.iter().position(|&c| c == 0))
            {
                Some(end) => at += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    Ok((b.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recreate::recreate_all;
    use std::io::Write;

    const SCRIPT_HEAD: &[u8] = b"--\n-- PostgreSQL database dump\n--\n\n";
    const SCRIPT_END: &[u8] = b"\n--\n-- PostgreSQL database dump complete\n--\n\n";

    fn script(rows: usize) -> Vec<u8> {
        let mut s = SCRIPT_HEAD.to_vec();
        s.extend_from_slice(b"COPY public.t (a, b) FROM stdin;\n");
        for i in 0..rows {
            writeln!(s, "{i}\tteam {}\t{}", i * 7919 % 1000, i % 13).unwrap();
        }
        s.extend_from_slice(b"\\.\n");
        s.extend_from_slice(SCRIPT_END);
        s
    }

    /// A gzip member of `text` as flate2 writes it, with a file name in the header.
    fn gzip(text: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .filename("footdash.sql")
            .write(Vec::new(), flate2::Compression::new(level));
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    fn text_of(stored: &[u8], pieces: &[(u64, u64)]) -> Vec<u8> {
        pieces
            .iter()
            .flat_map(|&(at, len)| &stored[at as usize..(at + len) as usize])
            .copied()
            .collect()
    }

    /// Feeds `input` in pieces of `piece` bytes; the stored stream and the result.
    fn inspect(input: &[u8], piece: usize) -> (Vec<u8>, Result<Option<Recreation>, GzipSqlError>) {
        let mut ins = GzipSqlInspector::default();
        let mut stored = Vec::new();
        for p in input.chunks(piece) {
            if let Err(e) = ins.feed(p) {
                return (stored, Err(e));
            }
            ins.take_stored(&mut stored);
        }
        (stored, ins.finish())
    }

    #[test]
    fn a_gzipped_script_is_stored_as_text_and_reads_back() {
        let text = script(10_000);
        assert!(text.len() < PREFLATE_TEXT_BYTES, "one span");
        for level in [1, 6, 9] {
            let gz = gzip(&text, level);
            for piece in [1 << 20, 4099, 7] {
                let (stored, rec) = inspect(&gz, piece);
                let rec = rec.unwrap().expect("re-created");
                assert_eq!(rec.kept_raw_bytes, 0);
                assert_eq!(rec.spans.len(), 1);
                let pieces = rec.text_pieces().expect("one member, re-created whole");
                assert_eq!(pieces.len(), 1);
                assert!(
                    text_of(&stored, &pieces) == text,
                    "the text is stored in one piece"
                );
                assert_eq!(recreate_all(&stored, &rec).unwrap(), gz, "level {level}");
                assert_eq!(
                    rec.blake3,
                    blake3::hash(&gz).to_hex().to_string(),
                    "the whole file is hashed"
                );
            }
        }
    }

    #[test]
    fn a_long_member_is_re_created_span_by_span() {
        let text = script(70_000);
        assert!(text.len() > 4 * PREFLATE_TEXT_BYTES);
        for level in [4, 6, 9] {
            let gz = gzip(&text, level);
            for piece in [1 << 20, 65_537] {
                let (stored, rec) = inspect(&gz, piece);
                let rec = rec.unwrap().expect("re-created");
                assert!(rec.spans.len() >= 5, "{} spans", rec.spans.len());
                assert!(
                    rec.spans[1..].iter().all(|s| matches!(
                        s.codec,
                        crate::recreate::SpanCodec::PreflateAfter {
                            dictionary_bytes: 32768,
                            ..
                        }
                    )),
                    "every span after the first starts from the text before it"
                );
                // Only the bytes where two spans meet are kept as they came: at
                // most two each, and the last byte's padding.
                assert!(
                    rec.kept_raw_bytes <= 2 * rec.spans.len() as u64,
                    "level {level}: {} bytes kept raw",
                    rec.kept_raw_bytes
                );
                let pieces = rec.text_pieces().expect("all of the text is stored");
                assert!(text_of(&stored, &pieces) == text, "level {level}");
                assert!(recreate_all(&stored, &rec).unwrap() == gz, "level {level}");
            }
        }
    }

    #[test]
    fn several_members_each_re_create() {
        let text = script(5_000);
        let (a, b) = text.split_at(text.len() / 2);
        let mut gz = gzip(a, 6);
        gz.extend(gzip(b, 3));
        let (stored, rec) = inspect(&gz, 65536);
        let rec = rec.unwrap().unwrap();
        assert_eq!(rec.spans.len(), 2);
        assert_eq!(rec.text_pieces(), None, "two members are two scripts");
        assert_eq!(recreate_all(&stored, &rec).unwrap(), gz);
    }

    #[test]
    fn damaged_or_unfinished_input_is_refused() {
        let text = script(5_000);
        let gz = gzip(&text, 6);
        // Cut short inside the deflate data, and inside the trailer.
        for cut in [gz.len() / 2, gz.len() - 3] {
            let (_, r) = inspect(&gz[..cut], 4096);
            assert_eq!(r.unwrap_err(), GzipSqlError::Truncated { member: 1 });
        }
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(matches!(
            inspect(&bad_crc, 4096).1,
            Err(GzipSqlError::BadTrailer { member: 1, .. })
        ));
        let mut garbage = gz.clone();
        garbage.extend_from_slice(b"not gzip");
        assert_eq!(
            inspect(&garbage, 4096).1.unwrap_err(),
            GzipSqlError::TrailingGarbage
        );
        // A dump that pg_dump did not finish, gzipped whole.
        let unfinished = gzip(&text[..text.len() - SCRIPT_END.len() - 100], 6);
        assert_eq!(
            inspect(&unfinished, 4096).1.unwrap_err(),
            GzipSqlError::Incomplete
        );
        let not_sql = gzip(b"hello world\n", 6);
        assert_eq!(
            inspect(&not_sql, 4096).1.unwrap_err(),
            GzipSqlError::NotADump
        );
        let mut bad_method = gz.clone();
        bad_method[2] = 7;
        assert!(matches!(
            inspect(&bad_method, 4096).1,
            Err(GzipSqlError::BadHeader { .. })
        ));
        assert_eq!(
            inspect(&gz[..5], 4096).1.unwrap_err(),
            GzipSqlError::Truncated { member: 1 }
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever the script, the level and the pieces it arrives in: a gzip
        /// file is accepted, and its stored stream gives back every byte.
        #[test]
        fn every_gzipped_script_reads_back_exactly(
            rows in 0usize..4000,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8000),
            level in 0u32..=9,
            piece in 1usize..70_000,
        ) {
            let mut text = script(rows);
            // Random bytes before the end line: the text need not be tidy.
            let at = text.len() - SCRIPT_END.len();
            text.splice(at..at, noise);
            let gz = gzip(&text, level);
            let (stored, rec) = inspect(&gz, piece);
            match rec.unwrap() {
                Some(rec) => proptest::prop_assert!(recreate_all(&stored, &rec).unwrap() == gz),
                None => proptest::prop_assert!(stored == gz),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// Long members, cut into spans wherever their blocks fall: random noise
        /// anywhere in the text, any level, any pieces.
        #[test]
        fn every_long_gzipped_script_reads_back_exactly(
            rows in 20_000usize..50_000,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300_000),
            at in 0.0f64..1.0,
            level in 1u32..=9,
            piece in 1000usize..300_000,
        ) {
            let mut text = script(rows);
            let at = SCRIPT_HEAD.len() + ((text.len() - SCRIPT_HEAD.len() - SCRIPT_END.len()) as f64 * at) as usize;
            text.splice(at..at, noise);
            let gz = gzip(&text, level);
            let (stored, rec) = inspect(&gz, piece);
            match rec.unwrap() {
                Some(rec) => {
                    proptest::prop_assert!(recreate_all(&stored, &rec).unwrap() == gz);
                    if let Some(pieces) = rec.text_pieces() {
                        proptest::prop_assert!(text_of(&stored, &pieces) == text);
                    }
                }
                None => proptest::prop_assert!(stored == gz),
            }
        }
    }

    #[test]
    fn a_stream_preflate_cannot_follow_is_kept_as_it_came() {
        // Stored blocks hold the text as it is: there is nothing to predict, so
        // whatever preflate-rs does with them, the bytes must come back.
        let text = script(3_000);
        let gz = gzip(&text, 0);
        let (stored, rec) = inspect(&gz, 4096);
        match rec.unwrap() {
            Some(rec) => assert_eq!(recreate_all(&stored, &rec).unwrap(), gz),
            None => assert_eq!(stored, gz),
        }
    }
}
