//! Fast tests of the operations on the in-memory backend: forget and prune free what
//! they say, and keep what survivors need.

use std::sync::Arc;
use std::time::Duration;

use super::forget::{forget, ForgetOptions};
use super::prune::{prune, PruneOptions};
use super::retention::{Filter, Policy};
use crate::store::layout;
use crate::store::tests::{backup, backup_at, cat, memory_repo, rows};
use crate::store::writer::NoProgress;

fn prune_opts(dry_run: bool) -> PruneOptions {
    PruneOptions {
        dry_run,
        grace: Duration::ZERO,
        lock_wait: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn prune_frees_exactly_what_the_dry_run_said_and_survivors_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, store) = memory_repo(&dir).await;
    let old = rows(21, 8_000);
    let keep = rows(23, 8_000);
    let m_old = backup_at(&repo, "db", &old, "2026-11-01T02:00:00Z").await;
    let m_keep = backup_at(&repo, "db", &keep, "2026-11-02T02:00:00Z").await;
    let chunks_before = store
        .keys()
        .iter()
        .filter(|k| k.starts_with(layout::CHUNKS))
        .count();

    let opts = ForgetOptions {
        policy: Policy {
            keep_last: Some(1),
            ..Policy::default()
        },
        filter: Filter::default(),
        dry_run: true,
        lock_wait: Duration::from_secs(5),
        prune: Some(prune_opts(true)),
    };
    let planned = forget(&repo, &opts).await.unwrap();
    assert_eq!(planned.plan.to_remove().count(), 1);
    let would = planned.prune.unwrap();
    assert!(would.chunks_deleted > 0);
    assert_eq!(
        repo.snapshots().await.unwrap().len(),
        2,
        "a dry run changes nothing"
    );

    let done = forget(
        &repo,
        &ForgetOptions {
            dry_run: false,
            prune: Some(prune_opts(false)),
            ..opts
        },
    )
    .await
    .unwrap();
    assert_eq!(done.removed, 1);
    let freed = done.prune.unwrap();
    assert_eq!(freed.chunks_deleted, would.chunks_deleted);
    assert_eq!(freed.bytes_freed, would.bytes_freed);
    let chunks_after = store
        .keys()
        .iter()
        .filter(|k| k.starts_with(layout::CHUNKS))
        .count();
    assert_eq!(chunks_before - chunks_after, freed.chunks_deleted as usize);
    assert_eq!(cat(&repo, &m_keep).await.unwrap(), keep);
    assert!(cat(&repo, &m_old).await.is_err());
    // Nothing left to free, and no lock left behind.
    assert_eq!(
        prune(&repo, &prune_opts(false))
            .await
            .unwrap()
            .chunks_deleted,
        0
    );
    assert!(repo.locks().await.unwrap().is_empty());
}

#[tokio::test]
async fn prune_keeps_the_base_of_a_surviving_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    // Day 1 ends with rows that day 2 no longer has.
    let mut day2 = rows(25, 20_000);
    let mut day1 = day2.clone();
    day1.extend(rows(27, 5_000));
    for i in (50..day2.len()).step_by(15_000) {
        day2[i] = b'!';
    }
    let m1 = backup(&repo, "db", &day1).await;
    let m2 = backup(&repo, "db", &day2).await;
    assert!(m2.chunks.iter().any(|c| c.base.is_some()));
    repo.delete_snapshot(&m1.id).await.unwrap();
    let report = prune(&repo, &prune_opts(false)).await.unwrap();
    assert!(report.chunks_deleted > 0, "day 1's own chunks go");
    assert_eq!(cat(&repo, &m2).await.unwrap(), day2);
}

/// A table whose rows drift day by day, as FootDash's do: some rows change, a few
/// are deleted, new ones arrive at the end. After two months little of day 1's text
/// is left, which is what bases that never move could not follow.
struct DriftingTable {
    rows: Vec<String>,
    next_id: u64,
    state: u64,
}

impl DriftingTable {
    fn new(n: u64) -> Self {
        let mut t = DriftingTable {
            rows: Vec::new(),
            next_id: 0,
            state: 0x9e37_79b9_7f4a_7c15,
        };
        for _ in 0..n {
            let row = t.fresh_row();
            t.rows.push(row);
        }
        t
    }

    fn rand(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn fresh_row(&mut self) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let (a, b) = (self.rand(), self.rand());
        format!(
            "{id}\tplayer{}\tteam{}\t{}\t{}\n",
            a % 99_991,
            b % 97,
            a % 1_000_003,
            b % 10_007
        )
    }

