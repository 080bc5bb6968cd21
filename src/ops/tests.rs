//! Fast tests of the operations on the in-memory backend: forget and prune free what
//! they say, and keep what survivors need.

use std::time::Duration;

use super::forget::{forget, ForgetOptions};
use super::prune::{prune, PruneOptions};
use super::retention::{Filter, Policy};
use crate::store::layout;
use crate::store::tests::{backup, backup_at, cat, memory_repo, rows};

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
