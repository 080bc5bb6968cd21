//! The backend conformance suite: one set of cases, run against the local backend,
//! the in-memory backend (which the fast unit tests stand on), and S3Backend on a
//! real S3 server (SeaweedFS on 127.0.0.1, SigV4 enforced).
//!
//! Every case gets a fresh store: a new directory, or a new bucket (and a prefix inside
//! it, so that prefix handling is exercised too) on a server of its own. The S3-only
//! tests at the end cover what has no local counterpart: signatures, missing buckets,
//! unreachable endpoints and a server that goes away.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgvault::backend::local::LocalBackend;
use pgvault::backend::memory::MemoryBackend;
use pgvault::backend::s3::{S3Backend, S3Options};
use pgvault::backend::Backend;
use pgvault::ErrorKind;

use common::s3::S3Server;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `case` on a fresh local store.
fn on_local<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Backend>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("store")));
    runtime().block_on(async {
        backend.prepare_root().await.unwrap();
        case(backend).await
    });
}

/// Runs `case` on a fresh in-memory store.
fn on_memory<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Backend>) -> Fut,
    Fut: Future<Output = ()>,
{
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new("conformance"));
    runtime().block_on(async {
        backend.prepare_root().await.unwrap();
        case(backend).await
    });
}

/// Runs `case` on a fresh bucket (under a prefix) of a fresh S3 server.
fn on_s3<F, Fut>(name: &str, case: F)
where
    F: FnOnce(Arc<dyn Backend>) -> Fut,
    Fut: Future<Output = ()>,
{
    let server = S3Server::start();
    let bucket = server.new_bucket(name);
    let rt = runtime();
    rt.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(
            S3Backend::connect(
                &format!("s3://{bucket}/conformance/{name}"),
                &server.options(),
            )
            .await
            .unwrap(),
        );
        case(backend).await
    });
    drop(rt);
    // Nothing leaked out of the prefix.
    for key in server.keys(&bucket, "") {
        assert!(
            key.starts_with(&format!("conformance/{name}/")),
            "{key} is outside the prefix"
        );
    }
}

/// One `#[test]` per backend for each case.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $case() { super::on_local(super::cases::$case); })*
        }
        mod memory {
            $(#[test] fn $case() { super::on_memory(super::cases::$case); })*
        }
        mod s3 {
            $(#[test] fn $case() { super::on_s3(stringify!($case), super::cases::$case); })*
        }
    };
}

conformance!(
    put_get_exists_delete,
    missing_objects_are_not_found,
    list_filters_by_prefix,
    list_pages_past_1000_keys,
    put_if_absent_never_replaces,
    put_if_absent_has_exactly_one_winner_among_racers,
    empty_and_large_objects_round_trip,
);

mod cases {
    use super::*;

    pub async fn put_get_exists_delete(b: Arc<dyn Backend>) {
        b.put("chunks/ab/abcd", b"hello".to_vec()).await.unwrap();
        assert_eq!(b.get("chunks/ab/abcd").await.unwrap(), b"hello");
        assert!(b.exists("chunks/ab/abcd").await.unwrap());
        assert!(!b.exists("chunks/ab/abce").await.unwrap());
        assert!(!b.exists("chunks/zz/abcd").await.unwrap());
        // Content-addressed keys may be put again with the same bytes.
        b.put("chunks/ab/abcd", b"hello".to_vec()).await.unwrap();
        assert_eq!(b.get("chunks/ab/abcd").await.unwrap(), b"hello");
        b.delete("chunks/ab/abcd").await.unwrap();
        assert!(!b.exists("chunks/ab/abcd").await.unwrap());
        // Deleting what is not there is not an error.
        b.delete("chunks/ab/abcd").await.unwrap();
        b.delete("never/was/here").await.unwrap();
    }

