//! WAL file names and LSNs as PostgreSQL spells them: segments, timeline history
//! files, backup history files, and the arithmetic between LSNs and segment names.

use std::fmt;

use crate::error::{Error, Result};

/// A log sequence number, a byte position in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/X` notation.
    ///
    /// Errors: `InvalidInput` when `s` is not two hex numbers around a slash.
    pub fn parse(s: &str) -> Result<Lsn> {
        let bad = || Error::InvalidInput(format!("{s:?} is not an LSN such as 0/3000028"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lsn::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a file in the WAL archive is, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a WAL segment.
    Segment {
        timeline: u32,
        segno_hi: u32,
        segno_lo: u32,
    },
    /// `TTTTTTTT.history`: a timeline history file.
    History { timeline: u32 },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`: a backup history file.
    Backup { timeline: u32 },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.partial`: the last, incomplete segment of a timeline.
    Partial { timeline: u32 },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.RRRRRRRR.streamed`: a segment as `wal-receive` had
    /// received it so far, its first `RRRRRRRR` bytes (pgvault's own name: served in
    /// place of the segment only while the segment itself is not archived).
    Streamed { timeline: u32 },
}

/// The archive name of segment `segment` as streamed up to byte `received`.
pub fn streamed_name(segment: &str, received: u32) -> String {
    format!("{segment}.{received:08X}.streamed")
}

/// The segment and received byte count a `.streamed` name stands for.
pub fn parse_streamed(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_suffix(".streamed")?;
    let (seg, received) = rest.split_once('.')?;
    (seg.len() == 24).then_some(())?;
    Some((seg, hex8(received)?))
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalFileKind {
    /// Classifies a WAL archive file name (without directory).
    ///
    /// Errors: `InvalidInput` when the name is none of PostgreSQL's WAL file names,
    /// which also keeps path separators and `..` out of object keys.
    pub fn parse(name: &str) -> Result<WalFileKind> {
        let bad = || {
            Error::InvalidInput(format!(
                "{name:?} is not a WAL file name (a segment, .history, .backup or .partial file)"
            ))
        };
        if let Some(tl) = name.strip_suffix(".history") {
            return hex8(tl)
                .map(|timeline| WalFileKind::History { timeline })
                .ok_or_else(bad);
        }
        let seg_of = |s: &str| -> Option<(u32, u32, u32)> {
            // ASCII first: slicing a name of 24 bytes with a multi-byte character in
            // it would split the character (found by fuzzing).
            if s.len() != 24 || !s.is_ascii() {
                return None;
            }
            Some((hex8(&s[..8])?, hex8(&s[8..16])?, hex8(&s[16..])?))
        };
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.').ok_or_else(bad)?;
            hex8(off).ok_or_else(bad)?;
            let (timeline, _, _) = seg_of(seg).ok_or_else(bad)?;
            return Ok(WalFileKind::Backup { timeline });
        }
        if let Some(rest) = name.strip_suffix(".streamed") {
            let (seg, received) = rest.split_once('.').ok_or_else(bad)?;
            hex8(received).ok_or_else(bad)?;
            let (timeline, _, _) = seg_of(seg).ok_or_else(bad)?;
            return Ok(WalFileKind::Streamed { timeline });
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            let (timeline, _, _) = seg_of(seg).ok_or_else(bad)?;
            return Ok(WalFileKind::Partial { timeline });
        }
        let (timeline, segno_hi, segno_lo) = seg_of(name).ok_or_else(bad)?;
        Ok(WalFileKind::Segment {
            timeline,
            segno_hi,
            segno_lo,
        })
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        match *self {
            WalFileKind::Segment { timeline, .. }
            | WalFileKind::History { timeline }
            | WalFileKind::Backup { timeline }
            | WalFileKind::Partial { timeline }
            | WalFileKind::Streamed { timeline } => timeline,
        }
    }

    /// The segment number, for segments, given the segment size.
    pub fn segno(&self, segment_size: u64) -> Option<u64> {
        match *self {
            WalFileKind::Segment {
                segno_hi, segno_lo, ..
            } => {
                Some(u64::from(segno_hi) * segments_per_xlogid(segment_size) + u64::from(segno_lo))
            }
            _ => None,
        }
    }
}

/// The default WAL segment size (initdb --wal-segsize can change it).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

fn segments_per_xlogid(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The segment number holding `lsn`.
pub fn segno_of(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0 / segment_size
}

/// The file name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per = segments_per_xlogid(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_ascii_are_refused_not_a_panic() {
        for name in [
            "0\r\u{a0}\r\u{a0}\u{a0}\u{a0}\u{a0}\u{a0}600702./y",
            "00000001000000000000000\u{e9}",
        ] {
            assert!(WalFileKind::parse(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn names_and_lsns() {
        assert_eq!(Lsn::parse("0/3000028").unwrap(), Lsn(0x300_0028));
        assert_eq!(Lsn(0x1_0000_0028).to_string(), "1/28");
        assert!(Lsn::parse("3000028").is_err());
        let k = WalFileKind::parse("000000010000000200000003").unwrap();
        assert_eq!(k.segno(DEFAULT_SEGMENT_SIZE), Some(2 * 256 + 3));
        assert_eq!(
            segment_name(1, 2 * 256 + 3, DEFAULT_SEGMENT_SIZE),
            "000000010000000200000003"
        );
        assert_eq!(segno_of(Lsn(0x300_0028), DEFAULT_SEGMENT_SIZE), 3);
        assert_eq!(
            WalFileKind::parse("00000002.history").unwrap(),
            WalFileKind::History { timeline: 2 }
        );
        assert_eq!(
            WalFileKind::parse("000000010000000000000002.00000028.backup").unwrap(),
            WalFileKind::Backup { timeline: 1 }
        );
        for bad in [
            "",
            "../../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000000ZZ",
            "x.history",
        ] {
            assert!(WalFileKind::parse(bad).is_err(), "{bad}");
        }
    }
}
