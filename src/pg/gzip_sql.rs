//! `pg_dump | gzip` files on stdin: checked as they stream by (whole gzip members,
//! their CRCs and lengths, a complete plain-SQL dump inside) and stored as their SQL
//! text where the deflate stream re-creates (see [`crate::recreate`]).
//!
//! Every member is inflated with zlib to check it, whatever is stored. Its deflate
//! bytes are held until the member ends (or until [`HOLD_LIMIT_BYTES`], or
//! [`PREFLATE_TEXT_BYTES`] of text), then handed whole to preflate-rs, which
//! re-creates them, or the longest run of whole blocks it can, from text and a
//! correction record. The rest of the member is stored as it came.

#![forbid(unsafe_code)]

use crate::recreate::{preflate_prefix, Recreation, StoredStreamBuilder, PREFLATE_TEXT_BYTES};

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
    /// The member's deflate bytes so far, while it may still be re-created.
    held: Vec<u8>,
    holding: bool,
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
                    if self.holding
                        && (ended
                            || self.held.len() > HOLD_LIMIT_BYTES
                            || self.member_len > PREFLATE_TEXT_BYTES as u64)
                    {
                        self.settle_held();
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

    /// Stores the held deflate bytes: what preflate-rs re-creates as text and
    /// correction record, the rest as it came. The member's later bytes are kept
    /// as they come.
    fn settle_held(&mut self) {
        self.holding = false;
        let held = std::mem::take(&mut self.held);
        let done = match preflate_prefix(&held) {
            Some(p) => {
                self.builder
                    .preflated(&held[..p.deflate_len], &p, &mut self.out);
                p.deflate_len
            }
            None => 0,
        };
        self.builder.kept(&held[done..], &mut self.out);
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
        let text = script(20_000);
        for level in [1, 6, 9] {
            let gz = gzip(&text, level);
            for piece in [1 << 20, 4099, 7] {
                let (stored, rec) = inspect(&gz, piece);
                let rec = rec.unwrap().expect("re-created");
                assert_eq!(rec.kept_raw_bytes, 0);
                assert_eq!(rec.spans.len(), 1);
                let (at, len) = rec.whole_text().expect("one member, re-created whole");
                assert!(
                    stored[at as usize..(at + len) as usize] == text[..],
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
    fn several_members_each_re_create() {
        let text = script(5_000);
        let (a, b) = text.split_at(text.len() / 2);
        let mut gz = gzip(a, 6);
        gz.extend(gzip(b, 3));
        let (stored, rec) = inspect(&gz, 65536);
        let rec = rec.unwrap().unwrap();
        assert_eq!(rec.spans.len(), 2);
        assert_eq!(rec.whole_text(), None, "two members' texts are two pieces");
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
