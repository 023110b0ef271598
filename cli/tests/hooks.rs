//! `ckpt prolog` and `ckpt epilog` as Slurm runs them: from the environment, with a
//! configuration file, on job stores written the way the MPI shim writes them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CKPT: &str = env!("CARGO_BIN_EXE_ckpt");

struct Site {
    _t: tempfile::TempDir,
    cfg: PathBuf,
    local: PathBuf,
    persistent: PathBuf,
}

/// A configuration with node-local and persistent roots in a temporary directory.
fn site(extra: &str) -> Site {
    let t = tempfile::tempdir().unwrap();
    let local = t.path().join("local");
    let persistent = t.path().join("persistent");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&persistent).unwrap();
    let cfg = t.path().join("ckpt.toml");
    std::fs::write(
        &cfg,
        format!(
            "local_root = \"{}\"\npersistent_root = \"{}\"\n{extra}",
            local.display(),
            persistent.display()
        ),
    )
    .unwrap();
    Site {
        _t: t,
        cfg,
        local,
        persistent,
    }
}

/// The job's user: `nobody` when we are root (so that the chown is visible), else us.
fn job_uid() -> u32 {
    if nix::unistd::geteuid().is_root() {
        65534
    } else {
        nix::unistd::geteuid().as_raw()
    }
}

fn hook(site: &Site, which: &str, job: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CKPT);
    cmd.args([which, "--json"])
        .env("CKPT_CONFIG", &site.cfg)
        .env("SLURM_JOB_ID", job)
        .env("SLURM_JOB_USER", "someone")
        .env("SLURM_JOB_UID", job_uid().to_string())
        .env_remove("SLURM_JOB_GID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verify(dir: &Path) -> serde_json::Value {
    let out = Command::new(CKPT)
        .args(["verify", "--json"])
        .arg(dir)
        .output()
        .unwrap();
    ok_json(&out)
}

fn commits(dir: &Path, name: &str) -> Vec<u64> {
    ckpt_engine::job::JobStore::new(dir, name)
        .unwrap()
        .commits()
        .unwrap()
}