    fn next_day(&mut self) {
        let n = self.rows.len() as u64;
        for _ in 0..n / 50 {
            let i = (self.rand() % self.rows.len() as u64) as usize;
            let id = self.rows[i].split('\t').next().unwrap().to_string();
            let v = self.rand();
            self.rows[i] = format!(
                "{id}\tplayer{}\tteam{}\t{v}\t{}\n",
                v % 99_991,
                v % 97,
                v % 7
            );
        }
        for _ in 0..n / 300 {
            let i = (self.rand() % self.rows.len() as u64) as usize;
            self.rows.remove(i);
        }
        for _ in 0..n / 200 {
            let row = self.fresh_row();
            self.rows.push(row);
        }
    }

    fn dump(&self) -> Vec<u8> {
        self.rows.concat().into_bytes()
    }
}

#[tokio::test]
async fn sixty_days_of_retention_keep_survivors_exact_and_retire_old_bases() {
    use super::check::{check, ReadData};
    use std::collections::{BTreeMap, HashSet};

    let dir = tempfile::tempdir().unwrap();
    let (repo, store) = memory_repo(&dir).await;
    let mut table = DriftingTable::new(12_000);
    let first = chrono::DateTime::parse_from_rfc3339("2026-09-01T02:00:00Z")
        .unwrap()
        .to_utc();
    let runbook = ForgetOptions {
        policy: Policy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            ..Policy::default()
        },
        filter: Filter::default(),
        dry_run: false,
        lock_wait: Duration::from_secs(5),
        prune: Some(prune_opts(false)),
    };
    let mut data_by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut added = Vec::new();
    let mut bases_seen: HashSet<crate::crypto::ChunkId> = HashSet::new();
    let mut pruned_chunks = 0;
    for day in 0..60 {
        if day > 0 {
            table.next_day();
        }
        let data = table.dump();
        let time = crate::time::rfc3339(&(first + chrono::Duration::days(day)));
        let m = backup_at(&repo, "footdash", &data, &time).await;
        added.push(m.stats.bytes_stored_new);
        bases_seen.extend(m.chunks.iter().filter_map(|c| c.base));
        data_by_id.insert(m.id.clone(), data);
        let done = forget(&repo, &runbook).await.unwrap();
        pruned_chunks += done.prune.unwrap().chunks_deleted;
        let alive: HashSet<String> = repo
            .snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        data_by_id.retain(|id, _| alive.contains(id));
    }

    // The runbook keeps 7 dailies and 4 weeklies, the newest two weeks' points among
    // the dailies (day 60 is a Friday).
    let survivors = repo.snapshots().await.unwrap();
    assert!(survivors.len() == 9, "{} survivors", survivors.len());
    assert!(pruned_chunks > 0);
    for m in &survivors {
        assert_eq!(
            &cat(&repo, m).await.unwrap(),
            &data_by_id[&m.id],
            "snapshot {} of {}",
            m.id,
            m.time
        );
    }
    // A check starts cold, as a separate run would, and reads every chunk object
    // once: a base beside its deltas, not once for each of them.
    let repo =
        crate::store::Repository::open(std::sync::Arc::new(store.clone()), b"pw", dir.path())
            .await
            .unwrap();
    store.take_reads();
    let report = check(&repo, &ReadData::All, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let reads = store.take_reads();
    let chunk_reads: Vec<_> = reads
        .iter()
        .filter(|(k, _)| k.starts_with(layout::CHUNKS))
        .collect();
    assert_eq!(chunk_reads.len() as u64, report.chunks_read);
    let again: Vec<_> = chunk_reads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(again.is_empty(), "read more than once: {again:?}");

    // Bases follow the data: some base that deltas once relied on is gone, freed by
    // prune once no survivor needed it, and every base a survivor needs is stored.
    let stored: HashSet<String> = store.keys().into_iter().collect();
    let needed: HashSet<_> = survivors
        .iter()
        .flat_map(|m| m.chunks.iter().filter_map(|c| c.base))
        .collect();
    let retired = bases_seen
        .iter()
        .filter(|b| !stored.contains(&layout::chunk(b)))
        .count();
    assert!(retired > 0, "no base was ever retired and pruned");
    assert!(needed.iter().all(|b| stored.contains(&layout::chunk(b))));

    // A changed day costs about what the first week's days cost, not more and more.
    let median = |xs: &[u64]| {
        let mut v = xs.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (first_week, last_week) = (median(&added[1..8]), median(&added[53..60]));
    assert!(
        last_week <= first_week * 2,
        "daily cost grew from {first_week} to {last_week} bytes: {added:?}"
    );
}
