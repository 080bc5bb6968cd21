//! Test data shared by the test files: real FootDash dumps made once and kept, the
//! dump header's timestamp, and a repeatable random generator.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::pg::PgCluster;

/// Real custom-format dumps, made once from a throwaway cluster and kept in Cargo's
/// scratch directory across runs, so that tests needing only dump bytes do not each
/// start PostgreSQL.
pub struct Dumps {
    /// FootDash at scale 4.
    pub footdash: PathBuf,
    /// Another database (FootDash at scale 1: it shares little with the others,
    /// which are scale 2 and 4 of the same generator).
    pub other: PathBuf,
    /// FootDash at scale 2 after 0, 1, 2 and 3 days of traffic: neighbours share
    /// most of their data.
    pub days: Vec<PathBuf>,
    /// A few kilobytes, for tests that import many backup points.
    pub tiny: PathBuf,
}

/// The shared dumps; made on first use (about half a minute), then reused.
pub fn dumps() -> &'static Dumps {
    static DUMPS: OnceLock<Dumps> = OnceLock::new();
    DUMPS.get_or_init(|| {
        // Bump the version when what is made here changes.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dumps-v2");
        let d = Dumps {
            footdash: dir.join("footdash.dump"),
            other: dir.join("other.dump"),
            days: (0..4).map(|i| dir.join(format!("day{i}.dump"))).collect(),
            tiny: dir.join("tiny.dump"),
        };
        let complete = dir.join("complete");
        if complete.exists() {
            return d;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PgCluster::start();
        pg.create_footdash("footdash", 4);
        pg.pg_dump_file("footdash", &d.footdash);
        pg.create_footdash("other", 1);
        pg.pg_dump_file("other", &d.other);
        pg.create_footdash("daily", 2);
        for (i, f) in d.days.iter().enumerate() {
            if i > 0 {
                pg.footdash_day("daily", i as u32);
            }
            pg.pg_dump_file("daily", f);
        }
        pg.create_db("tiny");
        pg.psql(
            "tiny",
            "CREATE TABLE t (i int PRIMARY KEY, s text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200) g",
        );
        pg.pg_dump_file("tiny", &d.tiny);
        // Written last: an interrupted run leaves no half set behind.
        std::fs::write(&complete, b"").unwrap();
        d
    })
}

/// The bytes in which two dumps of unchanged data may differ: the creation time in
/// the header.
pub const HEADER_TIMESTAMP: std::ops::Range<usize> = 16..51;

/// A dump with its header timestamp zeroed, for comparing dumps taken apart.
pub fn mask_timestamp(mut d: Vec<u8>) -> Vec<u8> {
    d[HEADER_TIMESTAMP].fill(0);
    d
}

/// A small xorshift generator, so that failures repeat.
pub struct Rng(u64);

impl Rng {
    /// A generator with a fixed seed (never 0).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A generator seeded from PGVAULT_TEST_SEED, else the clock; the seed is
    /// printed so that a failing run can be repeated.
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var("PGVAULT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random seed {seed} (set PGVAULT_TEST_SEED to repeat)");
        Rng::seeded(seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
