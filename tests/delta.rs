//! Delta chunks end to end: daily FootDash dumps and base backups stored as deltas on
//! the day before and read back byte for byte (cat, mount, pg_restore); prune keeping
//! a base whose own snapshots are forgotten; a corrupt base failing every delta on it;
//! and property tests of random edits of random data through the repository.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use common::mount::Mount;
use common::pg::PgCluster;
use common::vault::{Vault, SMALL_CHUNKS};
use pgvault::backend::local::LocalBackend;
use pgvault::crypto::ChunkId;
use pgvault::store::{Repository, SnapshotManifest};
use serde_json::Value;

fn import(v: &Vault, file: &Path, time: &str) -> Value {
    v.import("footdash", file, Some(time)).ok().json()
}

/// The repository's snapshot manifests, read through the library.
fn manifests(v: &Vault) -> Vec<SnapshotManifest> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let backend = Arc::new(LocalBackend::new(v.repo_path()));
        let cache = v.dir.path().join("lib-cache");
        let repo = Repository::open(backend, v.password.as_bytes(), &cache)
            .await
            .unwrap();
        repo.snapshots().await.unwrap()
    })
}

fn snapshot<'a>(all: &'a [SnapshotManifest], id: &str) -> &'a SnapshotManifest {
    all.iter().find(|m| m.id == id).unwrap()
}

/// Chunks that snapshot `m` needs only as bases of its deltas.
fn bases_only(m: &SnapshotManifest) -> HashSet<ChunkId> {
    let own: HashSet<ChunkId> = m.chunks.iter().map(|c| c.id).collect();
    m.chunks
        .iter()
        .filter_map(|c| c.base)
        .filter(|b| !own.contains(b))
        .collect()
}

fn chunk_path(v: &Vault, id: &ChunkId) -> std::path::PathBuf {
    let h = id.to_hex();
    v.repo_path().join("chunks").join(&h[..2]).join(&h)
}

/// Two days of FootDash dumps (day 2 after a day of traffic), as files in `dir`.
fn two_days(pg: &PgCluster, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    pg.create_footdash("footdash", 2);
    let d1 = dir.join("day1.dump");
    pg.pg_dump_file("footdash", &d1);
    pg.footdash_day("footdash", 1);
    pg.psql("footdash", "VACUUM");
    let d2 = dir.join("day2.dump");
    pg.pg_dump_file("footdash", &d2);
    (d1, d2)
}

/// A small-chunk vault holding the two days' dumps: cluster, dump dir, vault and
/// the two snapshot ids.
fn two_snapshots() -> (PgCluster, tempfile::TempDir, Vault, String, String) {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = two_days(&pg, dir.path());
    let v = Vault::local();
    v.init_with(SMALL_CHUNKS);
    let id = |r: Value| r["snapshot_id"].as_str().unwrap().to_string();
    let a = id(import(&v, &d1, "2026-11-01T02:00:00Z"));
    let b = id(import(&v, &d2, "2026-11-02T02:00:00Z"));
    (pg, dir, v, a, b)
}

#[test]
fn daily_dumps_are_stored_as_deltas_and_read_back_byte_for_byte() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = two_days(&pg, dir.path());

    let mut with = SMALL_CHUNKS.to_vec();
    with.extend(["--delta", "on"]);
    let mut without = SMALL_CHUNKS.to_vec();
    without.extend(["--delta", "off"]);
    let delta = Vault::local();
    delta.init_with(&with);
    let plain = Vault::local();
    plain.init_with(&without);

    let mut day2 = Vec::new();
    for v in [&delta, &plain] {
        let a = import(v, &d1, "2026-11-01T02:00:00Z");
        assert_eq!(a["chunks_new_delta"], 0, "nothing to build on yet: {a}");
        day2.push(import(v, &d2, "2026-11-02T02:00:00Z"));
    }
    let (dd, pd) = (&day2[0], &day2[1]);
    assert!(dd["chunks_new_delta"].as_u64().unwrap() > 0, "{dd}");
    assert_eq!(pd["chunks_new_delta"], 0, "{pd}");
    // The day's scattered updates touch most chunks; as deltas they cost a fraction.
    let (ds, ps) = (
        dd["bytes_stored_new"].as_u64().unwrap(),
        pd["bytes_stored_new"].as_u64().unwrap(),
    );
    assert!(ds * 3 < ps, "delta day 2 stored {ds} bytes, plain {ps}");

    // Every delta names a full base that the manifest records, and the base is stored.
    let all = manifests(&delta);
    let m2 = snapshot(&all, dd["snapshot_id"].as_str().unwrap());
    assert!(!bases_only(m2).is_empty());
    for b in m2.chunks.iter().filter_map(|c| c.base) {
        assert!(chunk_path(&delta, &b).exists());
        assert!(m2.chunks.iter().all(|c| c.id != b || c.base.is_none()));
    }

    // Byte for byte through cat and through the mount; pg_restore from the mount.
    let id2 = dd["snapshot_id"].as_str().unwrap();
    assert!(delta.cat(id2) == std::fs::read(&d2).unwrap());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::start(&delta, &mnt, &[]);
    let rel = format!("snapshots/{id2}/footdash.dump");
    assert!(std::fs::read(mount.join(&rel)).unwrap() == std::fs::read(&d2).unwrap());
    pg.create_db("restored");
    common::succeeded(
        pg.command("pg_restore")
            .args(["-d", "restored"])
            .arg(mount.join(&rel))
            .output()
            .unwrap(),
        "pg_restore from the mount",
    );
    assert_eq!(pg.row_counts("restored"), pg.row_counts("footdash"));
    drop(mount);

    // The data check rebuilds every delta on its base and re-hashes it.
    let c = delta.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");

    // A lost index costs nothing but a rebuild: the next day still finds its bases.
    std::fs::remove_dir_all(delta.dir.path().join("cache")).unwrap();
    delta.run(&["index", "rebuild"]).ok();
    pg.footdash_day("footdash", 2);
    let d3 = dir.path().join("day3.dump");
    pg.pg_dump_file("footdash", &d3);
    let m3 = import(&delta, &d3, "2026-11-03T02:00:00Z");
    assert!(m3["chunks_new_delta"].as_u64().unwrap() > 0, "{m3}");
    assert!(delta.cat(m3["snapshot_id"].as_str().unwrap()) == std::fs::read(&d3).unwrap());
}

