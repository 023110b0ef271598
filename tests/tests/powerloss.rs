//! Power loss, not just SIGKILL: the engine runs with a recording file-system backend, and
//! every crash state that the log allows (writes not yet fsynced lost, directory operations
//! not yet fsynced undone; see `ckpt_tests::crashfs`) is materialised and checked: it opens,
//! lists and restores, every version it shows restores exactly the bytes that version was
//! committed with, and every version whose operation had returned before the crash is there.
//!
//! The backend is process-wide, so the scenarios run one after another in one test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use ckpt_engine::compact::{self, CompactOptions};
use ckpt_engine::job::JobStore;
use ckpt_engine::{Checkpointer, Store};
use ckpt_tests::crashfs::{crash_states, CrashState, Explored, Recorder};
use ckpt_tests::version_hashes;

const MIB: usize = 1;
const NAME: &str = "sim";

/// Checks one chain of a crash state: the versions it lists are known and restore exactly,
/// and `must` are all listed.
fn check_chain(
    dir: &Path,
    name: &str,
    expected: &BTreeMap<u64, String>,
    must: &BTreeSet<u64>,
) -> Result<Vec<u64>, String> {
    let store = Store::new(dir, name).map_err(|e| e.to_string())?;
    let listed = if dir.exists() {
        store.versions().map_err(|e| format!("list: {e}"))?
    } else {
        Vec::new()
    };
    for v in must {
        if !listed.contains(v) {
            return Err(format!("version {v} returned before the crash but is gone"));
        }
    }
    for &v in &listed {
        let want = expected
            .get(&v)
            .ok_or_else(|| format!("version {v} is listed but was never committed"))?;
        let got = ckpt_tests::export_hash(dir, name, v).map_err(|e| format!("restore {v}: {e}"))?;
        if &got != want {
            return Err(format!(
                "version {v} restores other bytes than it was committed with"
            ));
        }
    }
    Ok(listed)
}

/// Opens the chain as a writer would after the power came back, restores its newest
/// version, and commits one more version, which must restore.
fn check_reopen(dir: &Path, name: &str) -> Result<(), String> {
    let mut ck = Checkpointer::open(dir, name, ckpt_tests::config(4096, 16))
        .map_err(|e| format!("open: {e}"))?;
    ckpt_tests::register(&mut ck, MIB).map_err(|e| e.to_string())?;
    if let Some(v) = ck.latest_version().map_err(|e| e.to_string())? {
        ck.restore(Some(v))
            .map_err(|e| format!("restore {v}: {e}"))?;
    }
    ckpt_tests::mutate(&mut ck, MIB, 99, 1, 20);
    let want = ckpt_tests::state_hash(&ck);
    let v = ck
        .checkpoint()
        .map_err(|e| format!("checkpoint after the crash: {e}"))?
        .version;
    drop(ck);
    let got = ckpt_tests::restore_hash(dir, name, MIB, v).map_err(|e| e.to_string())?;
    if got != want {
        return Err(format!(
            "version {v}, written after the crash, restores other bytes"
        ));
    }
    Ok(())
}

