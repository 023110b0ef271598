//! Crash during checkpoint: a child process is killed with SIGKILL at random points of a
//! checkpoint, many times. Every earlier version still restores, and no partial version is
//! ever visible.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_engine::bench::Rng;
use ckpt_engine::catalog::verify_version;
use ckpt_engine::Store;
use ckpt_tests::restore_hash;

const MIB: usize = 8;

/// Runs one child that restores the latest version, mutates, says `ready`, checkpoints. Kills
/// it `delay` after `ready` (if given). Returns the committed lines it printed and how long
/// the checkpoint took if it finished.
fn run_child(
    dir: &str,
    seed: u64,
    delay: Option<Duration>,
    fault: Option<&str>,
) -> (Vec<(u64, String)>, Option<Duration>) {
    let mut cmd = Command::new(common::testapp_path());
    cmd.args([
        dir,
        "crash",
        &MIB.to_string(),
        &seed.to_string(),
        "1",
        "restore=latest",
        "writes=400",
        "ready",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(f) = fault {
        cmd.env("CKPT_FAULT_KILL", f);
    }
    let mut child = cmd.spawn().expect("spawn testapp");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut committed = Vec::new();
    let mut took = None;
    let mut ready_at = None;
    while let Some(Ok(line)) = lines.next() {
        if line == "ready" {
            ready_at = Some(Instant::now());
            if let Some(d) = delay {
                std::thread::sleep(d);
                let _ = child.kill(); // SIGKILL
                break;
            }
        } else if let Some(rest) = line.strip_prefix("committed ") {
            let mut it = rest.split_whitespace();
            let v: u64 = it.next().unwrap().parse().unwrap();
            committed.push((v, it.next().unwrap().to_string()));
            took = ready_at.map(|t| t.elapsed());
        }
    }
    // A kill may land after the commit: collect what it printed.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("committed ") {
            let mut it = rest.split_whitespace();
            committed.push((
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().to_string(),
            ));
        }
    }
    let _ = child.wait();
    (committed, took)
}

#[test]
fn sigkill_during_checkpoint_never_leaves_a_partial_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let store = Store::new(dir.path(), "crash").unwrap();
    let mut known: Vec<(u64, String)> = Vec::new();

    // Calibrate: how long does one checkpoint take here?
    let (c, took) = run_child(d, 0, None, None);
    known.extend(c);
    let (c, took2) = run_child(d, 1, None, None);
    known.extend(c);
    let span = took.unwrap().max(took2.unwrap());

    let mut rng = Rng::new(2024);
    let mut kills = 0;
    for i in 0..60u64 {
        let fault = (i % 10 == 9).then_some("before-rename");
        let delay = if fault.is_some() {
            None
        } else {
            Some(Duration::from_micros(
                rng.below(span.as_micros() as u64 * 6 / 5 + 1),
            ))
        };
        let (c, _) = run_child(d, 100 + i, delay, fault);
        kills += 1;
        known.extend(c);
        // No partial version is visible: everything listed verifies.
        let versions = store.versions().unwrap();
        for v in &versions {
            verify_version(&store.path_of(*v))
                .unwrap_or_else(|e| panic!("after kill {i}: version {v} is broken: {e}"));
        }
        // Every version we saw committed is still listed.
        for (v, _) in &known {
            assert!(
                versions.contains(v),
                "after kill {i}: committed version {v} vanished"
            );
        }
    }
    assert!(kills >= 50);
    // Every version whose contents we know restores to them.
    for (v, h) in &known {
        assert_eq!(
            &restore_hash(dir.path(), "crash", MIB, *v).unwrap(),
            h,
            "version {v}"
        );
    }
    // Kills before the rename leave a temporary file, but they do not pile up: each writer
    // that opens the chain removes those of dead writers, so at most the last one remains.
    let temps = store.temp_files().unwrap();
    assert!(temps.len() <= 1, "temporaries piled up: {temps:?}");
}
