//! The C, Fortran and VeloC APIs from real programs: `tests/c/*.c` and `*.f90`, compiled
//! with `mpicc` / `mpifort` against the library cargo just built (`libckpt.so`, and
//! `libckpt.a` for the static-link test) and run under `mpirun -np 2`: uninterrupted, crashed
//! and restarted, each giving the uninterrupted result. Also: every VeloC function with bad
//! arguments, the headers under `-Wall -Wextra -Werror -pedantic` as C99 and C++17, and the
//! headers checked against the exported functions so that they cannot drift.
//!
//! `scripts/deps.sh` installs the compilers (build-essential, gfortran, libopenmpi-dev,
//! openmpi-bin); without them these tests fail rather than pass vacuously.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn include() -> PathBuf {
    root().join("mpi-shim/include")
}

fn sources() -> PathBuf {
    root().join("tests/c")
}

/// `target/<profile>`, where cargo put libckpt.so and libckpt.a.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf(); // …/deps/..
    assert!(
        dir.join("libckpt.so").exists() && dir.join("libckpt.a").exists(),
        "libckpt.so and libckpt.a not found in {}",
        dir.display()
    );
    dir
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// MPI's include directories as `-isystem` flags: warnings in mpi.h itself (OpenMPI's C++
/// bindings have some) are not ours to fail on; ours are checked with -Werror.
fn mpi_isystem(wrapper: &str) -> Vec<String> {
    let out = run_ok(Command::new(wrapper).arg("--showme:incdirs"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .flat_map(|d| ["-isystem".to_string(), d.to_string()])
        .collect()
}

/// Compiles a C program against the shared library (or, with `static_lib`, libckpt.a).
fn build_c(src: &str, out_dir: &Path, static_lib: bool) -> PathBuf {
    build_c_with(src, out_dir, static_lib, "-O1")
}

/// [`build_c`] with optimisation flag `opt`, and debugging information.
fn build_c_with(src: &str, out_dir: &Path, static_lib: bool, opt: &str) -> PathBuf {
    let exe = out_dir.join(src.trim_end_matches(".c"));
    let lib = lib_dir();
    let mut cmd = Command::new("mpicc");
    cmd.args([
        "-std=c99",
        "-g",
        opt,
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
    ])
    .args(mpi_isystem("mpicc"))
    .arg("-I")
    .arg(include())
    .arg(sources().join(src))
    .arg("-o")
    .arg(&exe);
    if static_lib {
        // A Rust staticlib needs these system libraries (rustc --print native-static-libs).
        cmd.arg(lib.join("libckpt.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    } else {
        cmd.arg(format!("-L{}", lib.display()))
            .arg("-lckpt")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    run_ok(&mut cmd);
    exe
}

/// Runs `mpirun -np 2 exe args…`, killed after two minutes (no test may hang).
fn mpirun(exe: &Path, args: &[&str]) -> Output {
    mpirun_env(exe, args, &[])
}

/// [`mpirun`] with extra environment variables for every rank.
fn mpirun_env(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", "2"]);
    for (k, v) in env {
        cmd.args(["-x", k]).env(k, v);
    }
    cmd.arg(exe)
        .args(args)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("CKPT_LOG", "warn") // the default level, whatever the caller's environment says
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // OpenMPI refuses root unless told (CI containers run as root).
    if nix::unistd::geteuid().is_root() {
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    let mut child = cmd
        .spawn()
        .expect("mpirun (scripts/deps.sh installs openmpi-bin)");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{} {args:?} hung for 120 s:\n{}\n{}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs to completion and returns stdout, failing on a non-zero exit.
fn mpirun_ok(exe: &Path, args: &[&str]) -> String {
    mpirun_env_ok(exe, args, &[])
}

/// [`mpirun_ok`] with extra environment variables for every rank.
fn mpirun_env_ok(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = mpirun_env(exe, args, env);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}\n{}",
        exe.display(),
        stdout_of(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_of(&out)
}

fn checksum(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("checksum "))
        .unwrap_or_else(|| panic!("no checksum in {stdout:?}"))
        .trim()
        .to_string()
}

/// The uninterrupted result, then a run killed after the checkpoint of iteration `crash_at`
/// and its restart: the same result, restarted from `expect_restart`.
fn crash_and_restart(exe: &Path, dir_arg: &dyn Fn(&str) -> String, expect_restart: &str) {
    let clean = mpirun_ok(exe, &[&dir_arg("clean"), "100", "10", "0"]);
    assert!(clean.contains("fresh start"), "{clean}");
    let crashed = mpirun(exe, &[&dir_arg("crash"), "100", "10", "60"]);
    assert!(!crashed.status.success(), "the crash run did not crash");
    assert!(
        !stdout_of(&crashed).contains("checksum"),
        "the crash run finished: {}",
        stdout_of(&crashed)
    );
    let restarted = mpirun_ok(exe, &[&dir_arg("crash"), "100", "10", "0"]);
    assert!(restarted.contains(expect_restart), "{restarted}");
    assert_eq!(checksum(&restarted), checksum(&clean), "{restarted}");
}

/// (a) The native C API, linked statically against libckpt.a.
#[test]
fn native_heat_crash_restart_static() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("heat_native.c", t.path(), true);
    let base = t.path().to_path_buf();
    crash_and_restart(
        &exe,
        &|n| base.join(n).display().to_string(),
        "restarted from version 6 at iteration 60",
    );
}

/// (a') The native C API's asynchronous checkpoints: the same result; a rank dying right
/// after starting version 6 leaves it uncommitted (it commits at the next checkpoint), so the
/// restart is from version 5; the final `ckpt_wait` commits the last version.
#[test]
fn native_heat_async_crash_restart() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("heat_native.c", t.path(), false);
    let dir = |n: &str| t.path().join(n).display().to_string();
    let sync = mpirun_ok(&exe, &[&dir("sync"), "100", "10", "0"]);
    let clean = mpirun_ok(&exe, &[&dir("clean"), "100", "10", "0", "async"]);
    assert_eq!(checksum(&clean), checksum(&sync), "{clean}");
    assert!(clean.contains("committed 10"), "{clean}");
    let crashed = mpirun(&exe, &[&dir("crash"), "100", "10", "60", "async"]);
    assert!(!crashed.status.success(), "the crash run did not crash");
    let restarted = mpirun_ok(&exe, &[&dir("crash"), "100", "10", "0", "async"]);
    assert!(
        restarted.contains("restarted from version 5 at iteration 50"),
        "{restarted}"
    );
    assert_eq!(checksum(&restarted), checksum(&sync), "{restarted}");
}

/// (a'') The native C API with storage levels from a `[storage]` table (the file named by
/// `CKPT_CONFIG`, since the program passes no configuration file), on 2 simulated nodes with
/// partner copies: a crash, then node 1's cache deleted; the restart rebuilds rank 1's chain
/// from its partner's copy and gives the uninterrupted result. Then both caches deleted: the
/// restart comes from persistent storage.
#[test]
fn native_heat_storage_levels_from_a_config_file() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("heat_native.c", t.path(), false);
    let root = t.path().display().to_string();
    let cfg = t.path().join("levels.toml");
    std::fs::write(
        &cfg,
        format!(
            "tracking = \"auto\"\n[storage]\nlocal = \"{root}/cache{{node}}\"\n\
             persistent = \"{root}/pfs\"\npartner = true\n"
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let env = [("CKPT_CONFIG", cfg.as_str()), ("CKPT_SIMULATE_NODES", "2")];
    let clean = mpirun_ok(&exe, &[&format!("{root}/clean"), "100", "10", "0"]);
    let unused = format!("{root}/unused");
    let crashed = mpirun_env(&exe, &[&unused, "100", "10", "60"], &env);
    assert!(!crashed.status.success(), "the crash run did not crash");
    assert!(
        stdout_of(&crashed).contains("fresh start"),
        "{}\n{}",
        stdout_of(&crashed),
        String::from_utf8_lossy(&crashed.stderr)
    );
    std::fs::remove_dir_all(t.path().join("cache1")).unwrap();
    let restarted = mpirun_env_ok(&exe, &[&unused, "100", "10", "0"], &env);
    assert!(
        restarted.contains("restarted from version 6 at iteration 60"),
        "{restarted}"
    );
    assert_eq!(checksum(&restarted), checksum(&clean), "{restarted}");
    assert!(
        !t.path().join("unused").exists(),
        "dir is not used with [storage]"
    );
    // Both caches lost: persistent storage has every version (mode sync, interval 1).
    std::fs::remove_dir_all(t.path().join("cache0")).unwrap();
    std::fs::remove_dir_all(t.path().join("cache1")).unwrap();
    let out = mpirun_env_ok(&exe, &[&unused, "100", "10", "0"], &env);
    assert!(
        out.contains("restarted from version 10 at iteration 100"),
        "{out}"
    );
}

fn veloc_cfg(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "scratch = {}\npersistent = {}\nmode = sync\n{extra}",
            dir.join(name).join("scratch").display(),
            dir.join(name).join("persistent").display()
        ),
    )
    .unwrap();
    cfg
}

/// (b) A heat program on the VeloC API: crash and restart; then one version's `.dat` files
/// deleted by name from scratch and persistent, so the restart takes the version before;
/// then scratch deleted altogether, so the restart reads persistent storage.
#[test]
fn veloc_heat_crash_restart_and_deleted_version() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("heat_veloc.c", t.path(), false);
    let base = t.path().to_path_buf();
    crash_and_restart(
        &exe,
        &|n| veloc_cfg(&base, n, "").display().to_string(),
        "restarted from 60",
    );
    let clean = checksum(&mpirun_ok(
        &exe,
        &[
            &veloc_cfg(&base, "clean", "").display().to_string(),
            "100",
            "10",
            "0",
        ],
    ));

    // Crash after version 60 again, then delete version 60 the way an operator would.
    let cfg = veloc_cfg(&base, "deleted", "").display().to_string();
    let crashed = mpirun(&exe, &[&cfg, "100", "10", "60"]);
    assert!(!crashed.status.success());
    let mut removed = 0;
    for level in ["scratch", "persistent"] {
        for rank in 0..2 {
            let f = base.join(format!("deleted/{level}/heat-{rank}-60.dat"));
            std::fs::remove_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            removed += 1;
        }
        assert!(base.join(format!("deleted/{level}/heat-0-50.dat")).exists());
    }
    assert_eq!(removed, 4);
    let out = mpirun_ok(&exe, &[&cfg, "100", "10", "0"]);
    assert!(out.contains("restarted from 50"), "{out}");
    assert_eq!(checksum(&out), clean);

    // Only rank 1's copy of version 100 goes (both levels): 100 is not complete on every
    // rank, so the restart takes 90, not the maximum over ranks.
    for level in ["scratch", "persistent"] {
        std::fs::remove_file(base.join(format!("deleted/{level}/heat-1-100.dat"))).unwrap();
    }
    let out = mpirun_ok(&exe, &[&cfg, "100", "10", "0"]);
    assert!(out.contains("restarted from 90"), "{out}");
    assert_eq!(checksum(&out), clean);

    // The node-local scratch is wiped: restart from persistent storage.
    std::fs::remove_dir_all(base.join("deleted/scratch")).unwrap();
    let out = mpirun_ok(&exe, &[&cfg, "110", "10", "0"]);
    assert!(out.contains("restarted from 100"), "{out}");
    assert!(base.join("deleted/scratch/heat-0-110.dat").exists());
}

/// The VeloC program in `mode = async` with the split begin/mem/end calls (as VeloC's own
/// examples use them): crashed and restarted, and restarted once more from persistent
/// storage alone after scratch is wiped.
#[test]
fn veloc_heat_async_split_calls() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("heat_veloc.c", t.path(), false);
    let base = t.path().to_path_buf();
    let cfg = |n: &str| {
        let c = veloc_cfg(&base, n, "");
        let text = std::fs::read_to_string(&c)
            .unwrap()
            .replace("mode = sync", "mode = async");
        std::fs::write(&c, text + "max_versions = 3\nscratch_versions = 2\n").unwrap();
        c.display().to_string()
    };
    let clean = mpirun_ok(&exe, &[&cfg("clean"), "100", "10", "0", "split"]);
    let crashed = mpirun(&exe, &[&cfg("crash"), "100", "10", "60", "split"]);
    assert!(!crashed.status.success());
    let out = mpirun_ok(&exe, &[&cfg("crash"), "100", "10", "0", "split"]);
    assert!(out.contains("restarted from 60"), "{out}");
    assert_eq!(checksum(&out), checksum(&clean));
    // Retention: the newest 2 in scratch, 3 in persistent storage, for each rank.
    let count = |level: &str| {
        std::fs::read_dir(base.join("crash").join(level))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".dat")
            })
            .count()
    };
    assert_eq!((count("scratch"), count("persistent")), (4, 6));
    std::fs::remove_dir_all(base.join("crash/scratch")).unwrap();
    let out = mpirun_ok(&exe, &[&cfg("crash"), "110", "10", "0", "split"]);
    assert!(out.contains("restarted from 100"), "{out}");
}

