//! Compaction: crash injection at every step, a concurrent writer, the mapped-parent
//! scenario, branches, retention limits and flattening.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ckpt_engine::catalog::verify_version;
use ckpt_engine::compact::{self, CompactOptions};
use ckpt_engine::read::{Version, VersionFile};
use ckpt_engine::{Checkpointer, Store};
use ckpt_tests::{copy_dir, export_hash, register, restore_hash, run_steps, version_hashes};

const COMPACT: &str = env!("CARGO_BIN_EXE_ckpt-compact");

fn compactor(
    dir: &Path,
    keep: usize,
    extra: &[&str],
    kill_at: Option<u64>,
) -> std::process::Output {
    let mut cmd = Command::new(COMPACT);
    cmd.arg(dir)
        .args(["--keep", &keep.to_string(), "--json"])
        .args(extra);
    if let Some(n) = kill_at {
        cmd.env("CKPT_FAULT_KILL", format!("compact-step#{n}"));
    }
    cmd.output().expect("run ckpt-compact")
}

/// Compacts chain `s` in-process, keeping its newest `keep` versions.
fn keep_newest(s: &Store, keep: usize) -> compact::Report {
    let opts = CompactOptions {
        keep,
        ..CompactOptions::default()
    };
    compact::compact(s, &opts, &mut |_, _| {}).unwrap()
}

/// Every version present verifies: nothing references a missing or replaced file.
fn all_verify(dir: &Path, name: &str, ctx: &str) {
    let store = Store::new(dir, name).unwrap();
    for v in store.versions().unwrap() {
        verify_version(&store.path_of(v)).unwrap_or_else(|e| panic!("{ctx}: version {v}: {e}"));
    }
}

/// Chain shapes: builds one in `dir` (chain "job"); returns (keep, extra flags).
fn build_shape(dir: &Path, shape: usize) -> (usize, Vec<&'static str>) {
    let run = |seed, steps, restore| run_steps(dir, "job", 1, seed, steps, restore, 20).unwrap();
    match shape {
        // Linear chain of 12.
        0 => {
            run(1, 12, None);
            (2, vec![])
        }
        // Branch: v1..v6, restore v3, continue v7..v9.
        1 => {
            run(1, 6, None);
            run(2, 3, Some(3));
            (3, vec![])
        }
        // Two branches and a tail, keep 4, flatten anything deeper than 1.
        2 => {
            run(3, 5, None);
            run(4, 2, Some(2));
            run(5, 4, Some(0));
            (4, vec!["--max-depth", "1"])
        }
        // Keep only the newest: it becomes a full file.
        _ => {
            run(6, 8, None);
            (1, vec![])
        }
    }
}

