//! Cuts a base backup's tar stream (pg_basebackup's, or one given on stdin) around
//! its large relation files, as a `--pgdata` backup cuts its own stream, so that the
//! chunks of a remote backup also cover the same pages of a file every day.
//!
//! The cuts only decide where chunks end: every byte of the stream goes on as it
//! came, so a stream this cannot parse is stored whole all the same (the tar
//! inspector judges it).

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::pg::page::relation_first_block;
use crate::store::manifest::BaseFile;
use crate::store::writer::Segment;

/// Bytes of the stream sent on at once.
const PIECE_BYTES: usize = 1 << 20;

/// Segments a reader may send ahead of the store.
const SEGMENTS_AHEAD: usize = 16;

/// The tar stream `source` as segments: each regular file of at least
/// [`BaseFile::HASHED_BELOW_BYTES`] that is a relation fork segment starts with a
/// [`Segment::FixedCut`] before its header and ends with a [`Segment::Cut`] after
/// its padding. The thread's result says whether the source was read to its end.
///
/// Errors (of the thread): `Io` when the source fails or the receiver stops (a
/// broken pipe).
pub fn cut_tar_stream(
    source: impl Read + Send + 'static,
) -> (Receiver<Segment>, JoinHandle<Result<()>>) {
    let (tx, rx) = sync_channel(SEGMENTS_AHEAD);
    let cutter = std::thread::spawn(move || cut(source, &tx));
    (rx, cutter)
}

fn send(tx: &SyncSender<Segment>, s: Segment) -> Result<()> {
    tx.send(s).map_err(|_| {
        Error::io(
            "Cannot pass the base backup stream on",
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the store stopped reading"),
        )
    })
}

fn read_failed(e: std::io::Error) -> Error {
    Error::io("Cannot read the base backup stream", e)
}

/// Reads up to `want` bytes (fewer only at the end of the source).
fn read_up_to(source: &mut impl Read, want: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(want);
    source
        .take(want as u64)
        .read_to_end(&mut buf)
        .map_err(read_failed)?;
    Ok(buf)
}

/// Sends `len` bytes of the source on; `false` when it ended first.
fn pass(source: &mut impl Read, mut len: u64, tx: &SyncSender<Segment>) -> Result<bool> {
    while len > 0 {
        let piece = read_up_to(source, len.min(PIECE_BYTES as u64) as usize)?;
        if piece.is_empty() {
            return Ok(false);
        }
        len -= piece.len() as u64;
        send(tx, Segment::Bytes(piece))?;
    }
    Ok(true)
}

/// Whether the entry at `path` is a relation fork segment: in a database directory
/// (`base/<db>/`, a tablespace's `PG_…/<db>/`) or in `global/`.
fn is_relation(path: &str) -> bool {
    let path = path.trim_start_matches("./");
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let in_db_dir = dir.starts_with("base/")
        || dir.starts_with("PG_")
        || dir.contains("/PG_")
        || dir == "global";
    in_db_dir && relation_first_block(name).is_some()
}

fn cut(mut source: impl Read, tx: &SyncSender<Segment>) -> Result<()> {
    loop {
        let block = read_up_to(&mut source, 512)?;
        if block.len() < 512 || block.iter().all(|&b| b == 0) {
            // The end-of-archive blocks, or a stream cut short: on as they are.
            if block.is_empty() {
                return Ok(());
            }
            send(tx, Segment::Bytes(block))?;
            continue;
        }
        let header = tar::Header::from_byte_slice(&block);
        let Ok(size) = header.entry_size() else {
            // Not a header this can read: the rest goes on uncut.
            send(tx, Segment::Bytes(block))?;
            pass(&mut source, u64::MAX, tx)?;
            return Ok(());
        };
        let padded = size.div_ceil(512) * 512;
        let regular = matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        let around = regular
            && size >= BaseFile::HASHED_BELOW_BYTES
            && header
                .path()
                .is_ok_and(|p| is_relation(&p.to_string_lossy()));
        if around {
            send(
                tx,
                Segment::FixedCut {
                    previous: Vec::new(),
                },
            )?;
        }
        send(tx, Segment::Bytes(block))?;
        if !pass(&mut source, padded, tx)? {
            return Ok(());
        }
        if around {
            send(tx, Segment::Cut)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, usize)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (name, len)) in entries.iter().enumerate() {
            let data: Vec<u8> = (0..*len).map(|j| (j * 31 + i * 7) as u8).collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(*len as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The segments of `stream`: every byte, and where the cuts fell (as offsets).
    fn segments(stream: Vec<u8>) -> (Vec<u8>, Vec<(u64, &'static str)>) {
        let (rx, cutter) = cut_tar_stream(std::io::Cursor::new(stream));
        let (mut bytes, mut cuts) = (Vec::new(), Vec::new());
        for s in rx {
            match s {
                Segment::Bytes(b) => bytes.extend_from_slice(&b),
                Segment::FixedCut { .. } => cuts.push((bytes.len() as u64, "fixed")),
                Segment::Cut => cuts.push((bytes.len() as u64, "cut")),
                Segment::Reuse { .. } => panic!("no reuse from a tar stream"),
            }
        }
        cutter.join().unwrap().unwrap();
        (bytes, cuts)
    }

    #[test]
    fn large_relation_files_are_cut_around_and_every_byte_goes_on() {
        let mib: u64 = 1 << 20;
        let m = mib as usize;
        let stream = tar_of(&[
            ("base/1/PG_VERSION", 3),
            ("base/16384/16385", 2 * m + 8192),
            ("pg_xact/0000", 2 * m),
            ("base/16384/16390_vm", 1000),
            ("PG_15_202209061/16384/16400.1", m + 100),
            ("global/1262", m),
            ("base/16384/pg_filenode.map", 2 * m),
        ]);
        let (bytes, cuts) = segments(stream.clone());
        assert_eq!(bytes, stream);
        // Headers are 512 bytes; each file's data is padded to 512.
        let starts: Vec<u64> = {
            let sizes = [3u64, 2 * mib + 8192, 2 * mib, 1000, mib + 100, mib, 2 * mib];
            let mut at = 0;
            sizes
                .iter()
                .map(|s| {
                    let here = at;
                    at += 512 + s.div_ceil(512) * 512;
                    here
                })
                .collect()
        };
        let end = |i: usize, size: u64| starts[i] + 512 + size.div_ceil(512) * 512;
        assert_eq!(
            cuts,
            vec![
                (starts[1], "fixed"),
                (end(1, 2 * mib + 8192), "cut"),
                (starts[4], "fixed"),
                (end(4, mib + 100), "cut"),
                (starts[5], "fixed"),
                (end(5, mib), "cut"),
            ]
        );
    }

    #[test]
    fn a_stream_cut_short_or_not_a_tar_goes_on_whole() {
        let stream = tar_of(&[("base/16384/16385", 3 << 20)]);
        let short = stream[..(2 << 20) + 77].to_vec();
        assert_eq!(segments(short.clone()).0, short);
        let junk: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        let (bytes, cuts) = segments(junk.clone());
        assert_eq!(bytes, junk);
        assert!(cuts.is_empty());
    }
}