#[test]
fn prolog_without_a_checkpoint_makes_a_private_cache() {
    let s = site("");
    // A missing root is created traversable but not listable (0711), so that a job's user
    // reaches their own 0700 directory in it.
    std::fs::remove_dir(&s.local).unwrap();
    ok_json(&hook(&s, "prolog", "40", &[]));
    let root = std::fs::metadata(&s.local).unwrap();
    assert_eq!(root.permissions().mode() & 0o777, 0o711);
    let r = ok_json(&hook(&s, "prolog", "41", &[]));
    assert_eq!(r["staged"], serde_json::Value::Null);
    let m = std::fs::metadata(s.local.join("41")).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    assert_eq!(m.uid(), job_uid());
    // Bad environment or configuration: a clear error, nothing created.
    let out = hook(&s, "prolog", "../x", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a job id"));
    std::fs::write(
        &s.cfg,
        "local_root = \"relative\"\npersistent_root = \"/p\"\n",
    )
    .unwrap();
    let out = hook(&s, "prolog", "42", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("absolute"));
}

#[test]
fn epilog_flushes_verifies_cleans_and_is_idempotent() {
    let s = site("");
    let cache = s.local.join("7");
    ckpt_tests::job_store(&cache, "heat", 2, 3);
    let r = ok_json(&hook(&s, "epilog", "7", &[]));
    assert_eq!(r["copy"]["versions"], serde_json::json!([1, 2, 3]));
    assert_eq!(r["cache_removed"], true);
    assert!(!cache.exists());
    let persistent = s.persistent.join("7");
    assert_eq!(commits(&persistent, "heat"), [1, 2, 3]);
    assert_eq!(verify(&persistent)["ok"], true);
    assert_eq!(std::fs::metadata(&persistent).unwrap().uid(), job_uid());
    // Twice: nothing to do, still fine.
    let r = ok_json(&hook(&s, "epilog", "7", &[]));
    assert_eq!(r["cache_removed"], false);
    assert_eq!(commits(&persistent, "heat"), [1, 2, 3]);

    // The requeued job: the prolog stages the newest version in, the job goes on (versions
    // 4 and 5), and the epilog copies only what persistent storage lacks.
    let r = ok_json(&hook(&s, "prolog", "7", &[]));
    assert_eq!(r["staged"], 3);
    assert_eq!(commits(&cache, "heat"), [3]);
    ckpt_tests::job_store(&cache, "heat", 2, 2);
    let r = ok_json(&hook(&s, "epilog", "7", &[]));
    assert_eq!(r["copy"]["versions"], serde_json::json!([4, 5]));
    assert_eq!(r["copy"]["already_there"], serde_json::json!([3]));
    assert_eq!(commits(&persistent, "heat"), [1, 2, 3, 4, 5]);
    assert_eq!(verify(&persistent)["ok"], true);
}

#[test]
fn epilog_applies_retention_on_persistent_storage() {
    let s = site("keep = 2\n");
    ckpt_tests::job_store(&s.local.join("8"), "heat", 2, 4);
    let r = ok_json(&hook(&s, "epilog", "8", &[]));
    assert_eq!(r["retired"], serde_json::json!([1, 2]));
    assert_eq!(commits(&s.persistent.join("8"), "heat"), [3, 4]);
    assert_eq!(verify(&s.persistent.join("8"))["ok"], true);
}

#[test]
fn an_epilog_killed_mid_copy_is_finished_by_the_next_one() {
    let s = site("");
    let cache = s.local.join("9");
    ckpt_tests::job_store(&cache, "heat", 2, 3);
    // Killed at the 4th file copy: versions 1 is out, version 2 half out, no commit of 2.
    let out = hook(&s, "epilog", "9", &[("CKPT_FAULT_KILL", "copy#4")]);
    assert!(!out.status.success(), "the epilog was not killed");
    assert!(cache.exists(), "the cache must survive a failed epilog");
    let persistent = s.persistent.join("9");
    assert_eq!(commits(&persistent, "heat"), [1]);
    let temps: Vec<_> = walk(&persistent)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp."))
        .collect();
    assert_eq!(temps.len(), 1, "{temps:?}");
    let r = ok_json(&hook(&s, "epilog", "9", &[]));
    assert_eq!(r["copy"]["versions"], serde_json::json!([2, 3]));
    assert_eq!(r["copy"]["already_there"], serde_json::json!([1]));
    assert!(r["copy"]["files_reused"].as_u64().unwrap() >= 1);
    assert_eq!(r["copy"]["temps_removed"].as_array().unwrap().len(), 1);
    assert!(!cache.exists());
    assert_eq!(commits(&persistent, "heat"), [1, 2, 3]);
    assert_eq!(verify(&persistent)["ok"], true);
}

#[test]
fn an_epilog_that_cannot_flush_keeps_the_only_copy() {
    let s = site("");
    let cache = s.local.join("10");
    ckpt_tests::job_store(&cache, "heat", 1, 2);
    // Persistent storage holds a different job's version 2 under the same number.
    let other = s.persistent.join("10");
    ckpt_tests::job_store(&other, "heat", 1, 2);
    let out = hook(&s, "epilog", "10", &[]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the cache") && text.contains("kept"),
        "{text}"
    );
    assert_eq!(commits(&cache, "heat"), [1, 2]);
}

#[test]
fn an_epilog_never_removes_rank_files_it_cannot_account_for() {
    let s = site("");
    let cache = s.local.join("11");
    // Rank files with no job description beside them (their commit records live elsewhere).
    ckpt_tests::job_store(&cache, "heat", 2, 1);
    std::fs::remove_file(cache.join("ckpt-job")).unwrap();
    let out = hook(&s, "epilog", "11", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no job description"));
    assert!(cache.join("ranks").exists());
    // An empty cache (the job never checkpointed) goes.
    let empty = s.local.join("12");
    std::fs::create_dir_all(empty.join("ranks/0000/0")).unwrap();
    ok_json(&hook(&s, "epilog", "12", &[]));
    assert!(!empty.exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