#[test]
fn prune_keeps_a_base_while_a_delta_on_it_survives() {
    let (_pg, dir, v, ida, idb) = two_snapshots();
    let (ida, idb, d2) = (ida.as_str(), idb.as_str(), dir.path().join("day2.dump"));
    let all = manifests(&v);
    let bases = bases_only(snapshot(&all, idb));
    assert!(!bases.is_empty(), "day 2 has no delta on a day 1 chunk");
    let day1_only: Vec<ChunkId> = snapshot(&all, ida)
        .chunks
        .iter()
        .map(|c| c.id)
        .filter(|id| !bases.contains(id) && !snapshot(&all, idb).chunks.iter().any(|c| c.id == *id))
        .collect();

    // du counts the bases as day 2's, and as freed by nothing while day 2 lives.
    let du = v.run(&["du", "--json"]).ok().json();
    let e = du["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == idb)
        .unwrap();
    let base_bytes: u64 = bases
        .iter()
        .map(|b| std::fs::metadata(chunk_path(&v, b)).unwrap().len())
        .sum();
    assert!(e["stored_bytes"].as_u64().unwrap() >= base_bytes, "{e}");

    v.run(&["forget", "--keep-last", "1"]).ok();
    let p = v.run(&["prune", "--json"]).ok().json();
    assert!(p["chunks_deleted"].as_u64().unwrap() > 0, "{p}");
    for id in &day1_only {
        assert!(!chunk_path(&v, id).exists(), "day 1's own chunk survived");
    }
    for b in &bases {
        assert!(chunk_path(&v, b).exists(), "prune deleted a base");
    }
    assert!(v.cat(idb) == std::fs::read(&d2).unwrap());
    let c = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");
    // Nothing left to free: the bases are referenced.
    let again = v.run(&["prune", "--dry-run", "--json"]).ok().json();
    assert_eq!(again["chunks_deleted"], 0, "{again}");
}

#[test]
fn a_corrupt_base_fails_every_delta_on_it_and_names_the_snapshots() {
    let (_pg, _dir, v, ida, idb) = two_snapshots();
    let (ida, idb) = (ida.as_str(), idb.as_str());
    let all = manifests(&v);
    let m2 = snapshot(&all, idb);
    let base = *bases_only(m2).iter().next().unwrap();
    let deltas: Vec<String> = m2
        .chunks
        .iter()
        .filter(|c| c.base == Some(base))
        .map(|c| c.id.to_hex())
        .collect();
    assert!(!deltas.is_empty());

    let p = chunk_path(&v, &base);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&p, bytes).unwrap();

    let out = v.run(&["check", "--read-data", "--json"]);
    let c = out.json();
    assert_ne!(out.code, 0, "check passed with a corrupt base");
    let bad: Vec<(String, String)> = c["bad_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        bad.iter().any(|(id, _)| *id == base.to_hex()),
        "the base is not reported: {c}"
    );
    for d in &deltas {
        assert!(
            bad.iter().any(|(id, _)| id == d),
            "delta {d} on the corrupt base is not reported: {c}"
        );
    }
    let damaged: HashSet<&str> = c["damaged_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(damaged.contains(ida) && damaged.contains(idb), "{c}");

    // Reading day 2 fails loudly, naming the delta's base; nothing is passed off.
    let err = v.run(&["cat", idb]).fails();
    assert!(err.contains(&base.to_hex()), "{err}");
    assert!(
        err.contains("authentication") || err.contains("Corrupt") || err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn base_backups_are_stored_as_deltas_and_verify() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 2);
    let v = Vault::for_pg(&pg, &[]);
    let first = v.run(&["backup", "--base", "--json"]).ok().json();
    assert_eq!(first["chunks_new_delta"], 0);
    pg.footdash_day("footdash", 1);
    pg.psql("footdash", "CHECKPOINT");
    let second = v.run(&["backup", "--base", "--json"]).ok().json();
    // Heap pages with a few changed tuples: binary data found its earlier version.
    assert!(second["chunks_new_delta"].as_u64().unwrap() > 0, "{second}");
    let c = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(c["snapshots_checked"], 2);
}

mod property {
    //! Random data, randomly edited, through the repository's own write and read
    //! paths: whatever is stored as a delta reads back byte for byte.

    use super::*;
    use pgvault::chunker::ChunkerParams;
    use pgvault::store::writer::{NoProgress, SnapshotMeta};
    use pgvault::store::{InitOptions, SnapshotKind};
    use proptest::prelude::*;

    fn edit() -> impl Strategy<Value = (u8, f64, Vec<u8>)> {
        (
            0u8..3,
            0.0f64..1.0,
            proptest::collection::vec(any::<u8>(), 1..400),
        )
    }

    /// Text-like random rows, so that edits leave most of each chunk as it was.
    fn rows(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::new();
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(
                format!("{x}\t{}\tuser{}@example\n", x % 977, x % 100_003).as_bytes(),
            );
        }
        out.truncate(n);
        out
    }

    fn store(repo: &Repository, data: Vec<u8>, rt: &tokio::runtime::Runtime) -> SnapshotManifest {
        rt.block_on(async {
            let meta = SnapshotMeta {
                db: "prop".into(),
                kind: SnapshotKind::Dump,
                time: None,
                file_name: "prop.dump".into(),
            };
            let pending = repo
                .ingest(
                    Box::new(std::io::Cursor::new(data)),
                    meta,
                    None,
                    Arc::new(NoProgress),
                )
                .await
                .unwrap();
            pending.commit().await.unwrap()
        })
    }

    fn read(repo: &Repository, m: &SnapshotManifest, rt: &tokio::runtime::Runtime) -> Vec<u8> {
        let mut out = Vec::new();
        rt.block_on(repo.cat(m, &mut out, Arc::new(NoProgress)))
            .unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10))]
        #[test]
        fn random_edits_round_trip_through_deltas(
            seed in any::<u64>(),
            len in 20_000usize..400_000,
            edits in proptest::collection::vec(edit(), 1..20),
        ) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let opts = InitOptions {
                chunker: ChunkerParams { min_size_bytes: 2048, avg_size_bytes: 8192, max_size_bytes: 32768 },
                kdf: pgvault::crypto::KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 },
                ..InitOptions::default()
            };
            let backend = Arc::new(LocalBackend::new(dir.path().join("repo")));
            let repo = rt.block_on(Repository::init(backend, b"pw", opts, &dir.path().join("cache"))).unwrap();
            let original = rows(seed, len);
            let mut edited = original.clone();
            for (kind, at, bytes) in &edits {
                let pos = ((edited.len() as f64) * at) as usize;
                match kind {
                    0 => { let end = (pos + bytes.len()).min(edited.len()); edited.splice(pos..end, bytes.iter().copied()); }
                    1 => { edited.splice(pos..pos, bytes.iter().copied()); }
                    _ => { let end = (pos + bytes.len()).min(edited.len()); edited.drain(pos..end); }
                }
            }
            let a = store(&repo, original.clone(), &rt);
            let b = store(&repo, edited.clone(), &rt);
            prop_assert_eq!(read(&repo, &b, &rt), edited);
            prop_assert_eq!(read(&repo, &a, &rt), original);
        }
    }
}

#[test]
fn a_delta_left_without_its_base_by_a_killed_prune_is_stored_again_in_full() {
    let (_pg, dir, v, ida, idb) = two_snapshots();
    let all = manifests(&v);
    let m2 = snapshot(&all, &idb).clone();
    let base = *bases_only(&m2).iter().next().unwrap();
    // What a prune killed mid-way can leave: both snapshots forgotten, the base
    // deleted, a delta on it still stored. A new cache knows none of it.
    for id in [&ida, &idb] {
        std::fs::remove_file(v.repo_path().join("snapshots").join(id)).unwrap();
    }
    std::fs::remove_file(chunk_path(&v, &base)).unwrap();
    std::fs::remove_dir_all(&v.cache).unwrap();

    let again = import(&v, &dir.path().join("day2.dump"), "2026-11-03T02:00:00Z");
    let id = again["snapshot_id"].as_str().unwrap();
    assert!(v.cat(id) == std::fs::read(dir.path().join("day2.dump")).unwrap());
    let c = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");
    let m3 = manifests(&v).into_iter().find(|m| m.id == id).unwrap();
    assert!(m3.chunks.iter().all(|c| c.base != Some(base)));
}
