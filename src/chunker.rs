//! Content-defined chunking with FastCDC, parameters fixed per repository at init.

use serde::{Deserialize, Serialize};

/// FastCDC size bounds in bytes. Stored in the repository config: changing them
/// would cut the same data differently and lose deduplication against old backups.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size_bytes: u32,
    pub avg_size_bytes: u32,
    pub max_size_bytes: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB on average: small enough that a scattered row update rewrites little of
    /// a table's data, large enough that a 460 MB dump is under 2,000 chunks and the
    /// per-object cost on S3 stays low.
    fn default() -> Self {
        ChunkerParams {
            min_size_bytes: 64 * 1024,
            avg_size_bytes: 256 * 1024,
            max_size_bytes: 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds against what FastCDC accepts.
    ///
    /// Errors: `InvalidInput` naming the bound that is out of range.
    pub fn validate(&self) -> crate::error::Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size_bytes)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size_bytes)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size_bytes)
            && self.min_size_bytes <= self.avg_size_bytes
            && self.avg_size_bytes <= self.max_size_bytes;
        if ok {
            Ok(())
        } else {
            Err(crate::error::Error::InvalidInput(format!(
                "Chunk sizes min {} / avg {} / max {} are out of FastCDC's range \
                 (min {MINIMUM_MIN}..={MINIMUM_MAX}, avg {AVERAGE_MIN}..={AVERAGE_MAX}, \
                 max {MAXIMUM_MIN}..={MAXIMUM_MAX}, min <= avg <= max)",
                self.min_size_bytes, self.avg_size_bytes, self.max_size_bytes
            )))
        }
    }

    /// Cuts a stream into chunks; each item owns its bytes.
    pub fn stream<R: std::io::Read>(&self, source: R) -> fastcdc::v2020::StreamCDC<R> {
        fastcdc::v2020::StreamCDC::new(
            source,
            self.min_size_bytes,
            self.avg_size_bytes,
            self.max_size_bytes,
        )
    }

    /// Cuts an in-memory buffer: `(offset, length)` of each chunk.
    pub fn cut(&self, data: &[u8]) -> Vec<(usize, usize)> {
        fastcdc::v2020::FastCDC::new(
            data,
            self.min_size_bytes,
            self.avg_size_bytes,
            self.max_size_bytes,
        )
        .map(|c| (c.offset, c.length))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_buffer_cut_alike() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = ChunkerParams::default();
        let from_stream: Vec<(usize, usize)> = p
            .stream(&data[..])
            .map(|c| c.unwrap())
            .map(|c| (c.offset as usize, c.length))
            .collect();
        assert_eq!(from_stream, p.cut(&data));
        assert!(from_stream.len() > 3);
        assert_eq!(from_stream.iter().map(|c| c.1).sum::<usize>(), data.len());
    }
}
