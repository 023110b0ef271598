//! Helper program for integration tests: a process that restores, mutates and checkpoints,
//! printing one line per event so that a parent test can follow (and kill) it.
//!
//! ```text
//! ckpt-testapp DIR NAME MIB SEED STEPS [restore=V|restore=latest] [writes=N] [ready] [keep=K]
//!              [async=auto|copy|fork]
//! ckpt-testapp compact DIR NAME KEEP
//! ```
//! With `keep=K`, the engine compacts in the background after each checkpoint (retention).
//! `compact` runs one compaction keeping K versions and prints `compacted`.
//! Prints `restored V HASH`, then for each step `committed V HASH`. With `ready`, prints
//! `ready` before each checkpoint and flushes, so that a parent can time a kill. With
//! `async=M`, checkpoints are asynchronous (snapshot mechanism M): each prints
//! `started V HASH` once its snapshot is taken, and `committed V - PAGES` once collected.

use std::io::Write;

use ckpt_engine::Checkpointer;
use ckpt_tests::{config, mutate, register, state_hash};

fn main() {
    if let Err(e) = run() {
        eprintln!("testapp: {e}");
        std::process::exit(1);
    }
}

/// `ckpt-testapp pvw PID ADDR LEN`: writes LEN bytes of 0x5A at ADDR in process PID with
/// process_vm_writev, as an MPI shared-memory transport would.
fn pvw(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let pid: i32 = args[2].parse()?;
    let addr: usize = args[3].parse()?;
    let len: usize = args[4].parse()?;
    let buf = vec![0x5Au8; len];
    let local = [std::io::IoSlice::new(&buf)];
    let remote = [nix::sys::uio::RemoteIoVec { base: addr, len }];
    let n = nix::sys::uio::process_vm_writev(nix::unistd::Pid::from_raw(pid), &local, &remote)?;
    if n != len {
        return Err(format!("short write {n}").into());
    }
    Ok(())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pvw") && args.len() == 5 {
        return pvw(&args);
    }
    if args.get(1).map(String::as_str) == Some("compact") && args.len() == 5 {
        let store = ckpt_engine::Store::new(&args[2], &args[3])?;
        let opts = ckpt_engine::compact::CompactOptions {
            keep: args[4].parse()?,
            ..Default::default()
        };
        ckpt_engine::compact::compact(&store, &opts, &mut |_, _| {})?;
        println!("compacted");
        return Ok(());
    }
    if args.len() < 6 {
        return Err(
            "usage: ckpt-testapp DIR NAME MIB SEED STEPS [restore=V] [writes=N] [ready]".into(),
        );
    }
    let (dir, name) = (&args[1], &args[2]);
    let mib: usize = args[3].parse()?;
    let seed: u64 = args[4].parse()?;
    let steps: u64 = args[5].parse()?;
    let mut restore = None;
    let mut writes = 20usize;
    let mut ready = false;
    let mut keep = None;
    let mut snapshot: Option<ckpt_engine::Snapshot> = None;
    for a in &args[6..] {
        if let Some(v) = a.strip_prefix("restore=") {
            restore = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix("writes=") {
            writes = v.parse()?;
        } else if a == "ready" {
            ready = true;
        } else if let Some(k) = a.strip_prefix("keep=") {
            keep = Some(k.parse()?);
        } else if let Some(m) = a.strip_prefix("async=") {
            snapshot = Some(m.parse()?);
        }
    }
    let mut c = config(4096, 16);
    if let Some(k) = keep {
        c = c.with_retention(k);
    }
    if let Some(m) = snapshot {
        c = c.with_snapshot(m);
    }
    let mut ck = Checkpointer::open(dir, name, c)?;
    register(&mut ck, mib)?;
    let out = std::io::stdout();
    if let Some(r) = restore {
        let v = if r == "latest" {
            ck.latest_version()?
        } else {
            Some(r.parse()?)
        };
        if let Some(v) = v {
            ck.restore(Some(v))?;
            writeln!(out.lock(), "restored {v} {}", state_hash(&ck))?;
        }
    }
    let mut in_flight: Option<ckpt_engine::AsyncCheckpoint> = None;
    let done = |h: ckpt_engine::AsyncCheckpoint| -> Result<(), Box<dyn std::error::Error>> {
        let s = h.wait()?;
        writeln!(out.lock(), "committed {} - {}", s.version, s.pages_stored)?;
        out.lock().flush()?;
        Ok(())
    };
    for step in 0..steps {
        mutate(&mut ck, mib, seed, step, writes);
        if ready {
            writeln!(out.lock(), "ready")?;
            out.lock().flush()?;
        }
        if snapshot.is_some() {
            // The state at the call is the version's; the flush runs while the next step
            // mutates, and the next call (or the end) collects it.
            let hash = state_hash(&ck);
            // Announced first: a kill between the call's return and the `started` line may
            // still leave the version committed (its flush can be that quick).
            writeln!(out.lock(), "starting {hash}")?;
            out.lock().flush()?;
            let h = ck.checkpoint_async()?;
            writeln!(out.lock(), "started {} {hash}", h.version())?;
            out.lock().flush()?;
            if let Some(p) = in_flight.replace(h) {
                done(p)?;
            }
            continue;
        }
        let s = ck.checkpoint()?;
        writeln!(
            out.lock(),
            "committed {} {} {}",
            s.version,
            state_hash(&ck),
            s.pages_stored
        )?;
        out.lock().flush()?;
    }
    if let Some(p) = in_flight.take() {
        done(p)?;
    }
    Ok(())
}
