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
    mpirun_env(np, args, &[])
}

/// [`mpirun`] with extra environment variables, exported to every rank.
fn mpirun_env(np: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = if np == 0 {
        Command::new(heat_bin())
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &np.to_string()]);
        for (k, _) in env {
            c.args(["-x", k]);
        }
        c.arg(heat_bin());
        c
    };
    cmd.envs(env.iter().copied());
    cmd.args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("run mpirun (is OpenMPI installed?)");
    wait_heat(child, 120)
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
    args_at("--store", store, extra)
}

/// The small test problem's arguments, its storage given by `flag value`.
fn args_at<'a>(flag: &'a str, value: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        flag,
        value,
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

/// The checksum of an uninterrupted run without checkpoints, on an N x N grid for ITERS
/// iterations.
fn reference_for(n: &str, iters: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().to_str().unwrap();
    let args = [
        "--store",
        store,
        "--n",
        n,
        "--iters",
        iters,
        "--ckpt-every",
        "0",
    ];
    checksum(&mpirun(0, &args))
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

/// The newest commit record's number.
fn newest_commit(dir: &Path) -> u64 {
    commits(dir).last().copied().unwrap_or(0)
}

/// Every committed version verifies on every rank (what `ckpt verify DIR` checks).
fn verify_all_commits(dir: &Path) {
    let (job, meta) = JobStore::detect(dir).unwrap().expect("a job store");
    let c = job.commits().unwrap();
    assert!(!c.is_empty(), "no commit record left");
    for v in c {
        job.verify_commit(v, meta.world_size)
            .unwrap_or_else(|e| panic!("committed version {v} does not verify: {e}"));
    }
}

/// Issue 8, item 0: `ckpt-compact --keep 2` in a loop beside a job that checkpoints every
/// iteration, for 30 s. No checkpoint may fail, every commit record must stay restorable,
/// and a crash then restarts from the newest commit with the uninterrupted checksum.
#[test]
fn job_store_compaction_beside_a_live_job_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap().to_string();
    let mut child = spawn_heat2(&[
        "--store",
        &s,
        "--n",
        "32",
        "--iters",
        "100000000",
        "--ckpt-every",
        "1",
    ]);
    let t0 = Instant::now();
    while newest_commit(d.path()) < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job never committed"
        );
        assert!(child.try_wait().unwrap().is_none(), "heat exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let job = JobStore::new(d.path(), "heat").unwrap();
    let (mut rounds, mut removed) = (0u32, 0usize);
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(30) {
        let r = job.compact(2, false).expect("compaction");
        rounds += 1;
        removed += r.commits_removed.len();
        assert!(
            child.try_wait().unwrap().is_none(),
            "heat exited during compaction"
        );
    }
    // Crash the job: SIGKILL to mpirun and every rank (each in a process group of its own),
    // then wait until no rank holds its chain any more.
    kill_job(child.id() as i32);
    let out = child.wait_with_output().unwrap();
    let t2 = Instant::now();
    for rank in 0..2 {
        let s = job.rank_store(rank).unwrap();
        while s.try_lock_writer_now().unwrap().is_none() {
            assert!(
                t2.elapsed() < Duration::from_secs(20),
                "rank {rank} outlived the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("checkpoint-failed"),
        "a checkpoint failed beside the compactor: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest = newest_commit(d.path());
    assert!(
        rounds > 10 && removed > 10,
        "{rounds} compactions removed {removed} records"
    );
    eprintln!("{rounds} compactions, {removed} commit records removed, newest version {newest}");
    verify_all_commits(d.path());
    // Restart: from the newest commit, ending with the uninterrupted checksum.
    let iters = (newest + 20).to_string();
    let out = mpirun(
        2,
        &[
            "--store",
            &s,
            "--n",
            "32",
            "--iters",
            &iters,
            "--ckpt-every",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        line(&out, "restarted-from ").unwrap(),
        newest.to_string(),
        "the restart must resume from the newest committed version"
    );
    assert_eq!(checksum(&out), reference_for("32", &iters));
}

/// Runs heat at np = 2 under a 10 s limit per run and returns the output.
fn heat2(store: &str, extra: &[&str]) -> Output {
    let t = Instant::now();
    let out = mpirun(2, &args(store, extra));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "a failing run must not hang: it took {:?}",
        t.elapsed()
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Issue 8, item 2: a store that cannot be read is an error on every rank, naming the path;
/// never a silent fresh start, never a hang.
#[test]
fn unreadable_job_store_is_an_error_never_a_fresh_start() {
    // commits/ replaced by a regular file.
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    assert!(heat2(s, &["--crash-at", "35"]).status.code() != Some(0));
    let commits_dir = d.path().join("commits");
    std::fs::rename(&commits_dir, d.path().join("commits.away")).unwrap();
    std::fs::write(&commits_dir, b"not a directory").unwrap();
    let out = heat2(s, &[]);
    assert!(!out.status.success(), "must not start from scratch");
    assert!(line(&out, "restarted-from ").is_none());
    let err = stderr(&out);
    assert!(
        err.contains("list the commit records failed") && err.contains("commits"),
        "{err}"
    );
    std::fs::remove_file(&commits_dir).unwrap();
    std::fs::rename(d.path().join("commits.away"), &commits_dir).unwrap();

    // Every committed version unusable on rank 1 (its files replaced by directories): an
    // error naming the files, not iteration 1.
    let r1 = JobStore::new(d.path(), "heat").unwrap().rank_dir(1);
    for v in 1..=3 {
        let f = r1.join(format!("heat.ckpt.{v}"));
        std::fs::rename(&f, r1.join(format!("away.{v}"))).unwrap();
        std::fs::create_dir(&f).unwrap();
    }
    let out = heat2(s, &[]);
    assert!(!out.status.success(), "must not start from scratch");
    let err = stderr(&out);
    assert!(
        err.contains("none can be restored")
            && err.contains("rank 1")
            && err.contains("heat.ckpt.3"),
        "{err}"
    );
    // Only the newest unusable: fall back one version, and say so.
    for v in 1..=2 {
        let f = r1.join(format!("heat.ckpt.{v}"));
        std::fs::remove_dir(&f).unwrap();
        std::fs::rename(r1.join(format!("away.{v}")), &f).unwrap();
    }
    let out = heat2(s, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("2"));
    let err = stderr(&out);
    assert!(
        err.contains("version 3 cannot be restored") && err.contains("heat.ckpt.3"),
        "the fallback must be reported with the file: {err}"
    );
    assert_eq!(checksum(&out), reference());
}

/// Issue 8, item 2: a rank that cannot open or list its chain makes every rank fail with
/// that rank's reason, within the time limit.
#[test]
fn a_rank_that_cannot_open_its_chain_fails_every_rank_with_its_reason() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    // Rank 1's chain directory is a regular file.
    let r1 = JobStore::new(d.path(), "heat").unwrap().rank_dir(1);
    std::fs::create_dir_all(r1.parent().unwrap()).unwrap();
    std::fs::write(&r1, b"in the way").unwrap();
    let out = heat2(s, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("open this rank's chain failed on 1 rank(s): rank 1:"),
        "{err}"
    );
    assert!(err.contains("ranks/0000/1"), "{err}");
}

/// Issue 8, item 2: rank 0 failing to write the commit record reaches every rank with its
/// reason, and the job carries on.
#[test]
fn a_failed_commit_record_write_reports_its_cause() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    // Rank 0's second commit-record write fails (injected, as a full disk would).
    let out = mpirun_env(2, &args(s, &[]), &[("CKPT_FAULT_FAIL", "write-commit#2")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("checkpoint-failed checkpoint version 2 was not committed: rank 0:")
            && text.contains("heat.commit.2"),
        "{text}"
    );
    // Later versions commit, numbered past it.
    assert_eq!(checksum(&out), reference());
}

/// Issue 8, item 4: per-rank retention in a job is refused with a clear error.
#[test]
fn per_rank_retention_in_a_job_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = heat2(d.path().to_str().unwrap(), &["--keep", "2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("per-rank automatic compaction"), "{err}");
}

/// Issue 8, item 2: rank 1's chain directory becomes unlistable (mode 300) while the job
/// runs — permissions that root ignores, so as root the job runs as `nobody` through setpriv.
/// Every later checkpoint must fail on every rank with rank 1's reason; the job must neither
/// hang nor stop computing, and ends with the uninterrupted checksum.
#[test]
fn an_unlistable_rank_directory_fails_checkpoints_on_every_rank_without_a_hang() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let job = JobStore::new(&store, "heat").unwrap();
    let r1 = job.rank_dir(1);
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        for p in [
            d.path(),
            store.as_path(),
            r1.parent().unwrap(),
            &r1,
            &job.rank_dir(0),
        ] {
            std::fs::create_dir_all(p).unwrap();
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let s = store.to_str().unwrap();
    let run_args = [
        "--store",
        s,
        "--n",
        "48",
        "--iters",
        "20000",
        "--ckpt-every",
        "10",
    ];
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "mpirun"]);
        c
    } else {
        Command::new("mpirun")
    };
    cmd.args(["--oversubscribe", "-np", "2"])
        .arg(heat_bin())
        .args(run_args)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("HOME", d.path())
        .env("TMPDIR", d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping: cannot run mpirun as another user ({e})");
            return;
        }
    };
    let t0 = Instant::now();
    while newest_commit(&store) < 1 {
        if child.try_wait().unwrap().is_some() {
            let out = wait_heat(child, 10);
            panic!(
                "heat ended before its first commit: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                stderr(&out)
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no first commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::set_permissions(&r1, std::fs::Permissions::from_mode(0o300)).unwrap();
    let out = wait_heat(child, 120);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let failed = text.matches("checkpoint-failed").count();
    assert!(failed > 0, "checkpoints after the chmod must fail: {text}");
    assert!(
        text.contains("rank 1:")
            && text.contains("ranks/0000/1")
            && text.contains("Permission denied"),
        "{text}"
    );
    assert_eq!(checksum(&out), reference_for(run_args[3], run_args[5]));
}

/// The pid of the heat process that is MPI rank `rank` of the job whose store is `store`
/// (found through /proc: its command line names the store, its environment the rank).
fn rank_pid(store: &str, rank: u32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("heat") || !cmd.contains(store) || cmd.starts_with("mpirun") {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Spawns `mpirun -np 2 heat ...` in its own process group, returning the child.
fn spawn_heat2(extra: &[&str]) -> std::process::Child {
    spawn_heat_np(2, extra)
}

/// [`spawn_heat2`] with `np` ranks.
fn spawn_heat_np(np: usize, extra: &[&str]) -> std::process::Child {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &np.to_string()])
        .arg(heat_bin())
        .args(extra)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().expect("run mpirun")
}

/// Every process of the job started as `root` (mpirun): its descendants, and every process
/// in the process group of one of them (OpenMPI puts each rank in a group of its own, and a
/// rank's flush child stays in it even once reparented). Pid, state and command of each.
fn job_processes(root: i32) -> Vec<(i32, char, String)> {
    // pid -> (ppid, pgid, state, comm), from /proc/PID/stat.
    let mut procs = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": the command may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if let (Some(st), Some(pp), Some(pg)) = (f.first(), f.get(1), f.get(2)) {
            let state = st.chars().next().unwrap_or('?');
            if let (Ok(pp), Ok(pg)) = (pp.parse::<i32>(), pg.parse::<i32>()) {
                procs.insert(pid, (pp, pg, state, comm));
            }
        }
    }
    let mut job = vec![root];
    let mut i = 0;
    while i < job.len() {
        let p = job[i];
        for (&pid, (pp, pg, _, _)) in &procs {
            let in_group = *pg == p && pid != p;
            if (*pp == p || in_group) && !job.contains(&pid) {
                job.push(pid);
            }
        }
        i += 1;
    }
    job.into_iter()
        .filter_map(|p| procs.get(&p).map(|(_, _, st, c)| (p, *st, c.clone())))
        .collect()
}

/// SIGKILL to every process of the job started as `root` ([`job_processes`]).
fn kill_job(root: i32) {
    for (p, _, _) in job_processes(root) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The threads' stacks of every process of the job started as `root` ([`job_processes`]),
/// to tell where a job that did not finish was waiting.
fn stacks_of_job(root: i32) -> String {
    let mut out = String::new();
    for (pid, state, comm) in job_processes(root) {
        let bt = Command::new("timeout")
            .args([
                "30",
                "gdb",
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt 12",
            ])
            .output();
        out += &format!("== {comm} pid {pid} state {state}\n");
        if let Ok(bt) = bt {
            out += &String::from_utf8_lossy(&bt.stdout)
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
                .collect::<Vec<_>>()
                .join("\n");
            out += "\n";
        }
    }
    out
}

/// Waits for `child` up to `secs`, killing the job (mpirun, ranks, flush children) if it does not finish. Its
/// output is read meanwhile, so that a chatty job never blocks on a full pipe.
fn wait_heat(mut child: std::process::Child, secs: u64) -> Output {
    use std::io::Read;
    let drain = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let t = Instant::now();
    let pid = child.id() as i32;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let stacks = stacks_of_job(pid);
            // mpirun and every rank (each in a group of its own) with its flush children.
            kill_job(pid);
            let _ = child.wait();
            let (o, e) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "heat did not finish in {secs} s\nstdout:\n{}\nstderr:\n{}\nstacks:\n{stacks}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Issue 10: SIGUSR1 delivered to one rank only (as a scheduler's warning may be) makes every
/// rank checkpoint at the same iteration; with --exit-on-signal the job then stops cleanly,
/// and the rerun resumes from that checkpoint with the uninterrupted checksum.
#[test]
fn a_signal_to_one_rank_checkpoints_every_rank_at_once() {
    signal_to_the_last_rank(2);
}

/// The same with four ranks: the signal reaches rank 3 only, all four checkpoint at the
/// same iteration.
#[test]
fn a_signal_to_one_of_four_ranks_checkpoints_every_rank_at_once() {
    signal_to_the_last_rank(4);
}

/// Sends SIGUSR1 to the last of `np` ranks only, and checks that every rank checkpointed
/// the same iteration (the restart reproduces the uninterrupted result).
fn signal_to_the_last_rank(np: usize) {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap().to_string();
    let n_iters = "100000000";
    let child = spawn_heat_np(
        np,
        &[
            "--store",
            &s,
            "--n",
            "32",
            "--iters",
            n_iters,
            "--ckpt-every",
            "100000",
            "--signal-checkpoint",
            "--exit-on-signal",
        ],
    );
    let t = Instant::now();
    let last = np as u32 - 1;
    let pid = loop {
        if let Some(p) = rank_pid(&s, last) {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "rank {last} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Heat installs its handler before it opens its chain: once the last rank holds its
    // writer lock, a signal is a checkpoint request, not a kill. Then warn that rank only.
    let lock = d
        .path()
        .join(format!("ranks/0000/{last}/.heat.writer.lock"));
    while !lock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "rank {last} never opened its chain"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let out = wait_heat(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: u64 = line(&out, "exiting after signal-checkpoint ")
        .unwrap_or_else(|| {
            panic!(
                "no signal checkpoint: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
        .parse()
        .unwrap();
    assert_eq!(commits(d.path()).last().copied(), Some(v));
    verify_all_commits(d.path());
    let it: u64 = line(&out, "signal-checkpoint ")
        .and_then(|l| l.rsplit(' ').next().map(str::to_string))
        .unwrap()
        .parse()
        .unwrap();
    // Every rank's file of v holds the same iteration (the rerun would diverge otherwise).
    let iters = (it + 30).to_string();
    let rerun = mpirun(
        np,
        &[
            "--store",
            &s,
            "--n",
            "32",
            "--iters",
            &iters,
            "--ckpt-every",
            "0",
        ],
    );
    assert_eq!(line(&rerun, "restarted-from ").unwrap(), v.to_string());
    assert_eq!(checksum(&rerun), reference_for("32", &iters));
}

/// Issue 10: `ckpt halt DIR` stops a running job cleanly after its next checkpoint, and the
/// request is withdrawn so that a resubmitted job runs to the end.
#[test]
fn halt_stops_the_job_after_its_next_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap().to_string();
    let child = spawn_heat2(&[
        "--store",
        &s,
        "--n",
        "32",
        "--iters",
        "100000000",
        "--ckpt-every",
        "50",
    ]);
    let t = Instant::now();
    while newest_commit(d.path()) < 2 {
        assert!(t.elapsed() < Duration::from_secs(60), "no commit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ckpt = heat_bin().parent().unwrap().parent().unwrap().join("ckpt");
    if ckpt.exists() {
        let out = Command::new(&ckpt).args(["halt", &s]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        JobStore::new(d.path(), "heat")
            .unwrap()
            .request_halt()
            .unwrap();
    }
    let out = wait_heat(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        line(&out, "halted at iteration ").is_some(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!JobStore::new(d.path(), "heat")
        .unwrap()
        .halt_requested()
        .unwrap());
    verify_all_commits(d.path());
}

/// Asynchronous checkpoints at np = 2 and 4: the same answer as without checkpoints; a rank
/// crashing while version 4's flush may still run (iteration 41, version 4 started at 40 and
/// committed only at the next checkpoint) restarts from version 3, the newest committed on
/// every rank, with the uninterrupted checksum; a rank killed inside its flush of version 4
/// does the same. Both snapshot mechanisms.
#[test]
fn async_checkpoints_crash_mid_flush_and_restart_from_the_last_committed_version() {
    let want = reference();
    for (np, snapshot) in [(2usize, "copy"), (4, "fork"), (4, "copy")] {
        let tag = format!("np={np} {snapshot}");
        let clean = tempfile::tempdir().unwrap();
        let a = ["--async", "--snapshot", snapshot];
        let out = mpirun(np, &args(clean.path().to_str().unwrap(), &a));
        assert!(
            out.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            checksum(&out),
            want,
            "{tag}: async checkpoints changed the result"
        );
        // Every version committed, the last one by the final wait.
        assert_eq!(commits(clean.path()), vec![1, 2, 3, 4, 5], "{tag}");
        verify_all_commits(clean.path());

        let d = tempfile::tempdir().unwrap();
        let s = d.path().to_str().unwrap();
        let mut crash = a.to_vec();
        crash.extend(["--crash-at", "41"]);
        let out = mpirun(np, &args(s, &crash));
        assert!(!out.status.success(), "{tag}: the crashed run must fail");
        assert_eq!(commits(d.path()), vec![1, 2, 3], "{tag}");
        let out = mpirun(np, &args(s, &a));
        assert!(
            out.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(line(&out, "restarted-from ").as_deref(), Some("3"), "{tag}");
        assert_eq!(checksum(&out), want, "{tag}: restarted run");
        // Two more versions committed after the restart; version 4's files, written but never
        // committed, keep their number (numbers are never reused), so they may be 5 and 6.
        let c = commits(d.path());
        assert_eq!(&c[..3], &[1, 2, 3], "{tag}");
        assert_eq!(c.len(), 5, "{tag}: {c:?}");
        verify_all_commits(d.path());
    }
    // A rank killed inside its flush of version 4 (copy snapshots: the flush runs in the
    // rank's own process).
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    let out = mpirun(
        2,
        &args(
            s,
            &["--async", "--snapshot", "copy", "--kill-in-write", "1:4"],
        ),
    );
    assert!(!out.status.success(), "the job dies with its rank");
    assert_eq!(commits(d.path()), vec![1, 2, 3]);
    let out = mpirun(2, &args(s, &["--async"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("3"));
    assert_eq!(checksum(&out), want);
}

/// A multi-level job's directories: node-local caches `local/node<N>`, persistent storage
/// `pfs`, and its configuration file.
struct Levels {
    _d: tempfile::TempDir,
    root: PathBuf,
    config: String,
}

impl Levels {
    fn new(extra: &str) -> Levels {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        let config = root.join("job.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nlocal = \"{0}/local/node{{node}}\"\npersistent = \"{0}/pfs\"\n{extra}",
                root.display()
            ),
        )
        .unwrap();
        Levels {
            _d: d,
            root,
            config: config.display().to_string(),
        }
    }

    fn node(&self, n: u32) -> PathBuf {
        self.root.join(format!("local/node{n}"))
    }

    fn pfs(&self) -> PathBuf {
        self.root.join("pfs")
    }

    /// `mpirun -np 4 heat --config ...` on 4 simulated nodes.
    fn run(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_np(4, extra, env)
    }

    /// `mpirun -np NP heat --config ...` on NP simulated nodes (unless `env` says).
    fn run_np(&self, np: usize, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let a = args_at("--config", &self.config, extra);
        let nodes = np.to_string();
        let mut e = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "CKPT_SIMULATE_NODES") {
            e.push(("CKPT_SIMULATE_NODES", &nodes));
        }
        mpirun_env(np, &a, &e)
    }
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

/// Partner copies at np = 4 on 4 simulated nodes: a crash, then one node's cache deleted;
/// the restart rebuilds that node's chains from the partner copies (preferred over
/// persistent storage), from the newest version, with the uninterrupted checksum, and
/// restores the partner copies the lost node held.
#[test]
fn a_lost_node_cache_restarts_from_partner_copies() {
    let want = reference();
    let l = Levels::new("partner = true\n");
    let out = l.run(&["--crash-at", "35"], &[]);
    assert!(!out.status.success(), "the crashed run must fail");
    for n in 0..4 {
        assert_eq!(commits(&l.node(n)), vec![1, 2, 3], "node {n}");
    }
    std::fs::remove_dir_all(l.node(2)).unwrap();
    let out = l.run(&[], &[]);
    ok(&out, "restart");
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("3"));
    assert_eq!(line(&out, "restart-level ").as_deref(), Some("partner"));
    assert_eq!(checksum(&out), want);
    // The lost cache is whole again: its rank's chain, the records, and the partner copies
    // it holds (rank 1's).
    assert_eq!(commits(&l.node(2)), vec![3, 4, 5]);
    let node2 = JobStore::new(l.node(2), "heat").unwrap();
    for rank in [1, 2] {
        node2.check_rank(5, rank, 4).unwrap();
    }
    // Losing another node now loses nothing either.
    std::fs::remove_dir_all(l.node(1)).unwrap();
    let out = l.run(&["--iters", "60"], &[]);
    ok(&out, "second restart");
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("5"));
    assert_eq!(line(&out, "restart-level ").as_deref(), Some("partner"));
}

/// Every node's cache deleted after a crash: the restart copies the newest version flushed
/// to persistent storage back into the caches and gives the right checksum.
#[test]
fn every_cache_lost_restarts_from_persistent_storage() {
    let want = reference();
    let l = Levels::new("partner = true\npersistent_interval = 2\n");
    let out = l.run(&["--crash-at", "35"], &[]);
    assert!(!out.status.success(), "the crashed run must fail");
    // Every 2nd version goes to persistent storage (synchronously): version 2.
    assert_eq!(commits(&l.pfs()), vec![2]);
    verify_all_commits(&l.pfs());
    std::fs::remove_dir_all(l.root.join("local")).unwrap();
    let out = l.run(&[], &[]);
    ok(&out, "restart");
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("2"));
    assert_eq!(line(&out, "restart-level ").as_deref(), Some("persistent"));
    assert_eq!(checksum(&out), want);
    // Versions 3, 4 and 5 were written again (the lost 3 is gone with the caches); 4 was
    // flushed.
    assert_eq!(commits(&l.pfs()), vec![2, 4]);
    verify_all_commits(&l.pfs());
}

/// A rank killed in the middle of an asynchronous flush to persistent storage: persistent
/// storage never lists a version whose files are incomplete (the interrupted version's
/// files are there, its commit record is not), and the next run redoes the flush.
#[test]
fn a_crash_mid_flush_never_shows_an_incomplete_version() {
    let want = reference();
    let l = Levels::new("partner = true\nmode = \"async\"\n");
    // Rank 1 dies right after its second flushed file is in place.
    let delay = [("CKPT_TEST_FLUSH_DELAY_MS", "50")];
    let out = l.run(&["--kill-in-flush", "1:2"], &delay);
    assert!(!out.status.success(), "the job dies with its rank");
    let listed = commits(&l.pfs());
    if !listed.is_empty() {
        verify_all_commits(&l.pfs());
    }
    let newest = listed.last().copied().unwrap_or(0);
    let rank1 = JobStore::new(l.pfs(), "heat")
        .unwrap()
        .rank_store(1)
        .unwrap()
        .versions()
        .unwrap();
    assert!(
        rank1.iter().any(|&v| v > newest),
        "rank 1 flushed files of a version above the newest persistent record {newest}: {rank1:?}"
    );
    let newest_local = *commits(&l.node(0)).last().unwrap();
    let out = l.run(&[], &delay);
    ok(&out, "rerun");
    assert_eq!(checksum(&out), want);
    let after = commits(&l.pfs());
    verify_all_commits(&l.pfs());
    assert!(
        newest_local > newest,
        "the interrupted version was not listed"
    );
    assert!(
        after.last().copied().unwrap_or(0) >= newest_local,
        "the rerun flushed the newest version (local {newest_local}): {after:?}"
    );
}

/// In async mode a checkpoint returns while its flush to persistent storage is still in
/// flight (a test hook holds each flush back 400 ms; heat prints the flush status after
/// every checkpoint), and the final wait leaves the newest version on persistent storage.
#[test]
fn an_async_checkpoint_returns_before_its_flush_is_done() {
    let l = Levels::new("mode = \"async\"\n");
    let out = l.run(&[], &[("CKPT_TEST_FLUSH_DELAY_MS", "400")]);
    ok(&out, "async run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let in_flight: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("flush-status in-flight ")?;
            let (v, p) = rest.split_once(" persisted ")?;
            Some((v.parse().ok()?, p.trim().parse().ok()?))
        })
        .collect();
    assert!(
        in_flight.iter().any(|&(v, p)| v > p),
        "no checkpoint returned with its flush in flight: {text}"
    );
    assert_eq!(commits(&l.pfs()).last(), Some(&5), "{text}");
    verify_all_commits(&l.pfs());
}

/// Partner copies need two nodes: on one, every rank gets the same clear error.
#[test]
fn partner_copies_on_one_node_are_a_clear_error() {
    let l = Levels::new("partner = true\n");
    let out = l.run_np(2, &[], &[("CKPT_SIMULATE_NODES", "1")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("partner copies need at least two nodes"),
        "{}",
        stderr(&out)
    );
}

/// Retention at each level (`keep_local = 2`, `keep_persistent = 2`, synchronous flushes),
/// at np = 2 on 2 simulated nodes: ten versions leave at most three committed versions in
/// each cache and on persistent storage (each level compacts once twice as many are there),
/// every one of them whole, and the newest restorable from persistent storage alone.
#[test]
fn retention_at_each_level_keeps_the_newest_versions_whole() {
    let want = reference_for("48", "100");
    let l = Levels::new("partner = true\nkeep_local = 2\nkeep_persistent = 2\n");
    let out = l.run_np(2, &["--iters", "100"], &[]);
    ok(&out, "run");
    for n in 0..2u32 {
        let c = commits(&l.node(n));
        assert!(c.len() <= 3 && c.last() == Some(&10), "node {n}: {c:?}");
        // Node n holds rank n's chain and the partner copies of the other rank.
        let cache = JobStore::new(l.node(n), "heat").unwrap();
        for v in c {
            for rank in [n, 1 - n] {
                cache
                    .check_rank(v, rank, 2)
                    .unwrap_or_else(|e| panic!("node {n}, version {v}, rank {rank}: {e}"));
                let file = cache.rank_store(rank).unwrap().path_of(v);
                ckpt_engine::catalog::verify_version(&file)
                    .unwrap_or_else(|e| panic!("node {n}, version {v}, rank {rank}: {e}"));
            }
        }
    }
    let c = commits(&l.pfs());
    assert!(c.len() <= 3 && c.last() == Some(&10), "persistent: {c:?}");
    verify_all_commits(&l.pfs());
    std::fs::remove_dir_all(l.root.join("local")).unwrap();
    let out = l.run_np(2, &["--iters", "100"], &[]);
    ok(&out, "restart");
    assert_eq!(line(&out, "restarted-from ").as_deref(), Some("10"));
    assert_eq!(line(&out, "restart-level ").as_deref(), Some("persistent"));
    assert_eq!(checksum(&out), want);
}
