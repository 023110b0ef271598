//! The `ckpt` binary, end to end: JSON output of every command, exit codes, error messages.

use std::path::Path;
use std::process::Command;

use ckpt_engine::{Checkpointer, Config};
use serde_json::Value;

fn ckpt(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .args(args)
        .output()
        .expect("run ckpt");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `ckpt bench --dir <dir> <args> --json`.
fn bench(dir: &std::path::Path, args: &[&str]) -> (i32, Value, String) {
    let dir = dir.to_str().unwrap();
    let all: Vec<&str> = ["bench", "--dir", dir]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--json"])
        .collect();
    ckpt(&all)
}

/// Three versions of chain "sim": v1 full, v2 and v3 deltas. Returns v3's region contents.
fn make_store(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut ck = Checkpointer::open(dir, "sim", Config::default()).unwrap();
    let a = ck.alloc_region::<u8>(1, 100_000).unwrap();
    let b = ck.alloc_region::<u8>(9, 4096 * 3).unwrap();
    ck.region_mut(&a)
        .unwrap()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = (i % 251) as u8);
    ck.checkpoint().unwrap();
    ck.region_mut(&a).unwrap()[50_000] = 7;
    ck.checkpoint().unwrap();
    ck.region_mut(&b).unwrap()[1] = 9;
    ck.checkpoint().unwrap();
    vec![
        (1, ck.region_bytes(1).unwrap().to_vec()),
        (9, ck.region_bytes(9).unwrap().to_vec()),
    ]
}