/// Materialises each crash state under `scratch` and runs `check` on it; panics with the
/// first failure, naming the crash point.
fn check_all(
    what: &str,
    scratch: &Path,
    states: &[CrashState],
    explored: Explored,
    check: &dyn Fn(&Path, &CrashState) -> Result<(), String>,
) {
    for (i, s) in states.iter().enumerate() {
        let d = scratch.join(format!("{what}-{i}"));
        std::fs::create_dir(&d).unwrap();
        s.materialise(&d).unwrap();
        if let Err(e) = check(&d, s) {
            panic!(
                "{what}: crash state {i} (after {} operations, {} directory operations undone, \
                 {} writes lost, marks {:?}): {e}",
                s.point, s.undone.0, s.undone.1, s.marks
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
    eprintln!(
        "powerloss: {what}: {} operations, {} crash points, {} states generated, {} distinct \
         states checked",
        explored.ops, explored.points, explored.generated, explored.distinct
    );
    assert!(
        explored.distinct > explored.points / 2,
        "{what}: too few states to mean anything"
    );
}

/// A delta checkpoint, then another, on a chain of two versions.
fn scenario_checkpoint(tmp: &Path) {
    let root = tmp.join("ck");
    let store_dir = root.join("store");
    let mut ck = Checkpointer::open(&store_dir, NAME, ckpt_tests::config(4096, 16)).unwrap();
    ckpt_tests::register(&mut ck, MIB).unwrap();
    for step in 0..2 {
        ckpt_tests::mutate(&mut ck, MIB, 1, step, 20);
        ck.checkpoint().unwrap();
    }
    let rec = Arc::new(Recorder::new(&root).unwrap());
    {
        let _installed = ckpt_engine::vfs::install(rec.clone());
        for step in 2..4 {
            ckpt_tests::mutate(&mut ck, MIB, 1, step, 20);
            let v = ck.checkpoint().unwrap().version;
            rec.mark(&v.to_string());
        }
    }
    drop(ck);
    let expected = version_hashes(&store_dir, NAME);
    assert_eq!(expected.len(), 4);
    let (states, explored) = crash_states(&rec);
    check_all("checkpoint", tmp, &states, explored, &|d, s| {
        let mut must: BTreeSet<u64> = [1, 2].into();
        must.extend(s.marks.iter().map(|m| m.parse::<u64>().unwrap()));
        let dir = d.join("store");
        check_chain(&dir, NAME, &expected, &must)?;
        check_reopen(&dir, NAME)
    });
}

/// The first checkpoint of a chain into a directory that does not exist yet (directory
/// creation and the store's membership record).
fn scenario_first_checkpoint(tmp: &Path) {
    let root = tmp.join("first");
    std::fs::create_dir(&root).unwrap();
    let store_dir = root.join("a/store");
    let rec = Arc::new(Recorder::new(&root).unwrap());
    {
        let _installed = ckpt_engine::vfs::install(rec.clone());
        let mut ck = Checkpointer::open(&store_dir, NAME, ckpt_tests::config(4096, 16)).unwrap();
        ckpt_tests::register(&mut ck, MIB).unwrap();
        ckpt_tests::mutate(&mut ck, MIB, 2, 0, 20);
        ck.checkpoint().unwrap();
        rec.mark("1");
    }
    let expected = version_hashes(&store_dir, NAME);
    let (states, explored) = crash_states(&rec);
    check_all("first checkpoint", tmp, &states, explored, &|d, s| {
        let must: BTreeSet<u64> = s.marks.iter().map(|m| m.parse().unwrap()).collect();
        let dir = d.join("a/store");
        check_chain(&dir, NAME, &expected, &must)?;
        check_reopen(&dir, NAME)
    });
}

/// Compaction of a chain of eight versions down to the newest two (removals, and a rewrite
/// of the kept delta as a full version that replaces its file).
fn scenario_compaction(tmp: &Path) {
    let root = tmp.join("compact");
    let store_dir = root.join("store");
    let hashes = ckpt_tests::run_steps(&store_dir, NAME, MIB, 3, 8, None, 20).unwrap();
    assert_eq!(hashes.len(), 8);
    let expected = version_hashes(&store_dir, NAME);
    let store = Store::new(&store_dir, NAME).unwrap();
    let rec = Arc::new(Recorder::new(&root).unwrap());
    let report = {
        let _installed = ckpt_engine::vfs::install(rec.clone());
        let opts = CompactOptions {
            keep: 2,
            max_depth: Some(0),
            ..CompactOptions::default()
        };
        let r = compact::compact(&store, &opts, &mut |_, _| {}).unwrap();
        rec.mark("done");
        r
    };
    assert_eq!(report.kept, vec![7, 8]);
    assert!(
        !report.removed.is_empty() && !report.rewritten.is_empty(),
        "{report:?}"
    );
    let (states, explored) = crash_states(&rec);
    check_all("compaction", tmp, &states, explored, &|d, s| {
        let dir = d.join("store");
        let listed = check_chain(&dir, NAME, &expected, &[7, 8].into())?;
        if s.marks.contains("done") && listed != [7, 8] {
            return Err(format!(
                "compaction returned, yet the store lists {listed:?}"
            ));
        }
        check_reopen(&dir, NAME)
    });
}

/// A job version: each rank's file, then the global commit record (as the MPI shim writes
/// them), on a job store of two ranks with two versions.
fn scenario_job_commit(tmp: &Path) {
    let root = tmp.join("job");
    std::fs::create_dir(&root).unwrap();
    let job_dir = root.join("heat");
    ckpt_tests::job_store(&job_dir, "heat", 2, 2);
    let rec = Arc::new(Recorder::new(&root).unwrap());
    {
        let _installed = ckpt_engine::vfs::install(rec.clone());
        ckpt_tests::job_store(&job_dir, "heat", 2, 1);
        rec.mark("3");
    }
    let job = JobStore::new(&job_dir, "heat").unwrap();
    assert_eq!(job.commits().unwrap(), vec![1, 2, 3]);
    let expected: Vec<BTreeMap<u64, String>> = (0..2)
        .map(|r| version_hashes(&job.rank_dir(r), "heat"))
        .collect();
    let (states, explored) = crash_states(&rec);
    check_all("job commit", tmp, &states, explored, &|d, s| {
        let mut must: BTreeSet<u64> = [1, 2].into();
        must.extend(s.marks.iter().map(|m| m.parse::<u64>().unwrap()));
        let commits = check_job(&d.join("heat"), &must, &expected)?;
        // Rank files above the newest commit may exist (a crash between a rank's commit and
        // the record); those present must still be exact.
        let job = JobStore::new(d.join("heat"), "heat").map_err(|e| e.to_string())?;
        for (r, exp) in expected.iter().enumerate() {
            check_chain(&job.rank_dir(r as u32), "heat", exp, &BTreeSet::new())?;
        }
        // The restart that would follow: every rank opens and restores the newest commit.
        let newest = commits.last().copied().ok_or("no commit at all")?;
        for r in 0..2 {
            let mut ck =
                Checkpointer::open(job.rank_dir(r), "heat", ckpt_engine::Config::default())
                    .map_err(|e| format!("rank {r} open: {e}"))?;
            ck.alloc_region::<u64>(1, 8192).map_err(|e| e.to_string())?;
            ck.restore(Some(newest))
                .map_err(|e| format!("rank {r} restore {newest}: {e}"))?;
        }
        Ok(())
    });
}

/// Checks a job store in a crash state: the commits that returned are there, and every
/// commit record present verifies, and its ranks restore exactly.
fn check_job(
    dir: &Path,
    must: &BTreeSet<u64>,
    expected: &[BTreeMap<u64, String>],
) -> Result<Vec<u64>, String> {
    let job = JobStore::new(dir, "heat").map_err(|e| e.to_string())?;
    let commits = if dir.exists() {
        job.commits().map_err(|e| format!("commits: {e}"))?
    } else {
        Vec::new()
    };
    for v in must {
        if !commits.contains(v) {
            return Err(format!(
                "job version {v} returned before the crash but is gone"
            ));
        }
    }
    for &v in &commits {
        job.verify_commit(v, 2)
            .map_err(|e| format!("job version {v} has a commit record but: {e}"))?;
        for (r, exp) in expected.iter().enumerate() {
            let want = exp
                .get(&v)
                .ok_or(format!("job version {v} never existed"))?;
            let got = ckpt_tests::export_hash(&job.rank_dir(r as u32), "heat", v)
                .map_err(|e| format!("rank {r} restore {v}: {e}"))?;
            if &got != want {
                return Err(format!("rank {r} of job version {v} restores other bytes"));
            }
        }
    }
    Ok(commits)
}

/// The Slurm epilog's flush: job versions 2 then 3 copied to another (persistent) job
/// store that already holds version 1; rank files parents first, each commit record last.
fn scenario_job_copy(tmp: &Path) {
    let root = tmp.join("copy");
    std::fs::create_dir(&root).unwrap();
    let local = JobStore::new(root.join("local"), "heat").unwrap();
    ckpt_tests::job_store(local.dir(), "heat", 2, 3);
    let persistent = JobStore::new(root.join("persistent"), "heat").unwrap();
    let mut report = ckpt_engine::job::CopyReport::default();
    local
        .copy_version_to(&persistent, 1, true, None, &mut report)
        .unwrap();
    let expected: Vec<BTreeMap<u64, String>> = (0..2)
        .map(|r| version_hashes(&local.rank_dir(r), "heat"))
        .collect();
    let rec = Arc::new(Recorder::new(&root).unwrap());
    {
        let _installed = ckpt_engine::vfs::install(rec.clone());
        for v in [2, 3] {
            local
                .copy_version_to(&persistent, v, true, None, &mut report)
                .unwrap();
            rec.mark(&v.to_string());
        }
    }
    assert_eq!(persistent.commits().unwrap(), vec![1, 2, 3]);
    let (states, explored) = crash_states(&rec);
    check_all("job copy", tmp, &states, explored, &|d, s| {
        let mut must: BTreeSet<u64> = [1].into();
        must.extend(s.marks.iter().map(|m| m.parse::<u64>().unwrap()));
        check_job(&d.join("persistent"), &must, &expected)?;
        // The source is never written by a copy: it keeps every version.
        check_job(&d.join("local"), &[1, 2, 3].into(), &expected).map(drop)
    });
}

#[test]
fn every_crash_state_opens_lists_and_restores_committed_versions() {
    let tmp = tempfile::tempdir().unwrap();
    scenario_checkpoint(tmp.path());
    scenario_first_checkpoint(tmp.path());
    scenario_compaction(tmp.path());
    scenario_job_commit(tmp.path());
    scenario_job_copy(tmp.path());
}
