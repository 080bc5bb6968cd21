//! Backup throughput to a real S3 server (SeaweedFS on 127.0.0.1) against the local
//! backend, in one run, on the same FootDash dump: `cargo bench --bench s3_backup`.
//! Not part of CI. Needs PostgreSQL 15 and `weed` (scripts/install-deps.sh test).
//!
//! Each run backs the dump up into a fresh repository, so every chunk is new and
//! uploaded (the cold case); then a second backup of the same dump with an empty
//! cache, where every chunk is found already stored by asking the backend (one
//! HEAD per chunk on S3). Medians over the runs are printed.
//!
//! `BENCH_SCALE` sets the FootDash scale (default 20, about 30 MB of dump),
//! `BENCH_RUNS` the number of runs per case (default 5).
//!
//! Measured here (2 cores, with other builds keeping the load average near 5, so
//! read these as lower bounds), scale 80, a 122.7 MB dump, medians of 5:
//! local 0.78 s cold (158 MB/s), 0.31 s unchanged (396 MB/s);
//! S3 (SeaweedFS on loopback) 1.46 s cold (84 MB/s), 0.39 s unchanged (316 MB/s).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgvault::backend::local::LocalBackend;
use pgvault::backend::s3::S3Backend;
use pgvault::backend::Backend;
use pgvault::crypto::KdfParams;
use pgvault::store::writer::{NoProgress, SnapshotMeta};
use pgvault::store::{InitOptions, Repository, SnapshotKind};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn backup(repo: &Repository, dump: &Arc<Vec<u8>>) -> Duration {
    let started = Instant::now();
    let source = std::io::Cursor::new(dump.as_ref().clone());
    let meta = SnapshotMeta {
        db: "footdash".into(),
        kind: SnapshotKind::Dump,
        time: None,
        file_name: "footdash.dump".into(),
    };
    let pending = repo
        .ingest(Box::new(source), meta, None, Arc::new(NoProgress))
        .await
        .unwrap();
    pending.commit().await.unwrap();
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes harness flags such as --bench; nothing to parse.
    let scale = env_or("BENCH_SCALE", 20) as u32;
    let runs = env_or("BENCH_RUNS", 5);
    let cache = tempfile::tempdir().unwrap();

    eprintln!("Preparing a FootDash dump at scale {scale}...");
    let pg = common::pg::PgCluster::start();
    pg.create_footdash("footdash", scale);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("footdash.dump");
    pg.pg_dump_file("footdash", &file);
    let dump = Arc::new(std::fs::read(&file).unwrap());
    drop(pg);
    let mb = dump.len() as f64 / 1e6;

    let server = common::s3::S3Server::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = InitOptions {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        ..InitOptions::default()
    };

    let mut results = Vec::new();
    for backend_name in ["local", "s3"] {
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for run in 0..runs {
            let backend: Arc<dyn Backend> = match backend_name {
                "local" => Arc::new(LocalBackend::new(tmp.path().join(format!("repo-{run}")))),
                _ => {
                    let bucket = server.new_bucket(&format!("bench-{run}"));
                    Arc::new(
                        rt.block_on(S3Backend::connect(
                            &format!("s3://{bucket}/bench"),
                            &server.options(),
                        ))
                        .unwrap(),
                    )
                }
            };
            rt.block_on(async {
                let repo = Repository::init(backend, b"bench", opts.clone(), cache.path())
                    .await
                    .unwrap();
                cold.push(backup(&repo, &dump).await);
                repo.index().remove().await.unwrap();
                warm.push(backup(&repo, &dump).await);
            });
        }
        let (c, w) = (median(cold), median(warm));
        results.push((backend_name, c, w));
        eprintln!(
            "{backend_name}: cold {:.2} s ({:.1} MB/s), unchanged again {:.2} s ({:.1} MB/s)",
            c.as_secs_f64(),
            mb / c.as_secs_f64(),
            w.as_secs_f64(),
            mb / w.as_secs_f64()
        );
    }
    println!("\nBackup of a {mb:.1} MB FootDash dump (scale {scale}), median of {runs} runs:");
    println!(
        "{:<8} {:>12} {:>10} {:>16} {:>10}",
        "backend", "new chunks", "MB/s", "unchanged again", "MB/s"
    );
    for (name, c, w) in &results {
        println!(
            "{:<8} {:>10.2} s {:>10.1} {:>14.2} s {:>10.1}",
            name,
            c.as_secs_f64(),
            mb / c.as_secs_f64(),
            w.as_secs_f64(),
            mb / w.as_secs_f64()
        );
    }
}