#[test]
fn sigkill_at_every_step_of_compaction_loses_nothing_kept() {
    let base = tempfile::tempdir().unwrap();
    let mut kills = 0;
    for shape in 0..4 {
        let template = base.path().join(format!("shape{shape}"));
        std::fs::create_dir_all(&template).unwrap();
        let (keep, extra) = build_shape(&template, shape);
        let before = version_hashes(&template, "job");
        let store = Store::new(&template, "job").unwrap();
        let plan = compact::plan(
            &store,
            &CompactOptions {
                keep,
                ..CompactOptions::default()
            },
        )
        .unwrap();
        assert!(!plan.remove.is_empty(), "shape {shape} has garbage");
        // Count the kill points of a full run.
        let probe = base.path().join("probe");
        copy_dir(&template, &probe);
        let out = compactor(&probe, keep, &extra, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let steps = 2 * (plan.rewrite.len() + plan.remove.len()) as u64;
        for n in 1..=steps {
            let work = base.path().join("work");
            copy_dir(&template, &work);
            let out = compactor(&work, keep, &extra, Some(n));
            assert!(
                !out.status.success(),
                "shape {shape}: kill point {n} of {steps} not reached"
            );
            kills += 1;
            let ctx = format!("shape {shape}, killed at step {n}");
            // Every version to keep restores byte-identically.
            for v in &plan.kept {
                assert_eq!(
                    export_hash(&work, "job", *v).unwrap(),
                    before[v],
                    "{ctx}: kept version {v}"
                );
            }
            // Every surviving file is whole and references only whole files.
            all_verify(&work, "job", &ctx);
            // A rerun finishes the job.
            let out = compactor(&work, keep, &extra, None);
            assert!(
                out.status.success(),
                "{ctx}: rerun: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let left = Store::new(&work, "job").unwrap().versions().unwrap();
            assert_eq!(
                left, plan.kept,
                "{ctx}: after the rerun only the kept versions remain"
            );
            assert!(left.len() <= keep.max(1) || shape == 2);
            for v in &plan.kept {
                assert_eq!(
                    export_hash(&work, "job", *v).unwrap(),
                    before[v],
                    "{ctx}: after rerun, {v}"
                );
            }
            all_verify(&work, "job", &ctx);
        }
    }
    // Random-time kills on a bigger store add points between the named steps.
    let template = base.path().join("big");
    std::fs::create_dir_all(&template).unwrap();
    run_steps(&template, "job", 8, 9, 14, None, 400).unwrap();
    let before = version_hashes(&template, "job");
    let kept: Vec<u64> = before.keys().rev().take(2).rev().copied().collect();
    let mut rng = ckpt_engine::bench::Rng::new(5);
    let named = kills;
    let mut tries = 0;
    while kills < 210 && tries < 1000 {
        tries += 1;
        let work = base.path().join("work");
        copy_dir(&template, &work);
        let mut child = Command::new(COMPACT)
            .arg(&work)
            .args(["--keep", "2", "--json"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        // Count only kills that interrupted the compactor.
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        for v in &kept {
            assert_eq!(
                export_hash(&work, "job", *v).unwrap(),
                before[v],
                "random kill {kills}: {v}"
            );
        }
        all_verify(&work, "job", "random kill");
        assert!(compactor(&work, 2, &[], None).status.success());
        assert_eq!(Store::new(&work, "job").unwrap().versions().unwrap(), kept);
    }
    assert!(kills >= 200, "{kills} kills ({named} at named steps)");
    eprintln!("{kills} kills: {named} at named steps, the rest at random times");
}

#[test]
fn branches_are_removed_and_kept_versions_restore() {
    let dir = tempfile::tempdir().unwrap();
    run_steps(dir.path(), "job", 2, 1, 6, None, 20).unwrap();
    let second = run_steps(dir.path(), "job", 2, 2, 2, Some(3), 20).unwrap();
    assert_eq!(second.iter().map(|c| c.0).collect::<Vec<_>>(), vec![7, 8]);
    let out = compactor(dir.path(), 2, &[], None);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["kept"], serde_json::json!([7, 8]));
    assert_eq!(j["removed"], serde_json::json!([1, 2, 3, 4, 5, 6]));
    assert!(j["bytes_written"].as_u64().unwrap() > 0 && j["bytes_freed"].as_u64().unwrap() > 0);
    assert_eq!(
        Store::new(dir.path(), "job").unwrap().versions().unwrap(),
        vec![7, 8]
    );
    for (v, h) in &second {
        assert_eq!(&restore_hash(dir.path(), "job", 2, *v).unwrap(), h);
    }
    // Without --keep, the whole lineage of the newest stays but branches go.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run_steps(dir.path(), "job", 1, 1, 6, None, 20).unwrap();
    run_steps(dir.path(), "job", 1, 2, 2, Some(3), 20).unwrap();
    let out = Command::new(COMPACT).arg(d).arg("--json").output().unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["kept"], serde_json::json!([1, 2, 3, 7, 8]));
    assert_eq!(j["removed"], serde_json::json!([4, 5, 6]));
    all_verify(dir.path(), "job", "lineage only");
}

#[test]
fn dry_run_changes_nothing_and_max_depth_flattens() {
    let dir = tempfile::tempdir().unwrap();
    run_steps(dir.path(), "job", 1, 1, 6, None, 20).unwrap();
    let before = version_hashes(dir.path(), "job");
    let out = compactor(dir.path(), 3, &["--dry-run"], None);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["kept"], serde_json::json!([4, 5, 6]));
    assert_eq!(
        version_hashes(dir.path(), "job"),
        before,
        "dry run changed the store"
    );
    let out = compactor(dir.path(), 3, &["--max-depth", "0"], None);
    assert!(out.status.success());
    let store = Store::new(dir.path(), "job").unwrap();
    for v in store.versions().unwrap() {
        let f = VersionFile::open(&store.path_of(v)).unwrap();
        assert_eq!(f.header.depth, 0, "version {v} was flattened");
        assert_eq!(f.index.files.len(), 1, "version {v} references nothing");
        assert_eq!(export_hash(dir.path(), "job", v).unwrap(), before[&v]);
    }
}

#[test]
fn a_process_restored_from_a_compacted_version_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    run_steps(dir.path(), "job", 2, 1, 5, None, 20).unwrap();
    let mut ck = Checkpointer::open(dir.path(), "job", ckpt_tests::config(4096, 16)).unwrap();
    register(&mut ck, 2).unwrap();
    ck.restore(Some(3)).unwrap();
    // Keep v3's files mapped, as a restored process may.
    let mapped = Version::open(&dir.path().join("job.ckpt.3")).unwrap();
    let s = Store::new(dir.path(), "job").unwrap();
    let r = keep_newest(&s, 1);
    assert_eq!(r.plan.kept, vec![5]);
    assert!(
        !dir.path().join("job.ckpt.3").exists(),
        "v3 was compacted away"
    );
    // The mapping survives the unlink.
    let mut buf = vec![0u8; mapped.regions()[0].byte_len as usize];
    mapped.restore_region(0, &mut buf, false).unwrap();
    // The next checkpoint is valid: its parent is gone, so it is a full version.
    ckpt_tests::mutate(&mut ck, 2, 9, 0, 10);
    let want = ckpt_tests::state_hash(&ck);
    let st = ck.checkpoint().unwrap();
    assert_eq!(st.version, 6);
    assert_eq!(st.depth, 0, "full, since its parent was removed");
    drop(ck);
    all_verify(dir.path(), "job", "after");
    assert_eq!(restore_hash(dir.path(), "job", 2, 6).unwrap(), want);
}