/// `nonblocking = true` (ckpt's extension of `mode = async`): VELOC_Checkpoint returns once
/// the snapshot is taken; the result is the same, and a rank dying right after a checkpoint
/// restarts from that checkpoint or the one before (whichever is complete on every rank).
#[test]
fn veloc_heat_nonblocking() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("heat_veloc.c", t.path(), false);
    let base = t.path().to_path_buf();
    let cfg = |n: &str, extra: &str| {
        let c = veloc_cfg(&base, n, extra);
        let text = std::fs::read_to_string(&c)
            .unwrap()
            .replace("mode = sync", "mode = async");
        std::fs::write(&c, text).unwrap();
        c.display().to_string()
    };
    let sync = mpirun_ok(&exe, &[&cfg("sync", ""), "100", "10", "0"]);
    for split in [false, true] {
        let name = format!("nb{split}");
        let mut args = vec![
            cfg(&name, "nonblocking = true\n"),
            "100".into(),
            "10".into(),
        ];
        args.push("0".into());
        if split {
            args.push("split".into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let clean = mpirun_ok(&exe, &a);
        assert_eq!(checksum(&clean), checksum(&sync), "{clean}");
        let crash = format!("{name}-crash");
        let c = cfg(&crash, "nonblocking = true\n");
        let mut crashed = vec![c.as_str(), "100", "10", "60"];
        let mut again = vec![c.as_str(), "100", "10", "0"];
        if split {
            crashed.push("split");
            again.push("split");
        }
        assert!(!mpirun(&exe, &crashed).status.success());
        let out = mpirun_ok(&exe, &again);
        assert!(
            out.contains("restarted from 60") || out.contains("restarted from 50"),
            "{out}"
        );
        assert_eq!(checksum(&out), checksum(&sync), "{out}");
    }
}

/// Every VeloC function with bad arguments, out of order and before init: each returns
/// VELOC_FAILURE with a message, and nothing crashes or hangs (under mpirun -np 2).
#[test]
fn veloc_bad_arguments_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let exe = build_c("veloc_bad_args.c", t.path(), false);
    let cfg = veloc_cfg(t.path(), "bad", "meta = /unused\n");
    let out = mpirun(&exe, &[&cfg.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", stdout_of(&out));
    assert!(
        stdout_of(&out).contains(", 0 failed"),
        "{}",
        stdout_of(&out)
    );
    for msg in [
        "VeloC is not initialized",
        "cfg_file is a null pointer",
        "/nonexistent/veloc.cfg",
        "region id -1 is negative",
        "name is a null pointer",
        "version -1 is negative",
        "called without VELOC_Checkpoint_begin",
        "unknown mode 7",
        "region 77 is not protected",
        "already committed on every rank",
        "version 9 of \"x\" is not available",
        "unknown key \"meta\"",
    ] {
        assert!(stderr.contains(msg), "no {msg:?} in stderr:\n{stderr}");
    }
}

/// (c) The Fortran module: a heat program crashed and restarted.
#[test]
fn fortran_heat_crash_restart() {
    let t = tempfile::tempdir().unwrap();
    let lib = lib_dir();
    run_ok(
        Command::new("mpifort")
            .current_dir(t.path())
            .args(["-Wall", "-c"])
            .arg(include().join("ckpt.f90")),
    );
    let exe = t.path().join("heat_fortran");
    run_ok(
        Command::new("mpifort")
            .current_dir(t.path())
            .arg("-Wall")
            .arg(sources().join("heat_fortran.f90"))
            .arg("ckpt.o")
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", lib.display()))
            .arg("-lckpt")
            .arg(format!("-Wl,-rpath,{}", lib.display())),
    );
    let base = t.path().to_path_buf();
    crash_and_restart(
        &exe,
        &|n| base.join(n).display().to_string(),
        "restarted from version 6 at iteration 60",
    );
}

/// Both headers, under every include form the issue names, as C99 and C++17 with
/// `-Wall -Wextra -Werror -pedantic`.
#[test]
fn headers_compile_cleanly_as_c99_and_cxx17() {
    let t = tempfile::tempdir().unwrap();
    let cpp = t.path().join("headers.cpp");
    std::fs::copy(sources().join("headers.c"), &cpp).unwrap();
    for (wrapper, std, src) in [
        ("mpicc", "-std=c99", sources().join("headers.c")),
        ("mpicxx", "-std=c++17", cpp),
    ] {
        run_ok(
            Command::new(wrapper)
                .args([
                    std,
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                    "-fsyntax-only",
                ])
                .args(mpi_isystem(wrapper))
                .arg("-I")
                .arg(include())
                .arg("-I")
                .arg(root().join("mpi-shim"))
                .arg(&src),
        );
    }
}

/// Exported functions, from the Rust sources: name and parameter count.
fn exported() -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for f in ["native.rs", "veloc_api.rs"] {
        let src = std::fs::read_to_string(root().join("mpi-shim/src/c").join(f)).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find("#[no_mangle]") {
            rest = &rest[i..];
            let fn_at = rest.find("extern \"C\" fn ").unwrap() + "extern \"C\" fn ".len();
            let open = rest[fn_at..].find('(').unwrap() + fn_at;
            let close = rest[open..].find(')').unwrap() + open;
            let name = rest[fn_at..open].trim().to_string();
            let params = rest[open + 1..close]
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .count();
            out.push((name, params));
            rest = &rest[close..];
        }
    }
    out.sort();
    out
}

/// Declared functions, from a header: name and parameter count.
fn declared(header: &str) -> Vec<(String, usize)> {
    let src = std::fs::read_to_string(include().join(header)).unwrap();
    let mut out = Vec::new();
    for line in src.lines() {
        let line = line.trim();
        let Some(rest) = line
            .strip_prefix("int ")
            .or_else(|| line.strip_prefix("const char *"))
        else {
            continue;
        };
        let Some(open) = rest.find('(') else { continue };
        let close = rest.rfind(')').unwrap();
        let params = &rest[open + 1..close];
        let n = if params.trim() == "void" {
            0
        } else {
            params.split(',').count()
        };
        out.push((rest[..open].trim().to_string(), n));
    }
    out
}

/// The headers declare exactly the exported functions, with the same arity, and the same
/// error codes: they cannot drift from the code.
#[test]
fn headers_match_the_exported_functions() {
    let mut d = declared("ckpt.h");
    d.extend(declared("veloc.h"));
    d.sort();
    assert_eq!(d, exported());
    let h = std::fs::read_to_string(include().join("ckpt.h")).unwrap();
    for (name, value) in [
        ("CKPT_SUCCESS", ckpt::c::CKPT_SUCCESS),
        ("CKPT_ERR_ARG", ckpt::c::CKPT_ERR_ARG),
        ("CKPT_ERR_STATE", ckpt::c::CKPT_ERR_STATE),
        ("CKPT_ERR_IO", ckpt::c::CKPT_ERR_IO),
        ("CKPT_ERR_CORRUPT", ckpt::c::CKPT_ERR_CORRUPT),
        ("CKPT_ERR_NOT_FOUND", ckpt::c::CKPT_ERR_NOT_FOUND),
        ("CKPT_ERR_REGION", ckpt::c::CKPT_ERR_REGION),
        ("CKPT_ERR_RANKS", ckpt::c::CKPT_ERR_RANKS),
        ("CKPT_ERR_CONFIG", ckpt::c::CKPT_ERR_CONFIG),
        ("CKPT_ERR_INTERNAL", ckpt::c::CKPT_ERR_INTERNAL),
    ] {
        let want = if value == 0 {
            format!("#define {name} 0")
        } else {
            format!("#define {name} ({value})")
        };
        assert!(h.contains(&want), "ckpt.h lacks {want:?}");
    }
    let f = std::fs::read_to_string(include().join("ckpt.f90")).unwrap();
    assert!(
        f.contains("CKPT_ERR_INTERNAL = -9"),
        "ckpt.f90's codes drifted"
    );
    let defs = std::fs::read_to_string(include().join("veloc/defs.h")).unwrap();
    assert!(
        defs.contains("#define VELOC_SUCCESS (0)") && defs.contains("#define VELOC_FAILURE (-1)")
    );
    assert_eq!(ckpt::c::veloc_api::VELOC_FAILURE, -1);
}

/// The C example builds with the one-line pkg-config command (ckpt.pc, pointed at this
/// build's library) and resumes from its checkpoint on a second run.
#[test]
fn c_example_builds_with_pkg_config_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let lib = lib_dir();
    let flags = run_ok(
        Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", root().join("mpi-shim"))
            .arg(format!("--define-variable=libdir={}", lib.display()))
            .args(["--cflags", "--libs", "ckpt"]),
    );
    let flags = String::from_utf8_lossy(&flags.stdout).to_string();
    assert!(
        flags.contains("-lckpt") && flags.contains("include"),
        "{flags}"
    );
    let exe = t.path().join("counter");
    run_ok(
        Command::new("mpicc")
            .arg(root().join("examples/c/counter.c"))
            .args(flags.split_whitespace())
            .arg("-o")
            .arg(&exe),
    );
    let dir = t.path().join("job").display().to_string();
    let first = mpirun_ok(&exe, &[&dir, "3"]);
    assert!(
        first.contains("counter 3 (checkpoint version 3)"),
        "{first}"
    );
    let second = mpirun_ok(&exe, &[&dir, "2"]);
    assert!(
        second.contains("counter 5 (checkpoint version 5)"),
        "{second}"
    );
    let pc = std::fs::read_to_string(root().join("mpi-shim/ckpt.pc")).unwrap();
    assert!(
        pc.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "ckpt.pc's Version differs from the crate's"
    );
}

