//! Similarity sketches: a few numbers per chunk that two chunks share when most of
//! their bytes are alike, so that a changed chunk finds its earlier version and is
//! stored as a delta against it.
//!
//! A sketch is a bottom-k min-hash over the chunk's 64-byte windows. A gear rolling
//! hash runs over the bytes; a position is a candidate when the top bits of its hash
//! are zero (a content-defined 1 in 64 sample, so two chunks sample the same windows
//! wherever their bytes agree), and the sketch keeps the `FEATURES` smallest distinct
//! mixed hashes of the candidates. Windows, not lines, so binary data (base-backup
//! heap pages) is sketched as well as dump text. A row update changes the windows
//! that overlap it, a few percent of a 256 KiB chunk, so the chance that all of a
//! chunk's features change with it is tiny; any one shared feature finds the base.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::crypto::ChunkId;

/// How many features a sketch keeps.
pub const FEATURES: usize = 4;

/// A position is sampled when this many top bits of its gear hash are zero.
const SAMPLE_BITS: u32 = 6;

/// The gear table: one fixed pseudo-random word per byte value (splitmix64 of the
/// byte), so sketches are the same on every machine and in every release.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = splitmix64(i as u64 ^ 0x7067_7661_756c_7421);
        i += 1;
    }
    t
};

const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The features of one chunk, smallest first; fewer than [`FEATURES`] only for a
/// chunk with few distinct windows (short, or a run of one byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Sketch(pub Vec<u64>);

impl Sketch {
    /// The sketch with each feature mapped through a keyed hash: equal features stay
    /// equal, so similar chunks still find each other, but without `key` nobody can
    /// tell from a sketch whether a chunk holds some guessed content.
    pub fn keyed(self, key: &[u8; 32]) -> Sketch {
        let mut out: Vec<u64> = self
            .0
            .iter()
            .map(|f| {
                let h = blake3::keyed_hash(key, &f.to_le_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
            })
            .collect();
        out.sort_unstable();
        Sketch(out)
    }

    /// Sketches a chunk's plaintext.
    pub fn of(data: &[u8]) -> Sketch {
        let mut best = [u64::MAX; FEATURES];
        let mut found = 0usize;
        let mut h: u64 = 0;
        for (i, &b) in data.iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            // Before 64 bytes the hash still depends on where the chunk starts.
            if h >> (64 - SAMPLE_BITS) != 0 || i < 63 {
                continue;
            }
            let f = splitmix64(h);
            if found == FEATURES && f >= best[FEATURES - 1] {
                continue;
            }
            if best[..found].contains(&f) {
                continue;
            }
            // Insert in order, dropping the largest when full.
            let mut j = found.min(FEATURES - 1);
            best[j] = f;
            while j > 0 && best[j - 1] > best[j] {
                best.swap(j - 1, j);
                j -= 1;
            }
            found = (found + 1).min(FEATURES);
        }
        Sketch(best[..found].to_vec())
    }
}

/// Which stored full chunk each feature was last seen in: answers "which stored
/// chunk is most like this one". Only a hint: the caller reads the candidate and
/// falls back to a full chunk when it is gone or not full.
#[derive(Debug, Default, Clone)]
pub struct SketchIndex {
    by_feature: HashMap<u64, ChunkId>,
    by_chunk: HashMap<ChunkId, Sketch>,
}

impl SketchIndex {
    /// An index of these (chunk, sketch) pairs; later pairs win a shared feature,
    /// since a newer version of a chunk is the better base for the next one.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (ChunkId, Sketch)>) -> Self {
        let mut idx = SketchIndex::default();
        for (id, s) in pairs {
            idx.insert(id, &s);
        }
        idx
    }

    /// Records a chunk's sketch.
    pub fn insert(&mut self, id: ChunkId, sketch: &Sketch) {
        for f in &sketch.0 {
            self.by_feature.insert(*f, id);
        }
        self.by_chunk.insert(id, sketch.clone());
    }

    /// The sketch recorded for a chunk.
    pub fn sketch_of(&self, id: &ChunkId) -> Option<&Sketch> {
        self.by_chunk.get(id)
    }

    /// How many chunks are known.
    pub fn len(&self) -> usize {
        self.by_chunk.len()
    }

    /// Whether no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.by_chunk.is_empty()
    }

    /// The chunk sharing the most features with `sketch` (ties: the one holding the
    /// smaller feature), other than `not` itself.
    pub fn most_similar(&self, sketch: &Sketch, not: &ChunkId) -> Option<ChunkId> {
        let mut votes: Vec<(ChunkId, usize)> = Vec::with_capacity(FEATURES);
        for f in &sketch.0 {
            let Some(id) = self.by_feature.get(f) else {
                continue;
            };
            if id == not {
                continue;
            }
            match votes.iter_mut().find(|(c, _)| c == id) {
                Some((_, n)) => *n += 1,
                None => votes.push((*id, 1)),
            }
        }
        // max_by_key keeps the last maximum; iterate reversed to keep the first.
        votes
            .into_iter()
            .rev()
            .max_by_key(|(_, n)| *n)
            .map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        (0..n as u64)
            .map(|i| (splitmix64(i ^ (seed << 40)) >> 56) as u8)
            .collect()
    }

    #[test]
    fn sketch_is_sorted_distinct_and_full_on_real_sized_chunks() {
        let s = Sketch::of(&pseudo_random(256 * 1024, 1));
        assert_eq!(s.0.len(), FEATURES);
        assert!(s.0.windows(2).all(|w| w[0] < w[1]));
        assert!(Sketch::of(&[0u8; 100_000]).0.len() <= 1);
        assert!(Sketch::of(b"short").0.is_empty());
    }

    #[test]
    fn scattered_edits_keep_a_feature_and_unrelated_data_shares_none() {
        let base = pseudo_random(256 * 1024, 2);
        let mut edited = base.clone();
        // 1% of 100-byte "rows" rewritten, scattered.
        for row in (0..edited.len() / 100).step_by(100) {
            for b in &mut edited[row * 100..row * 100 + 100] {
                *b ^= 0x5a;
            }
        }
        let a = Sketch::of(&base);
        let b = Sketch::of(&edited);
        assert!(a.0.iter().any(|f| b.0.contains(f)), "{a:?} vs {b:?}");
        let other = Sketch::of(&pseudo_random(256 * 1024, 3));
        assert!(!a.0.iter().any(|f| other.0.contains(f)));

        let base_id = ChunkId([1; 32]);
        let other_id = ChunkId([2; 32]);
        let idx = SketchIndex::from_pairs([(base_id, a.clone()), (other_id, other)]);
        assert_eq!(idx.most_similar(&b, &ChunkId([9; 32])), Some(base_id));
        assert_eq!(idx.most_similar(&a, &base_id), None);
    }

    #[test]
    fn sketch_ignores_where_the_data_sits_in_the_chunk() {
        let data = pseudo_random(300 * 1024, 4);
        let a = Sketch::of(&data[..256 * 1024]);
        let b = Sketch::of(&data[1000..256 * 1024 + 1000]);
        assert!(a.0.iter().filter(|f| b.0.contains(f)).count() >= FEATURES / 2);
    }
}
