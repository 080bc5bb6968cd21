//! The write path's stages, each with byte throughput: cutting (FastCDC), keyed
//! hashing (blake3), compression (zstd), sealing (AES-256-GCM), and all of them as
//! one chunk is stored. Input is dump-like text, so compression ratios are honest.
//! The `delta` group measures what delta chunks add: the sketch of a new chunk, its
//! delta on a base with 1% of its rows changed, and rebuilding it on read.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgvault::chunker::ChunkerParams;
use pgvault::crypto::MasterKey;
use pgvault::sketch::Sketch;
use pgvault::store::format::{delta_compress, delta_decompress, encode_chunk};

/// COPY-like rows: ids, dates, names and hex hashes, as a pg_dump data block holds.
fn dump_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut i: u64 = 0;
    while out.len() < len {
        let h = blake3::hash(&i.to_le_bytes());
        let hex = h.to_hex();
        out.extend_from_slice(
            format!(
                "{i}\tuser_{}\t{}@example.org\t2024-0{}-1{} 12:{:02}:00+00\t{}\n",
                &hex[..8],
                &hex[8..16],
                1 + i % 9,
                i % 10,
                i % 60,
                &hex[16..48]
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn stages(c: &mut Criterion) {
    let data = dump_like(16 << 20);
    let key = MasterKey::generate();
    let params = ChunkerParams::default();
    let chunk = &data[..256 * 1024];

    let mut g = c.benchmark_group("write_path");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("fastcdc_16MiB", |b| b.iter(|| params.cut(&data).len()));
    g.bench_function("keyed_blake3_16MiB", |b| b.iter(|| key.chunk_id(&data)));

    g.throughput(Throughput::Bytes(chunk.len() as u64));
    for level in [1, 3, 6] {
        g.bench_with_input(BenchmarkId::new("zstd_256KiB", level), &level, |b, &l| {
            b.iter(|| zstd::bulk::compress(chunk, l).unwrap().len())
        });
    }
    g.bench_function("aes256gcm_seal_256KiB", |b| {
        b.iter(|| key.seal(chunk, b"bench").len())
    });
    g.bench_function("encode_chunk_256KiB", |b| {
        let id = key.chunk_id(chunk);
        b.iter(|| encode_chunk(&key, &id, chunk, 3).len())
    });
    g.finish();
}

fn delta(c: &mut Criterion) {
    let base = dump_like(256 * 1024);
    // A 100-byte stretch in every 10,000 rewritten with new bytes: a day's scattered
    // row updates.
    let mut edited = base.clone();
    for at in (0..edited.len() - 100).step_by(10_000) {
        let fresh = blake3::hash(&at.to_le_bytes()).to_hex();
        edited[at..at + 64].copy_from_slice(fresh.as_bytes());
        edited[at + 64..at + 100].copy_from_slice(&fresh.as_bytes()[..36]);
    }
    let mut g = c.benchmark_group("delta");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(edited.len() as u64));
    g.bench_function("sketch_256KiB", |b| b.iter(|| Sketch::of(&edited)));
    g.bench_function("delta_compress_256KiB", |b| {
        b.iter(|| delta_compress(&edited, &base, 3).len())
    });
    g.bench_function("full_compress_256KiB", |b| {
        b.iter(|| zstd::bulk::compress(&edited, 3).unwrap().len())
    });
    let d = delta_compress(&edited, &base, 3);
    let full = zstd::bulk::compress(&edited, 3).unwrap();
    g.bench_function("delta_decompress_256KiB", |b| {
        b.iter(|| {
            delta_decompress(&d, &base, edited.len(), "bench")
                .unwrap()
                .len()
        })
    });
    g.bench_function("full_decompress_256KiB", |b| {
        b.iter(|| zstd::bulk::decompress(&full, edited.len()).unwrap().len())
    });
    g.finish();
    eprintln!(
        "delta of a 256 KiB chunk with 1% of it changed: {} bytes; compressed in full: {} bytes",
        d.len(),
        full.len()
    );
}

criterion_group!(benches, stages, delta);
criterion_main!(benches);
