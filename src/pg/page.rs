//! PostgreSQL's data page checksums (`pg_checksum_page`), so that a base backup
//! taken from the data directory reports a damaged page by file and block.

use crate::wal_name::Lsn;

/// PostgreSQL's page size (BLCKSZ) as Debian and every common build use it.
pub const PAGE_BYTES: usize = 8192;

/// Pages in one relation segment file (RELSEG_SIZE): block numbers continue from
/// one segment file (`16384.1`) to the next.
pub const PAGES_PER_SEGMENT: u32 = 131_072;

/// The parallel FNV-1a lanes of PostgreSQL's checksum. The lane count and these
/// starting values are part of the on-disk format: a page written by the server
/// checks only with exactly these.
const LANE_SEEDS: [u32; 32] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

const FNV_PRIME: u32 = 16_777_619;

fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in a page's header (`pd_checksum`) for `page`
/// at block `block` of its relation fork.
pub fn page_checksum(page: &[u8; PAGE_BYTES], block: u32) -> u16 {
    let mut sums = LANE_SEEDS;
    for (row_no, row) in page.chunks_exact(4 * sums.len()).enumerate() {
        for (lane, word) in row.chunks_exact(4).enumerate() {
            let mut w = u32::from_le_bytes(word.try_into().expect("4 bytes"));
            // The stored checksum (bytes 8..10) counts as zero.
            if row_no == 0 && lane == 2 {
                w &= 0xFFFF_0000;
            }
            sums[lane] = mix(sums[lane], w);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, &s| acc ^ mix(mix(s, 0), 0));
    (((folded ^ block) % 65535) + 1) as u16
}

/// What a page's checksum says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// The stored checksum matches.
    Valid,
    /// A page never written (all zeros): PostgreSQL gives it no checksum.
    New,
    /// The stored checksum does not match; `lsn` is the page's own LSN.
    Bad {
        stored: u16,
        computed: u16,
        lsn: Lsn,
    },
}

/// Checks `page`, block `block` of its fork, against its stored checksum.
pub fn check_page(page: &[u8; PAGE_BYTES], block: u32) -> PageCheck {
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    if pd_upper == 0 && page.iter().all(|&b| b == 0) {
        return PageCheck::New;
    }
    let stored = u16::from_le_bytes([page[8], page[9]]);
    let computed = page_checksum(page, block);
    if stored == computed {
        PageCheck::Valid
    } else {
        PageCheck::Bad {
            stored,
            computed,
            lsn: page_lsn(page),
        }
    }
}

/// The LSN in a page's header (`pd_lsn`): the WAL position of its last change.
pub fn page_lsn(page: &[u8; PAGE_BYTES]) -> Lsn {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    Lsn((u64::from(hi) << 32) | u64::from(lo))
}

/// Whether `name` (a file name in a database directory) is a relation fork
/// segment whose pages carry checksums, and if so the block number of its first
/// page: `16384`, `16384.2`, `16384_vm`, `16384_fsm.1`.
pub fn relation_first_block(name: &str) -> Option<u32> {
    let (stem, segment) = match name.split_once('.') {
        Some((s, seg)) => (s, seg.parse::<u32>().ok()?),
        None => (name, 0),
    };
    let node = match stem.split_once('_') {
        Some((n, "fsm" | "vm" | "init")) => n,
        Some(_) => return None,
        None => stem,
    };
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.checked_mul(PAGES_PER_SEGMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names_give_their_first_block() {
        assert_eq!(relation_first_block("16384"), Some(0));
        assert_eq!(relation_first_block("16384.2"), Some(2 * PAGES_PER_SEGMENT));
        assert_eq!(relation_first_block("16384_vm"), Some(0));
        assert_eq!(relation_first_block("16384_fsm.1"), Some(PAGES_PER_SEGMENT));
        assert_eq!(relation_first_block("PG_VERSION"), None);
        assert_eq!(relation_first_block("pg_filenode.map"), None);
        assert_eq!(relation_first_block("t3_16384"), None);
        assert_eq!(relation_first_block("16384_xx"), None);
    }

    #[test]
    fn a_zero_page_is_new_and_a_flipped_bit_is_bad() {
        let mut page = [0u8; PAGE_BYTES];
        assert_eq!(check_page(&page, 7), PageCheck::New);
        page[12] = 24; // pd_lower
        page[14] = 0x20; // pd_upper 8192 - a bit
        page[100] = 1;
        let sum = page_checksum(&page, 7);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(check_page(&page, 7), PageCheck::Valid);
        // The block number is part of the checksum: a page moved elsewhere is bad.
        assert!(matches!(check_page(&page, 8), PageCheck::Bad { .. }));
        page[5000] ^= 0x10;
        assert!(matches!(check_page(&page, 7), PageCheck::Bad { .. }));
    }
}
