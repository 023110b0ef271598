//! Checkpoint and restore of 64 MiB of f64 state: a full version, a 1 %-dirty delta, and a
//! restore at depth 1 and at depth 8.

#![allow(missing_docs)] // criterion_main! generates an undocumented `main`.

use ckpt_engine::bench::{fill_field, Rng};
use ckpt_engine::{Checkpointer, Config, RegionHandle};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ELEMS: usize = (64 << 20) / 8;

fn touch(ck: &mut Checkpointer, h: &RegionHandle<f64>, rng: &mut Rng, fraction: f64) {
    let data = ck.region_mut(h).expect("region");
    let pages = data.len() / 512;
    for _ in 0..((pages as f64 * fraction) as usize).max(1) {
        let p = rng.below(pages as u64) as usize;
        data[p * 512] += 1.0;
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("checkpoint_64MiB");
    g.throughput(Throughput::Bytes((ELEMS * 8) as u64));
    g.sample_size(10);
    let mut ck = Checkpointer::open(dir.path(), "b", Config::default()).expect("open");
    let h = ck.alloc_region::<f64>(1, ELEMS).expect("alloc");
    fill_field(ck.region_mut(&h).expect("region"), 0, 7);
    let mut rng = Rng::new(9);
    g.bench_function("full", |b| {
        b.iter(|| {
            // A fresh engine has no parent: the checkpoint is full.
            let mut fresh =
                Checkpointer::open(dir.path(), "full", Config::default()).expect("open");
            let fh = fresh.alloc_region::<f64>(1, ELEMS).expect("alloc");
            fresh
                .region_mut(&fh)
                .expect("region")
                .copy_from_slice(ck.region(&h).expect("region"));
            fresh.checkpoint().expect("checkpoint")
        })
    });
    ck.checkpoint().expect("first");
    g.bench_function("delta_1pct", |b| {
        b.iter(|| {
            touch(&mut ck, &h, &mut rng, 0.01);
            ck.checkpoint().expect("checkpoint")
        })
    });
    let latest = ck.latest_version().expect("ls").expect("some");
    drop(ck);
    let mut r = Checkpointer::open(dir.path(), "b", Config::default()).expect("open");
    r.alloc_region::<f64>(1, ELEMS).expect("alloc");
    g.bench_function("restore_newest", |b| {
        b.iter(|| r.restore(Some(latest)).expect("restore"))
    });
    g.bench_function("restore_first", |b| {
        b.iter(|| r.restore(Some(1)).expect("restore"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
