//! The `heat` example under mpirun: crash and restart at np = 1, 2, 4; an injected failure
//! on one rank; a rank killed while writing; a different world size; job-store compaction.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ckpt_engine::job::JobStore;

fn heat_bin() -> PathBuf {
    // target/<profile>/deps/heat_mpi-<hash> -> target/<profile>/examples/heat
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("heat")
}

/// Runs `mpirun -np NP heat ARGS` (or heat alone for np = 0) with a time limit.
fn mpirun(np: usize, args: &[&str]) -> Output {
    let mut cmd = if np == 0 {
        Command::new(heat_bin())
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &np.to_string()])
            .arg(heat_bin());
        c
    };
    cmd.args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run mpirun (is OpenMPI installed?)");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("mpirun {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn line(out: &Output, prefix: &str) -> Option<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(prefix).map(|s| s.trim().to_string()))
}

fn checksum(out: &Output) -> String {
    line(out, "checksum ").unwrap_or_else(|| {
        panic!(
            "no checksum; stdout {}\nstderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn args<'a>(store: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--store",
        store,
        "--n",
        "48",
        "--iters",
        "50",
        "--ckpt-every",
        "10",
    ];
    v.extend_from_slice(extra);
    v
}

fn reference() -> String {
    let d = tempfile::tempdir().unwrap();
    let out = mpirun(0, &args(d.path().to_str().unwrap(), &["--ckpt-every", "0"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    checksum(&out)
}

fn commits(dir: &Path) -> Vec<u64> {
    JobStore::new(dir, "heat").unwrap().commits().unwrap()
}

#[test]
fn crash_between_checkpoints_then_rerun_gives_the_uninterrupted_checksum() {
    let want = reference();
    for np in [1usize, 2, 4] {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().to_str().unwrap();
        // Uninterrupted, with checkpoints: the same answer as without.
        let clean = tempfile::tempdir().unwrap();
        let out = mpirun(np, &args(clean.path().to_str().unwrap(), &[]));
        assert_eq!(
            checksum(&out),
            want,
            "np={np}: checkpointing changed the result"
        );
        // Crash at iteration 35 (after version 3 at iteration 30).
        let out = mpirun(np, &args(s, &["--crash-at", "35"]));
        assert!(!out.status.success(), "np={np}: the crashed run must fail");
        assert_eq!(commits(d.path()), vec![1, 2, 3], "np={np}");
        let out = mpirun(np, &args(s, &[]));
        assert!(
            out.status.success(),
            "np={np}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            line(&out, "restarted-from ").as_deref(),
            Some("3"),
            "np={np}"
        );
        assert_eq!(checksum(&out), want, "np={np}: restarted run");
        // Checkpoints continued the chains after the restart.
        assert_eq!(commits(d.path()), vec![1, 2, 3, 4, 5], "np={np}");
    }
}

#[test]
fn injected_failure_on_one_rank_commits_nowhere() {
    let want = reference();
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    // Rank 1 fails version 3 (iteration 30); the job crashes at 35.
    let out = mpirun(2, &args(s, &["--inject-fail", "1:3", "--crash-at", "35"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpoint-failed"));
    assert_eq!(
        commits(d.path()),
        vec![1, 2],
        "version 3 must not be committed"
    );
    let job = JobStore::new(d.path(), "heat").unwrap();
    assert!(
        job.rank_store(0).unwrap().path_of(3).exists(),
        "rank 0 wrote its part of v3"
    );
    assert!(!job.rank_store(1).unwrap().path_of(3).exists());
    let out = mpirun(2, &args(s, &[]));
    assert_eq!(
        line(&out, "restarted-from ").as_deref(),
        Some("2"),
        "the restart uses v-1"
    );
    assert_eq!(checksum(&out), want);
    // Later checkpoints commit normally, numbered past the failed attempt.
    assert_eq!(commits(d.path()), vec![1, 2, 4, 5, 6]);

    // Without a crash: the job carries on and later checkpoints commit.
    let d = tempfile::tempdir().unwrap();
    let out = mpirun(
        2,
        &args(d.path().to_str().unwrap(), &["--inject-fail", "0:2"]),
    );
    assert!(out.status.success());
    assert_eq!(checksum(&out), want);
    assert_eq!(commits(d.path()), vec![1, 3, 4, 5]);
}

#[test]
fn rank_killed_while_writing_restarts_from_the_previous_version() {
    let want = reference();
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    let out = mpirun(4, &args(s, &["--kill-in-write", "2:4"]));
    assert!(!out.status.success(), "the job dies with its rank");
    assert_eq!(commits(d.path()), vec![1, 2, 3]);
    let out = mpirun(4, &args(s, &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("3"));
    assert_eq!(checksum(&out), want);
}

#[test]
fn a_different_world_size_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    assert!(mpirun(2, &args(s, &[])).status.success());
    let out = mpirun(4, &args(s, &[]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("written by 2 ranks, this job has 4"), "{err}");
}

#[test]
fn job_store_compaction_keeps_committed_versions_and_restart_works() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    // v1..v3 commit; v4 fails on rank 1 (garbage on rank 0); crash at 45.
    let out = mpirun(2, &args(s, &["--inject-fail", "1:4", "--crash-at", "45"]));
    assert!(!out.status.success());
    assert_eq!(commits(d.path()), vec![1, 2, 3]);
    let job = JobStore::new(d.path(), "heat").unwrap();
    let r = job.compact(2, false).unwrap();
    assert_eq!(r.kept, vec![2, 3]);
    assert_eq!(commits(d.path()), vec![2, 3]);
    for rank in 0..2 {
        let v = job.rank_store(rank).unwrap().versions().unwrap();
        assert_eq!(v, vec![2, 3], "rank {rank} keeps only committed versions");
        for x in v {
            ckpt_engine::catalog::verify_version(&job.rank_store(rank).unwrap().path_of(x))
                .unwrap();
        }
    }
    let want = reference();
    let out = mpirun(2, &args(s, &[]));
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("3"));
    assert_eq!(checksum(&out), want);
}
