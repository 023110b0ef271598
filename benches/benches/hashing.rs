//! Hashing throughput, per core: the scan a checkpoint runs to find dirty pages.
//!
//! Runs in a one-thread rayon pool so that the figures are GB/s per core.
//! - `fresh`: nothing known yet (every page hashed once with XXH3-128 and once with blake3,
//!   from one copy: the first checkpoint), span by span, each copied into the buffer the
//!   previous one used, as a full version's spans reuse the buffers its writer gives back;
//! - `clean`: change detection over unchanged memory (XXH3-128 per 4 KiB page);
//! - `dirty_1pct`: the same with 1 % of the pages changed (those are copied and blake3-hashed);
//! - `xxh3_per_page` and `blake3_per_page`: one call of each hash per 4 KiB page;
//! - `blake3_16_pages_at_once`: the same blake3 hashes, 16 pages side by side in the SIMD
//!   lanes, as restores and full versions compute them;
//! - `read_only`: a pass that only reads the same memory (a byte per cache line), the bound
//!   for any change detection;
//! - `hash_per_core_in_cache`: both hashes over 1 MiB that stays in cache.

#![allow(missing_docs)] // criterion_main! generates an undocumented `main`.

use ckpt_engine::bench::{fill_field, Rng};
use ckpt_engine::hashing;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MIB: usize = 64;

fn data() -> Vec<u8> {
    let mut f = vec![0f64; (MIB << 20) / 8];
    fill_field(&mut f, 0, 1);
    f.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut bytes = data();
    let ps = 4096;
    let mut g = c.benchmark_group("hash_per_core");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("fresh", MIB), |b| {
        b.iter(|| pool.install(|| hashing::hash_fresh(&bytes, ps).expect("map a copy")))
    });
    let known = pool
        .install(|| hashing::remember(&bytes, ps))
        .expect("map a copy");
    g.bench_function(BenchmarkId::new("clean", MIB), |b| {
        b.iter(|| pool.install(|| hashing::rescan(&bytes, ps, &known).expect("map a copy")))
    });
    let mut rng = Rng::new(3);
    let pages = bytes.len() / ps;
    for _ in 0..pages / 100 {
        let p = rng.below(pages as u64) as usize;
        bytes[p * ps] ^= 0x55;
    }
    g.bench_function(BenchmarkId::new("dirty_1pct", MIB), |b| {
        b.iter(|| pool.install(|| hashing::rescan(&bytes, ps, &known).expect("map a copy")))
    });
    g.bench_function(BenchmarkId::new("xxh3_per_page", MIB), |b| {
        b.iter(|| {
            bytes
                .chunks(ps)
                .map(|p| hashing::fast_hash(p) as usize)
                .fold(0usize, usize::wrapping_add)
        })
    });
    g.bench_function(BenchmarkId::new("blake3_per_page", MIB), |b| {
        b.iter(|| {
            bytes
                .chunks(ps)
                .map(|p| ckpt_engine::page_hash(p)[0] as usize)
                .sum::<usize>()
        })
    });
    g.bench_function(BenchmarkId::new("blake3_16_pages_at_once", MIB), |b| {
        b.iter(|| hashing::page_hashes(&bytes, ps))
    });
    g.bench_function(BenchmarkId::new("read_only", MIB), |b| {
        b.iter(|| {
            bytes
                .chunks(64)
                .map(|l| std::hint::black_box(l[0]) as usize)
                .sum::<usize>()
        })
    });
    g.finish();
    // The same two hashes over 1 MiB that stays in cache: the hash's own speed, not memory's.
    let small = &bytes[..1 << 20];
    let mut g = c.benchmark_group("hash_per_core_in_cache");
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("xxh3_per_page", |b| {
        b.iter(|| {
            small
                .chunks(ps)
                .map(|p| hashing::fast_hash(p) as usize)
                .fold(0usize, usize::wrapping_add)
        })
    });
    g.bench_function("blake3_per_page", |b| {
        b.iter(|| {
            small
                .chunks(ps)
                .map(|p| ckpt_engine::page_hash(p)[0] as usize)
                .sum::<usize>()
        })
    });
    g.bench_function("blake3_16_pages_at_once", |b| {
        b.iter(|| hashing::page_hashes(small, ps))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
