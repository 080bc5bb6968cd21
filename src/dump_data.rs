//! Where each table's rows lie inside a stored custom-format dump, so that one
//! table's COPY text can be read (and shown in the mount as a file) without the rest.
//!
//! In an uncompressed archive (`pg_dump -Fc -Z0`, what pgvault itself runs) a table's
//! data block is a run of frames, each an archive int (a sign byte and `int_size`
//! little-endian magnitude bytes) giving a length, then that many bytes of COPY text;
//! a zero length ends the block. pg_dump writes one frame per row, so a table of a
//! million rows has a million frames. Recording every frame would make manifests
//! large; recording none would make a read at offset N walk all frames before it. So
//! the write path records a [`FrameMark`] every [`MARK_EVERY_BYTES`] of COPY text, and
//! a read starts at the last mark before its offset: at most that many bytes are
//! walked in vain, and the manifest grows by a few bytes per mark.
//!
//! In a compressed archive (pg_dump's default, zlib) each table's frames hold one
//! zlib stream: the write path inflates it as it streams by to learn the text's
//! length, and a read inflates from the block's start (one mark there).

use serde::{Deserialize, Serialize};

/// How much COPY text lies between two recorded frame starts: a read walks at most
/// this much in vain (frame headers only, mostly from chunks it loads anyway), and a
/// 500 MB dump's manifest grows by about a thousand marks.
pub const MARK_EVERY_BYTES: u64 = 512 << 10;

/// The tables of one dump, as the write path found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpContents {
    /// The archive's int size: how wide each frame's length field is, after its sign
    /// byte.
    pub int_size: u8,
    /// Every table with a data block, in the order of the archive's data blocks.
    pub tables: Vec<TableData>,
    /// The data blocks are zlib streams (pg_dump -Fc's default): each table is read
    /// by inflating its block from the start, lengths are of the inflated text.
    #[serde(default, skip_serializing_if = "is_false")]
    pub compressed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where one table's COPY text lies in the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    pub schema: String,
    pub table: String,
    /// The dump ID of its `TABLE DATA` entry.
    pub dump_id: i32,
    /// Length of the COPY text: every frame's payload, without the framing.
    pub copy_len_bytes: u64,
    /// Frame starts, by ascending offset; the first is the block's first frame (or its
    /// end marker, for an empty table).
    pub marks: Vec<FrameMark>,
    /// Payload bytes after the COPY text: pg_dump's end-of-data line, which a SQL
    /// script shows and the table's file does not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trailer_len_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A frame's start: its offset in the dump, and the offset in the COPY text of its
/// payload's first byte. Stored as a pair, `[dump_offset, copy_offset]`: manifests
/// hold thousands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub struct FrameMark {
    pub dump_offset: u64,
    pub copy_offset: u64,
}

impl From<(u64, u64)> for FrameMark {
    fn from((dump_offset, copy_offset): (u64, u64)) -> Self {
        FrameMark {
            dump_offset,
            copy_offset,
        }
    }
}

impl From<FrameMark> for (u64, u64) {
    fn from(m: FrameMark) -> Self {
        (m.dump_offset, m.copy_offset)
    }
}

impl TableData {
    /// The mark to walk from to reach COPY offset `at`: the last one at or before it.
    pub fn mark_before(&self, at: u64) -> Option<FrameMark> {
        let i = self.marks.partition_point(|m| m.copy_offset <= at);
        i.checked_sub(1).map(|i| self.marks[i])
    }

    /// The table's file name in the mount, `<schema>.<table>.copy`: readable for
    /// ordinary names, and never the same for two tables (see [`escape_name_part`]).
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.copy",
            escape_name_part(&self.schema),
            escape_name_part(&self.table)
        )
    }

    /// The table as `pg_restore -t` and psql spell it: `schema.table`, each part as
    /// given (unquoted).
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Escapes one part of a file name so that the parts can be joined with dots: `%`,
/// `.`, `/` and control characters become `%XX`. A schema `a.b` with table `c` and a
/// schema `a` with table `b.c` get different names, and no name starts with a dot.
pub fn escape_name_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '.' | '/') || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        "%".into()
    } else {
        out
    }
}

/// A frame's length field as read from `bytes` (at least `1 + int_size` long):
/// `Some(len)` for a payload of `len` bytes, `None` for the end of the block or for
/// a negative length (damage, which callers report).
pub fn frame_len(bytes: &[u8], int_size: usize) -> Option<u64> {
    let (negative, magnitude) = split_int(&bytes[..=int_size]);
    (!negative && magnitude > 0).then_some(magnitude)
}

/// Splits an archive int (`raw`: its sign byte and at most 8 little-endian
/// magnitude bytes) into its sign and magnitude.
pub fn split_int(raw: &[u8]) -> (bool, u64) {
    let magnitude = raw[1..]
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    (raw[0] != 0, magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_readable_and_never_collide() {
        let t = |schema: &str, table: &str| TableData {
            schema: schema.into(),
            table: table.into(),
            dump_id: 1,
            copy_len_bytes: 0,
            marks: Vec::new(),
            trailer_len_bytes: 0,
        };
        assert_eq!(t("public", "users").file_name(), "public.users.copy");
        assert_eq!(t("Ligue 1", "équipes").file_name(), "Ligue 1.équipes.copy");
        assert_ne!(t("a.b", "c").file_name(), t("a", "b.c").file_name());
        assert_ne!(t("a%2Eb", "c").file_name(), t("a.b", "c").file_name());
        assert_eq!(t("x/y", ".z").file_name(), "x%2Fy.%2Ez.copy");
        assert_eq!(t("s", "line\nbreak").file_name(), "s.line%0Abreak.copy");
    }

    #[test]
    fn a_read_starts_at_the_last_mark_at_or_before_its_offset() {
        let mark = |dump_offset, copy_offset| FrameMark {
            dump_offset,
            copy_offset,
        };
        let t = TableData {
            schema: "s".into(),
            table: "t".into(),
            dump_id: 7,
            copy_len_bytes: 300,
            marks: vec![mark(1000, 0), mark(1200, 150), mark(1400, 290)],
            trailer_len_bytes: 5,
        };
        assert_eq!(t.mark_before(0), Some(mark(1000, 0)));
        assert_eq!(t.mark_before(149), Some(mark(1000, 0)));
        assert_eq!(t.mark_before(150), Some(mark(1200, 150)));
        assert_eq!(t.mark_before(299), Some(mark(1400, 290)));
        let empty = TableData {
            marks: Vec::new(),
            ..t
        };
        assert_eq!(empty.mark_before(0), None);
    }

    #[test]
    fn marks_are_stored_as_pairs() {
        let m = FrameMark {
            dump_offset: 7,
            copy_offset: 3,
        };
        assert_eq!(serde_json::to_string(&m).unwrap(), "[7,3]");
        assert_eq!(serde_json::from_str::<FrameMark>("[7,3]").unwrap(), m);
    }

    #[test]
    fn frame_lengths_end_at_zero_and_refuse_negative_ones() {
        assert_eq!(frame_len(&[0, 5, 1, 0, 0], 4), Some(261));
        assert_eq!(frame_len(&[0, 0, 0, 0, 0], 4), None);
        assert_eq!(frame_len(&[1, 5, 0, 0, 0], 4), None);
    }
}