/// `ckpt debug --batch`: the program restarts from the version asked for (not the newest),
/// gdb stops at `ckpt_restored` right after the restore, and the restored state is visible
/// (the C heat program's iteration counter, printed from its own frame).
#[test]
fn ckpt_debug_stops_after_the_restore_with_the_state_visible() {
    let ckpt = lib_dir().join("ckpt");
    assert!(
        ckpt.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        ckpt.display()
    );
    let t = tempfile::tempdir().unwrap();
    let exe = build_c_with("heat_native.c", t.path(), false, "-O0");
    let dir = t.path().join("store").display().to_string();
    // One process (an MPI singleton), as it will run under gdb: versions 1..5.
    run_ok(
        Command::new(&exe)
            .args([&dir, "50", "10", "0"])
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
    );
    let out = Command::new(&ckpt)
        .args(["debug", &dir, "--version", "3", "--batch"])
        .arg("frame function main; print iter; print v")
        .arg("--")
        .arg(&exe)
        .args([&dir, "50", "10", "0"])
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("ckpt debug (scripts/deps.sh installs gdb)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("Breakpoint 1"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("$1 = 30"),
        "iter after restoring version 3:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("$2 = 3"), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("checksum"),
        "the program ran on past the breakpoint"
    );
    // A version that does not exist: a clear error before gdb starts.
    let out = Command::new(&ckpt)
        .args(["debug", &dir, "--version", "9", "--batch", "bt", "--"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("no committed version 9"), "{text}");
}