#[test]
fn a_writer_whose_parent_was_compacted_keeps_writing_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "job", ckpt_tests::config(4096, 16)).unwrap();
    register(&mut ck, 2).unwrap();
    for step in 0..5 {
        ckpt_tests::mutate(&mut ck, 2, 1, step, 5);
        ck.checkpoint().unwrap();
    }
    // Compaction rewrites v5 (the writer's parent) and removes v1..v4, which the writer's
    // picture of v5 references.
    let s = Store::new(dir.path(), "job").unwrap();
    keep_newest(&s, 1);
    ckpt_tests::mutate(&mut ck, 2, 1, 99, 3);
    let want = ckpt_tests::state_hash(&ck);
    let st = ck.checkpoint().unwrap();
    assert_eq!(st.version, 6);
    assert_eq!(st.parent, Some(5), "still a delta against v5");
    assert!(
        st.pages_stored < 20,
        "a real delta: {} pages",
        st.pages_stored
    );
    drop(ck);
    all_verify(dir.path(), "job", "after");
    assert_eq!(restore_hash(dir.path(), "job", 2, 6).unwrap(), want);
}

#[test]
fn concurrent_writer_and_repeated_compaction_for_30_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut writer = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CKPT_TEST_WRITER_DIR", d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = writer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let out = compactor(dir.path(), 2, &[], None);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // An empty store at the very start is the only acceptable failure.
            assert!(
                err.contains("no checkpoint files"),
                "compactor failed: {err}"
            );
        } else {
            runs += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = writer.kill();
    let status = writer.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    writer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !err.contains("panicked") && !err.contains("rror"),
        "the writer failed: {err} ({status})"
    );
    let lines = reader.join().unwrap();
    let done: Vec<(u64, String)> = lines
        .iter()
        .filter_map(|l| {
            let mut it = l.strip_prefix("committed ")?.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_string()))
        })
        .collect();
    assert!(
        done.len() > 50,
        "the writer committed only {} versions",
        done.len()
    );
    assert!(runs > 50, "only {runs} compactions");
    // Every committed version that is still there restores to what the writer had.
    let present = Store::new(dir.path(), "job").unwrap().versions().unwrap();
    let mut checked = 0;
    for (v, h) in &done {
        if present.contains(v) {
            assert_eq!(
                &restore_hash(dir.path(), "job", 2, *v).unwrap(),
                h,
                "version {v}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
    // Compaction kept up: most of what the writer committed is gone (the exact number
    // present at the instant the writer is stopped depends on the machine's load).
    assert!(
        present.len() * 3 <= done.len(),
        "compaction fell behind: {} of {} versions still present",
        present.len(),
        done.len()
    );
    all_verify(dir.path(), "job", "after the race");
    // A final compaction leaves at most two versions, both restorable.
    assert!(compactor(dir.path(), 2, &[], None).status.success());
    let left = Store::new(dir.path(), "job").unwrap().versions().unwrap();
    assert!(left.len() <= 2, "{left:?}");
    all_verify(dir.path(), "job", "final");
}

/// The writer of the concurrency test, run as a separate process by re-executing this test
/// binary (`--ignored --exact writer_process`). Loops checkpoints until killed, printing
/// `committed V HASH` after each.
#[test]
#[ignore = "helper process for concurrent_writer_and_repeated_compaction_for_30_seconds"]
fn writer_process() {
    use std::io::Write;
    let Some(dir) = std::env::var_os("CKPT_TEST_WRITER_DIR") else {
        return;
    };
    let mut ck = Checkpointer::open(&dir, "job", ckpt_tests::config(4096, 16)).unwrap();
    register(&mut ck, 2).unwrap();
    let mut out = std::io::stdout();
    for step in 0.. {
        ckpt_tests::mutate(&mut ck, 2, 7, step, 30);
        let s = ck.checkpoint().expect("checkpoint while compaction runs");
        writeln!(
            out,
            "committed {} {}",
            s.version,
            ckpt_tests::state_hash(&ck)
        )
        .unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn automatic_compaction_keeps_the_store_small() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ckpt_tests::config(4096, 16);
    cfg.keep = Some(2);
    cfg.auto_compact = true;
    let mut ck = Checkpointer::open(dir.path(), "job", cfg).unwrap();
    register(&mut ck, 1).unwrap();
    let mut last = String::new();
    for step in 0..12 {
        ckpt_tests::mutate(&mut ck, 1, 3, step, 10);
        ck.checkpoint().unwrap();
        last = ckpt_tests::state_hash(&ck);
        // Give the background compaction a chance to run between checkpoints.
        if step % 3 == 2 {
            ck.wait_compaction().unwrap().as_ref().unwrap();
        }
    }
    let r = ck.wait_compaction().unwrap().as_ref().unwrap().clone();
    assert!(!r.plan.kept.is_empty(), "{r:?}");
    drop(ck);
    // Background compactions already removed most of the 12 versions: what is left is the
    // 2 kept by the last one plus the few written while it ran.
    let n = Store::new(dir.path(), "job")
        .unwrap()
        .versions()
        .unwrap()
        .len();
    assert!(n <= 5, "{n} versions left by automatic compaction");
    // One more pass after the last checkpoint's compaction: at most 2 versions remain.
    let s = Store::new(dir.path(), "job").unwrap();
    keep_newest(&s, 2);
    let left = s.versions().unwrap();
    assert_eq!(left, vec![11, 12]);
    all_verify(dir.path(), "job", "auto");
    assert_eq!(restore_hash(dir.path(), "job", 1, 12).unwrap(), last);
}

#[test]
fn ckpt_compact_understands_job_stores() {
    use ckpt_engine::job::{CommitRecord, JobStore};
    let dir = tempfile::tempdir().unwrap();
    let job = JobStore::new(dir.path(), "sim").unwrap();
    job.write_meta(2).unwrap();
    let mut engines: Vec<Checkpointer> = (0..2)
        .map(|r| {
            let mut ck =
                Checkpointer::open(job.rank_dir(r), "sim", ckpt_tests::config(4096, 16)).unwrap();
            register(&mut ck, 1).unwrap();
            ck
        })
        .collect();
    for v in 1..=3u64 {
        let ids = engines
            .iter_mut()
            .map(|ck| {
                ckpt_tests::mutate(ck, 1, v, v, 5);
                ck.checkpoint_numbered(v).unwrap().identity
            })
            .collect();
        job.write_commit(&CommitRecord {
            version: v,
            created_unix_nanos: 0,
            ranks: ids,
        })
        .unwrap();
    }
    // An attempt at v4 that only rank 0 finished: garbage once no writer runs.
    engines[0].checkpoint_numbered(4).unwrap();
    drop(engines);
    // ckpt ls / verify see the job as a whole.
    let ls = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .arg("ls")
        .arg(dir.path())
        .arg("--json")
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(j["job"]["committed"], serde_json::json!([1, 2, 3]));
    assert_eq!(j["job"]["world_size"], 2);
    let verify = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
            .arg("verify")
            .arg(dir)
            .arg("--json")
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        )
    };
    let (code, j) = verify(dir.path());
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["versions"].as_array().unwrap().len(), 3);
    // Replace rank 1's v2 by rank 0's: verify fails and names that file.
    let saved = std::fs::read(job.rank_store(1).unwrap().path_of(2)).unwrap();
    std::fs::copy(
        job.rank_store(0).unwrap().path_of(2),
        job.rank_store(1).unwrap().path_of(2),
    )
    .unwrap();
    let (code, j) = verify(dir.path());
    assert_eq!(code, Some(1));
    let bad = &j["versions"][1];
    assert_eq!(bad["ok"], false);
    let named = job.rank_store(1).unwrap().path_of(2).display().to_string();
    assert!(bad["error"].as_str().unwrap().contains(&named), "{bad}");
    std::fs::write(job.rank_store(1).unwrap().path_of(2), saved).unwrap();
    assert_eq!(verify(dir.path()).0, Some(0));
    // A crashed commit-record write left a temporary in commits/; the job is not running.
    let commit_tmp = dir
        .path()
        .join("commits/.sim.commit.4.tmp.999999999.00aa11bb22cc");
    std::fs::write(&commit_tmp, b"torn").unwrap();
    let out = Command::new(COMPACT)
        .arg(dir.path())
        .args(["--keep", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["kept"], serde_json::json!([2, 3]));
    assert_eq!(j["removed"], serde_json::json!([1]));
    assert_eq!(job.commits().unwrap(), vec![2, 3]);
    assert!(!commit_tmp.exists(), "the dead commit temporary is removed");
    let temps = j["temporaries"].as_array().unwrap();
    assert!(
        temps.iter().any(|t| t
            .as_str()
            .unwrap()
            .ends_with(".sim.commit.4.tmp.999999999.00aa11bb22cc")),
        "and reported: {j}"
    );
    for r in 0..2 {
        let s = job.rank_store(r).unwrap();
        assert_eq!(s.versions().unwrap(), vec![2, 3], "rank {r}");
        all_verify(s.dir(), "sim", "job store");
        // Each kept rank file is still the one its commit record names.
        for v in [2, 3] {
            let rec = job.read_commit(v).unwrap();
            let f = Version::open(&s.path_of(v)).unwrap();
            assert!(f.file().satisfies(&rec.ranks[r as usize]));
        }
    }
}
