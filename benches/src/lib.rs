//! Criterion benchmarks for ckpt live in `benches/` (`hashing`, `checkpoint`, `uffd`); this
//! library is empty. Run them with
//!
//! ```text
//! cargo bench -p ckpt-benches --bench hashing
//! ```
//!
//! End-to-end figures (full and delta checkpoints, restore, compaction, as ratios measured in
//! one run) come from `ckpt bench --json`.
