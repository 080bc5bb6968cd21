//! prune's planning cost against the number of chunks: building the set of referenced
//! chunk ids from the manifests, then sorting the chunk listing into keep and delete.
//! Synthetic repositories of 10k, 100k and 1M chunks; manifests of 2,000 chunks each
//! (a 500 MB dump at 256 KiB chunks), neighbours sharing half their chunks, 90% of the
//! chunks referenced. Besides criterion's times it prints the memory each stage holds
//! at its peak (heap bytes, counted by a wrapping allocator), and what the inputs
//! themselves (the listing and the manifests) take.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgvault::backend::ObjectStat;
use pgvault::crypto::ChunkId;
use pgvault::ops::prune::{plan_prune, referenced_chunks};
use pgvault::store::layout::chunk;
use pgvault::store::manifest::{BackupStats, ChunkRef, SnapshotKind, SnapshotManifest};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes `f` holds at its peak above what was allocated before, and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

fn id(i: u64) -> ChunkId {
    ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

const PER_MANIFEST: u64 = 2000;

fn synthetic(n: u64) -> (Vec<ObjectStat>, Vec<SnapshotManifest>) {
    let t = chrono::Utc::now();
    let listing = (0..n)
        .map(|i| ObjectStat {
            key: chunk(&id(i)),
            size_bytes: 100_000 + i % 1000,
            modified: Some(t),
        })
        .collect();
    let referenced = n * 9 / 10;
    let mut manifests = Vec::new();
    let mut start = 0;
    while start < referenced {
        let end = (start + PER_MANIFEST).min(referenced);
        manifests.push(SnapshotManifest {
            id: format!("{start:064x}"),
            time: t,
            started: t,
            finished: t,
            db: "db".into(),
            kind: SnapshotKind::Dump,
            hostname: "h".into(),
            file_name: "db.dump".into(),
            size_bytes: 0,
            chunks: (start..end)
                // Every other chunk a delta on its neighbour, as in daily dumps.
                .map(|i| ChunkRef {
                    id: id(i),
                    len: 262_144,
                    base: (i % 2 == 1).then(|| id(i - 1)),
                })
                .collect(),
            stats: BackupStats::default(),
            dump_offsets_filled: false,
            base: None,
            dump_contents: None,
            recreation: None,
            sketches: Vec::new(),
        });
        start += PER_MANIFEST / 2;
    }
    (listing, manifests)
}

fn plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("prune_plan");
    g.sample_size(10);
    for n in [10_000u64, 100_000, 1_000_000] {
        let ((listing, manifests), input_bytes) = peak_of(|| synthetic(n));
        let refs: usize = manifests.iter().map(|m| m.chunks.len()).sum();
        let (referenced, set_bytes) = peak_of(|| referenced_chunks(&manifests));
        let (p, plan_bytes) = peak_of(|| plan_prune(&listing, &referenced, None));
        eprintln!(
            "prune_plan/{n}: {} manifests, {refs} references; inputs {} MiB; \
             referenced set peak {} MiB; plan peak {} MiB; deletes {}",
            manifests.len(),
            input_bytes >> 20,
            set_bytes >> 20,
            plan_bytes >> 20,
            p.delete.len()
        );
        drop((referenced, p));
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let referenced = referenced_chunks(&manifests);
                plan_prune(&listing, &referenced, None).delete.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, plan);
criterion_main!(benches);
