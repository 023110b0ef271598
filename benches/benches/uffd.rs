//! The price of userfaultfd tracking, in ns per 4 KiB page:
//! - `arm`: allocating a region under uffd tracking (register + write-protect, including
//!   unpopulated pages) versus allocating it in hash mode;
//! - `first_write`: writing one byte to each page after a checkpoint re-protected it (one
//!   write-protect fault per page, resolved by the kernel) versus the same writes in hash mode.
//!
//! Report `uffd - hash` divided by the page count (4096 pages, 16 MiB, here).

#![allow(missing_docs)] // criterion_main! generates an undocumented `main`.

use std::time::Duration;

use ckpt_engine::{Checkpointer, Config, Tracking};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const PAGES: usize = 4096;

fn cfg(t: Tracking) -> Config {
    Config::default().with_tracking(t).with_compression_level(0)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    if Checkpointer::open(dir.path(), "probe", cfg(Tracking::Uffd)).is_err() {
        eprintln!("userfaultfd tracking unavailable here: skipping");
        return;
    }
    let mut g = c.benchmark_group("uffd_per_page");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(1));
    g.sampling_mode(criterion::SamplingMode::Flat);
    for (label, t) in [("uffd", Tracking::Uffd), ("hash", Tracking::Hash)] {
        g.bench_function(format!("arm/{label}"), |b| {
            b.iter_batched(
                || Checkpointer::open(dir.path(), label, cfg(t)).expect("open"),
                |mut ck| {
                    ck.alloc_region::<u8>(1, PAGES * 4096).expect("alloc");
                    ck
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("first_write/{label}"), |b| {
            b.iter_batched(
                || {
                    // A fresh directory per iteration, removed with it, so disk use stays flat.
                    let d = tempfile::tempdir_in(dir.path()).expect("tempdir");
                    let mut ck = Checkpointer::open(d.path(), label, cfg(t)).expect("open");
                    let h = ck.alloc_region::<u8>(1, PAGES * 4096).expect("alloc");
                    ck.region_mut(&h)
                        .expect("region")
                        .iter_mut()
                        .step_by(4096)
                        .for_each(|x| *x = 1);
                    ck.checkpoint().expect("checkpoint"); // re-protects every page in uffd mode
                    (ck, h, d)
                },
                |(mut ck, h, d)| {
                    let r = ck.region_mut(&h).expect("region");
                    for p in 0..PAGES {
                        r[p * 4096] = 2;
                    }
                    (ck, h, d)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