#[test]
fn ls_inspect_verify_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let state = make_store(dir.path());

    let (code, j, _) = ckpt(&["ls", d, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(j["name"], "sim");
    let vs = j["versions"].as_array().unwrap();
    assert_eq!(vs.len(), 3);
    assert_eq!(vs[0]["version"], 1);
    assert_eq!(vs[0]["parent"], Value::Null);
    assert_eq!(vs[0]["depth"], 0);
    assert_eq!(vs[2]["parent"], 2);
    assert_eq!(vs[2]["depth"], 2);
    assert_eq!(vs[2]["file"], "sim.ckpt.3");
    assert!(vs[2]["bytes"].as_u64().unwrap() < vs[0]["bytes"].as_u64().unwrap());

    let v3 = dir.path().join("sim.ckpt.3");
    let (code, j, _) = ckpt(&["inspect", v3.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(j["version"], 3);
    assert_eq!(j["parent"]["version"], 2);
    assert_eq!(j["pages_stored"], 1);
    assert_eq!(j["pages_total"], 25 + 3);
    assert_eq!(j["pages_referenced"], 27);
    // Auto mode: uffd where the kernel has it; the version records what was used.
    let want = match Checkpointer::open(dir.path().join("probe"), "p", Config::default())
        .unwrap()
        .tracking()
    {
        ckpt_engine::Tracking::Uffd => "uffd",
        _ => "hash",
    };
    assert_eq!(j["tracking"], want);
    assert_eq!(j["regions"].as_array().unwrap().len(), 2);

    let (code, j, _) = ckpt(&["verify", d, "--json"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["ok"], true);

    let out = dir.path().join("out");
    let (code, j, _) = ckpt(&["restore", d, "--out", out.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["version"], 3);
    for (id, bytes) in &state {
        assert_eq!(
            &std::fs::read(out.join(format!("region-{id}.bin"))).unwrap(),
            bytes
        );
    }
    let (code, _, _) = ckpt(&[
        "restore",
        d,
        "--version",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read(out.join("region-1.bin")).unwrap()[50_000],
        (50_000 % 251) as u8
    );

    // Damage v2: verify fails, names the file, and reports v3 (which references it) too.
    let v2 = dir.path().join("sim.ckpt.2");
    let mut bytes = std::fs::read(&v2).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0xff;
    std::fs::write(&v2, bytes).unwrap();
    let (code, j, _) = ckpt(&["verify", d, "--json"]);
    assert_eq!(code, 1);
    assert_eq!(j["ok"], false);
    let files = j["files"].as_array().unwrap();
    assert_eq!(files[0]["ok"], true);
    assert_eq!(files[1]["ok"], false);
    assert!(files[1]["error"].as_str().unwrap().contains("sim.ckpt.2"));
    assert!(files[2]["bad_file"]
        .as_str()
        .unwrap()
        .ends_with("sim.ckpt.2"));
    let (code, _, stderr) = ckpt(&["restore", d, "--out", out.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("sim.ckpt.2") && stderr.contains("corrupt footer"),
        "{stderr}"
    );
}

#[test]
fn errors_are_json_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (code, j, _) = ckpt(&["ls", missing.to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(j["error"].as_str().unwrap().contains("nope"), "{j}");
    let garbage = dir.path().join("x.ckpt.1");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let (code, j, _) = ckpt(&["inspect", garbage.to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(j["error"].as_str().unwrap().contains("x.ckpt.1"), "{j}");
    // Two chains in one directory: --name is required.
    make_store(dir.path());
    let mut other = Checkpointer::open(dir.path(), "other", Config::default()).unwrap();
    other.alloc_region::<u8>(1, 10).unwrap();
    other.checkpoint().unwrap();
    std::fs::remove_file(&garbage).unwrap();
    let (code, j, _) = ckpt(&["ls", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(j["error"].as_str().unwrap().contains("--name"), "{j}");
    let (code, j, _) = ckpt(&[
        "ls",
        dir.path().to_str().unwrap(),
        "--name",
        "other",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(j["versions"].as_array().unwrap().len(), 1);
}

#[test]
fn bench_reports_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("b");
    let (code, j, stderr) = bench(
        &d,
        &[
            "--state-mib",
            "8",
            "--dirty",
            "0.05",
            "--versions",
            "4",
            "--tracking",
            "hash",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for k in [
        "state_bytes",
        "versions",
        "dirty_fraction",
        "tracking",
        "full_secs",
        "delta_secs",
        "delta_bytes",
        "baseline_write_secs",
        "floor_secs",
        "detect_secs",
        "tuned_write_secs",
        "restore_newest_secs",
        "restore_first_secs",
        "cold_read_secs",
        "restore_newest_cold_secs",
        "restore_newest_cold_bytes_in_place",
        "cold_cache",
        "engine_rss_bytes",
    ] {
        assert!(!j[k].is_null(), "missing {k}: {j}");
    }
    // The engine's memory beside the state holds no copy of it: 16 bytes of fast hash a
    // page, plus fixed costs (worker threads' buffers and compression contexts, allocator
    // arenas).
    let engine = j["engine_rss_bytes"].as_f64().unwrap();
    assert!(engine < (8 << 20) as f64, "{j}");
    // Of which the engine's own bookkeeping: at least the table of 16 bytes per page.
    let kept = j["engine_bookkeeping_bytes"].as_f64().unwrap();
    assert!(
        kept >= (16 * (8 << 20) / 4096) as f64 && kept < (1 << 20) as f64,
        "{j}"
    );
    assert_eq!(j["verified"], true);
    assert!(j["floor_secs"].as_f64().unwrap() > 0.0, "{j}");
    // The host's taking back of freed memory is counted where the kernel counts it.
    let reporting = std::path::Path::new("/sys/module/page_reporting/parameters/reported_kib");
    assert!(j
        .as_object()
        .unwrap()
        .contains_key("free_pages_reported_kib"));
    assert_eq!(
        j["free_pages_reported_kib"].is_u64(),
        reporting.exists(),
        "{j}"
    );
    for r in [
        "delta_over_floor",
        "delta_over_floor_plus_detect",
        "full_over_tuned",
        "restore_over_cold_read",
    ] {
        assert!(j["ratios"][r].as_f64().unwrap() > 0.0, "{r}: {j}");
    }
    assert_eq!(j["tracking"], "hash");
    // Hash mode against userfaultfd mode on the same pages, where the kernel allows it: 3
    // rounds (versions - 1), and their chains removed.
    match ckpt_engine::uffd_support() {
        Ok(()) => {
            assert_eq!(j["compare_rounds"], 3, "{j}");
            for k in ["compare_hash_delta_secs", "compare_uffd_delta_secs"] {
                assert!(j[k].as_f64().unwrap() > 0.0, "{k}: {j}");
            }
            let r = j["ratios"]["hash_over_uffd"].as_f64().unwrap();
            let want = j["compare_hash_delta_secs"].as_f64().unwrap()
                / j["compare_uffd_delta_secs"].as_f64().unwrap();
            assert!((r - want).abs() < 1e-9 * want, "{j}");
        }
        Err(_) => assert!(j["ratios"]["hash_over_uffd"].is_null(), "{j}"),
    }
    assert!(!d.join("compare-hash").exists() && !d.join("compare-uffd").exists());
    assert_eq!(j["state_bytes"], 8 << 20);
    // A 5 % delta stores about 5 % of the state, not all of it.
    let delta = j["delta_bytes"].as_f64().unwrap();
    assert!(
        delta < 0.1 * (8 << 20) as f64 && delta > 0.03 * (8 << 20) as f64,
        "{j}"
    );
    // The files are left in --dir.
    let (code, j, _) = ckpt(&["ls", d.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(j["versions"].as_array().unwrap().len(), 4);
    // A second run into the same directory refuses instead of mixing chains.
    let (code, j, _) = bench(&d, &["--state-mib", "1"]);
    assert_eq!(code, 2);
    assert!(
        j["error"].as_str().unwrap().contains("empty directory"),
        "{j}"
    );
}

/// More versions than the chain depth allows: the main chain writes full versions where
/// the limit says, and the tracking comparison still compares deltas only (it failed with
/// "the comparison's delta was found by hash" once a run had more than 17 versions).
#[test]
fn bench_runs_past_the_depth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("b");
    let (code, j, stderr) = bench(
        &d,
        &["--state-mib", "1", "--versions", "6", "--max-depth", "2"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(j["compare_rounds"], 5, "{j}");
    assert_eq!(j["verified"], true, "{j}");
}

/// `ckpt bench --async` reports the stopped times against blocking versions of the same
/// state, and every version (asynchronous ones included) restores exactly.
#[test]
fn bench_async_reports_blocked_times_and_verifies_every_version() {
    let dir = tempfile::tempdir().unwrap();
    for snapshot in ["fork", "auto"] {
        let d = dir.path().join(snapshot);
        let (code, j, stderr) = bench(
            &d,
            &[
                "--state-mib",
                "8",
                "--versions",
                "4",
                "--async",
                "--snapshot",
                snapshot,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(j["verified"], true, "{j}");
        assert_eq!(j["snapshot"], snapshot, "{j}");
        for k in [
            "blocked_secs",
            "full_blocked_secs",
            "blocking_full_secs",
            "blocking_delta_secs",
            "compute_pages_per_sec_idle",
            "compute_pages_per_sec_flushing",
        ] {
            assert!(j[k].as_f64().unwrap() > 0.0, "{k} in {j}");
        }
        assert!(j["peak_extra_rss_bytes"].as_u64().is_some(), "{j}");
        let used: u64 = j["snapshots_used"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(used, 4, "{j}");
        if snapshot == "fork" {
            assert_eq!(j["snapshots_used"]["fork"], 4, "{j}");
        }
        // The reference chain is gone; the bench chain holds the four versions.
        assert!(!d.join("blocking-reference").exists());
    }
    // --snapshot without --async is refused.
    let (code, _, _) = ckpt(&["bench", "--dir", "x", "--snapshot", "fork"]);
    assert_eq!(code, 2);
}

/// `--json` works anywhere on the line, errors are one JSON document, and the OS reason is
/// given once, not repeated by the cause chain.
#[test]
fn errors_name_the_path_and_give_the_os_reason_once() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let m = missing.to_str().unwrap();
    for args in [vec!["--json", "ls", m], vec!["ls", m, "--json"]] {
        let (code, j, stderr) = ckpt(&args);
        assert_eq!(code, 2, "{stderr}");
        let msg = j["error"].as_str().unwrap();
        assert!(msg.contains(m), "{msg}");
        assert_eq!(msg.matches("os error 2").count(), 1, "{msg}");
        assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    }
    // An unknown tracking mode is refused by the argument parser, naming the choices.
    let (code, _, stderr) = ckpt(&["bench", "--dir", m, "--tracking", "nope"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("auto") && stderr.contains("uffd"),
        "{stderr}"
    );
}

/// Hostile and careless inputs (issue 12): a version file renamed to another number, a
/// directory given to inspect, impossible bench sizes. Each is a clear error, never a panic
/// or the wrong version.
#[test]
fn renamed_versions_directories_and_impossible_sizes_are_refused() {
    let d = tempfile::tempdir().unwrap();
    make_store(d.path());
    let v3 = d.path().join("sim.ckpt.3");
    let v4 = d.path().join("sim.ckpt.4");
    std::fs::rename(&v3, &v4).unwrap();
    let ds = d.path().to_str().unwrap();
    let (code, j, _) = ckpt(&["verify", ds, "--json"]);
    assert_eq!(code, 1, "a renamed version must not verify: {j}");
    let bad = &j["files"].as_array().unwrap()[2];
    assert!(
        bad["error"].as_str().unwrap().contains("holds version 3"),
        "{bad}"
    );
    let out = d.path().join("out");
    let (code, _, stderr) = ckpt(&[
        "restore",
        ds,
        "--version",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "restore must refuse it: {stderr}");
    assert!(stderr.contains("sim.ckpt.4"), "{stderr}");
    std::fs::rename(&v4, &v3).unwrap();

    let (code, _, stderr) = ckpt(&["inspect", ds]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a regular file"), "{stderr}");

    let b = d.path().join("b");
    let b = b.to_str().unwrap();
    for args in [
        vec!["bench", "--dir", b, "--page-size", "0", "--state-mib", "1"],
        vec!["bench", "--dir", b, "--state-mib", "17592186044420"],
    ] {
        let (code, _, stderr) = ckpt(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `ckpt verify` on a job store with no commit record fails: there is nothing it could vouch
/// for.
#[test]
fn verify_of_a_job_store_without_commits_fails() {
    let d = tempfile::tempdir().unwrap();
    ckpt_engine::job::JobStore::new(d.path(), "heat")
        .unwrap()
        .write_meta(2)
        .unwrap();
    let (code, j, _) = ckpt(&["verify", d.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("no committed version"),
        "{j}"
    );
}

/// `ckpt ls DIR | head -1` (a reader that closes the pipe early) ends quietly, no panic.
#[test]
fn a_closed_pipe_is_not_a_panic() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    make_store(d.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .args(["verify", d.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is written
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(141), "{err}");
}

/// `ckpt report`: an SVG with the three pictures and an HTML page with a row per version, for
/// a chain and for a job store (one series per rank); clear errors otherwise.
#[test]
fn report_draws_a_chain_and_a_job_store() {
    let d = tempfile::tempdir().unwrap();
    let chain = d.path().join("chain");
    make_store(&chain);
    let svg = d.path().join("r.svg");
    let html = d.path().join("r.html");
    let (code, _, err) = ckpt(&[
        "report",
        chain.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg"), "{}", &s[..80]);
    for caption in ["Bytes per version", "The chain (sim)", "Compression ratio"] {
        assert!(s.contains(caption), "no {caption:?} in the SVG");
    }
    let h = std::fs::read_to_string(&html).unwrap();
    assert!(h.contains("<svg") && h.contains("</table>"));
    assert_eq!(
        h.matches("<tr><td>sim</td>").count(),
        3,
        "one row per version"
    );

    let job = d.path().join("job");
    ckpt_tests::job_store(&job, "heat", 2, 3);
    let (code, v, err) = ckpt(&[
        "report",
        job.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["job"], true);
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[1][0], "rank 1");
    assert_eq!(series[1][1].as_array().unwrap().len(), 3);
    // Version 2 is a delta: it stores some pages and references version 1 for the rest.
    let v2 = &series[0][1][1];
    assert!(v2["stored_bytes"].as_u64().unwrap() > 0);
    assert!(v2["referenced_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v2["references"], serde_json::json!([1]));
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains("rank 1: file"));

    let (code, v, _) = ckpt(&[
        "report",
        chain.to_str().unwrap(),
        "--json",
        "--svg",
        "/nonexistent/dir/x.svg",
    ]);
    assert_ne!(code, 0);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/dir/x.svg"));
    let (code, _, _) = ckpt(&["report", chain.to_str().unwrap()]);
    assert_ne!(code, 0);
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, v, _) = ckpt(&[
        "report",
        empty.to_str().unwrap(),
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        v["error"].as_str().unwrap().contains("no checkpoint files"),
        "{v}"
    );
}

/// `ckpt restore` on a job store restores a committed version of every rank, each checked
/// against its commit record; a version never committed is refused.
#[test]
fn restore_understands_job_stores() {
    let d = tempfile::tempdir().unwrap();
    let job = d.path().join("job");
    ckpt_tests::job_store(&job, "heat", 2, 3);
    let out = d.path().join("out");
    let (code, v, err) = ckpt(&[
        "restore",
        job.to_str().unwrap(),
        "--version",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["version"], 2);
    for rank in 0..2u64 {
        let bytes = std::fs::read(out.join(format!("rank-{rank}/region-1.bin"))).unwrap();
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // Version 2 wrote rank * 1000 + 2 into the pages with index 2 mod 4.
        assert_eq!(words[2 * 512], rank * 1000 + 2);
        assert_eq!(words[512], rank * 1000 + 1);
    }
    let (code, v, _) = ckpt(&[
        "restore",
        job.to_str().unwrap(),
        "--version",
        "9",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_ne!(code, 0);
    assert!(
        v["error"].as_str().unwrap().contains("never committed"),
        "{v}"
    );
}