    pub async fn missing_objects_are_not_found(b: Arc<dyn Backend>) {
        b.put("snapshots/present", b"x".to_vec()).await.unwrap();
        for key in ["snapshots/absent", "no/such/dir/object", "config"] {
            let e = b.get(key).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{key}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(key), "{msg}");
            assert!(msg.contains(&b.location()), "{msg}");
        }
    }

    pub async fn list_filters_by_prefix(b: Arc<dyn Backend>) {
        let objects: BTreeMap<&str, usize> = [
            ("chunks/00/00aa", 3),
            ("chunks/00/00bb", 0),
            ("chunks/ff/ffcc", 10),
            ("chunksx", 1),
            ("keys/k1", 4),
            ("snapshots/s1", 5),
            ("config", 2),
        ]
        .into_iter()
        .collect();
        for (k, n) in &objects {
            b.put(k, vec![7u8; *n]).await.unwrap();
        }
        let listed = |prefix: &'static str| {
            let b = b.clone();
            async move {
                let mut v: Vec<(String, u64)> = b
                    .list(prefix)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| (o.key, o.size_bytes))
                    .collect();
                v.sort();
                v
            }
        };
        let want = |prefix: &str| {
            objects
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, n)| (k.to_string(), *n as u64))
                .collect::<Vec<_>>()
        };
        for prefix in [
            "",
            "chunks/",
            "chunks/00/",
            "chunks",
            "chunks/f",
            "keys/",
            "snap",
            "nothing/",
            "config",
        ] {
            assert_eq!(listed(prefix).await, want(prefix), "prefix {prefix:?}");
        }
    }

    pub async fn list_pages_past_1000_keys(b: Arc<dyn Backend>) {
        const N: usize = 1100;
        let started = Instant::now();
        // Sixteen writers, as the backup write path has in flight.
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..16 {
            let b = b.clone();
            tasks.spawn(async move {
                for i in (w..N).step_by(16) {
                    b.put(
                        &format!("many/{:02x}/{i:05}", i % 256),
                        i.to_le_bytes().to_vec(),
                    )
                    .await
                    .unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        b.put("other/x", b"x".to_vec()).await.unwrap();
        eprintln!("stored {N} objects in {:?}", started.elapsed());
        let listed = b.list("many/").await.unwrap();
        assert_eq!(listed.len(), N);
        let keys: HashSet<String> = listed.iter().map(|o| o.key.clone()).collect();
        assert_eq!(keys.len(), N, "no key listed twice");
        for i in 0..N {
            assert!(
                keys.contains(&format!("many/{:02x}/{i:05}", i % 256)),
                "{i}"
            );
        }
        assert!(listed.iter().all(|o| o.size_bytes == 8));
        assert_eq!(b.list("").await.unwrap().len(), N + 1);
    }

    pub async fn put_if_absent_never_replaces(b: Arc<dyn Backend>) {
        assert!(b.put_if_absent("locks/a", b"first".to_vec()).await.unwrap());
        assert!(!b
            .put_if_absent("locks/a", b"second".to_vec())
            .await
            .unwrap());
        assert_eq!(b.get("locks/a").await.unwrap(), b"first");
        // After a delete the key is free again.
        b.delete("locks/a").await.unwrap();
        assert!(b.put_if_absent("locks/a", b"third".to_vec()).await.unwrap());
        assert_eq!(b.get("locks/a").await.unwrap(), b"third");
        // An object stored by plain put counts as present too.
        b.put("keys/k", b"plain".to_vec()).await.unwrap();
        assert!(!b.put_if_absent("keys/k", b"other".to_vec()).await.unwrap());
        assert_eq!(b.get("keys/k").await.unwrap(), b"plain");
    }

    pub async fn put_if_absent_has_exactly_one_winner_among_racers(b: Arc<dyn Backend>) {
        const RACERS: usize = 8;
        for round in 0..5 {
            let key = format!("locks/race-{round}");
            let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
            let mut tasks = tokio::task::JoinSet::new();
            for r in 0..RACERS {
                let (b, key, barrier) = (b.clone(), key.clone(), barrier.clone());
                tasks.spawn(async move {
                    let data = format!("racer {r} of round {round}").into_bytes();
                    barrier.wait().await;
                    (b.put_if_absent(&key, data.clone()).await.unwrap(), data)
                });
            }
            let mut winners = Vec::new();
            while let Some(res) = tasks.join_next().await {
                let (won, data) = res.unwrap();
                if won {
                    winners.push(data);
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: exactly one racer wins");
            assert_eq!(
                b.get(&key).await.unwrap(),
                winners[0],
                "the winner's bytes stay"
            );
        }
    }

    pub async fn empty_and_large_objects_round_trip(b: Arc<dyn Backend>) {
        b.put("empty", Vec::new()).await.unwrap();
        assert_eq!(b.get("empty").await.unwrap(), Vec::<u8>::new());
        assert!(b.exists("empty").await.unwrap());
        let large: Vec<u8> = (0..6 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        b.put("chunks/la/large", large.clone()).await.unwrap();
        assert_eq!(b.get("chunks/la/large").await.unwrap(), large);
        let listed = b.list("chunks/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size_bytes, large.len() as u64);
    }
}

// ---- S3 only ----

async fn s3_backend(location: &str, opts: &S3Options) -> S3Backend {
    S3Backend::connect(location, opts).await.unwrap()
}

#[test]
fn s3_signatures_are_enforced() {
    let server = S3Server::start();
    let bucket = server.new_bucket("sig");
    assert!(
        server.rejects_secret("not-the-secret"),
        "SigV4 must be enforced"
    );
    let mut opts = server.options();
    opts.static_credentials = Some((common::s3::ACCESS_KEY.into(), "wrong-secret".into()));
    let rt = runtime();
    rt.block_on(async {
        let b = s3_backend(&format!("s3://{bucket}/p"), &opts).await;
        let e = b.get("config").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("secret key is wrong"), "{msg}");
        assert!(msg.contains(&server.endpoint()), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        // Writes are refused as well, and not reported as "already exists".
        let e = b.put_if_absent("keys/x", b"x".to_vec()).await.unwrap_err();
        assert!(e.to_string().contains("secret key is wrong"), "{e}");
        opts.static_credentials = Some(("nobody".into(), "x".into()));
        let b = s3_backend(&format!("s3://{bucket}/p"), &opts).await;
        let e = b.list("").await.unwrap_err();
        assert!(e.to_string().contains("access key id"), "{e}");
    });
    drop(rt);
    assert!(server.keys(&bucket, "").is_empty());
}

#[test]
fn s3_missing_bucket_is_unavailable_not_not_found() {
    let server = S3Server::start();
    let rt = runtime();
    rt.block_on(async {
        let b = s3_backend("s3://no-such-bucket/p", &server.options()).await;
        for e in [
            b.get("config").await.unwrap_err(),
            b.list("").await.unwrap_err(),
            b.put("x", b"x".to_vec()).await.unwrap_err(),
        ] {
            // wal-fetch must not take a missing bucket for a missing segment.
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
            assert!(
                e.to_string().starts_with(
                    "Bucket no-such-bucket does not exist at S3 endpoint http://127.0.0.1:"
                ),
                "{e}"
            );
        }
        // init's preparation creates it.
        b.prepare_root().await.unwrap();
        b.prepare_root().await.unwrap();
        b.put("x", b"x".to_vec()).await.unwrap();
        assert_eq!(b.get("x").await.unwrap(), b"x");
    });
}

#[test]
fn s3_unreachable_endpoint_fails_with_one_clear_line() {
    // A port nobody listens on.
    let port = common::pg::free_port();
    let opts = S3Options {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        static_credentials: Some(("a".into(), "b".into())),
        path_style: false,
        timeouts: Default::default(),
    };
    let rt = runtime();
    rt.block_on(async {
        let b = s3_backend("s3://bucket/p", &opts).await;
        let started = Instant::now();
        let e = b.get("config").await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "Cannot reach S3 endpoint http://127.0.0.1:{port} to read s3://bucket/p/config: "
            )),
            "{msg}"
        );
        assert!(msg.contains("refused"), "{msg}");
        eprintln!("gave up after {took:?}: {msg}");
        // Nothing ever answered: a wrong URL, reported without the long retries an
        // outage in the middle of a backup gets.
        assert!(took < Duration::from_secs(5), "{took:?}");
        let e = b.put_if_absent("keys/k", b"k".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains("s3://bucket/p/keys/k"), "{e}");
    });
}

#[test]
fn s3_outage_fails_requests_and_recovery_needs_no_new_client() {
    let server = S3Server::start();
    let bucket = server.new_bucket("outage");
    let rt = runtime();
    let b = rt.block_on(s3_backend(&format!("s3://{bucket}"), &server.options()));
    rt.block_on(async {
        b.put("a", b"a".to_vec()).await.unwrap();
    });
    server.stop();
    rt.block_on(async {
        let e = b.get("a").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains(&server.endpoint()), "{e}");
        let e = b.exists("a").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    });
    server.restart();
    rt.block_on(async {
        // Pooled connections to the old process are dead; the client reconnects. For
        // a few seconds after giving up it does not ask (so the clean-up after a
        // failure adds no waiting), then it asks again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            match b.get("a").await {
                Ok(v) => break v,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("the client did not recover: {e}"),
            }
        };
        assert_eq!(got, b"a");
        assert!(b.put_if_absent("b", b"b".to_vec()).await.unwrap());
    });
}

/// A stand-in for a store that says a listing is truncated but not where it goes
/// on: a few lines of HTTP on a local port, answering every request alike.
fn truncating_store() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><Prefix>p/chunks/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>p/chunks/aa/aaaa</Key><Size>3</Size><LastModified>2026-11-29T00:00:00.000Z</LastModified></Contents></ListBucketResult>"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_truncated_listing_without_a_continuation_token_is_an_error_not_a_short_list() {
    let opts = S3Options {
        endpoint_url: Some(truncating_store()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("a".into(), "b".into())),
        path_style: true,
        timeouts: Default::default(),
    };
    runtime().block_on(async {
        let b = s3_backend("s3://bucket/p", &opts).await;
        let e = b.list_stat("chunks/").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(
            e.to_string().contains("without a continuation token"),
            "{e}"
        );
    });
}
