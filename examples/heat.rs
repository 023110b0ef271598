//! `heat`: a 2-D Jacobi heat equation, domain-decomposed by rows over MPI ranks with halo
//! exchange, whose grid lives in engine-allocated regions and is checkpointed with ckpt-mpi.
//!
//! ```text
//! heat (--store DIR | --config FILE) --n N --iters I --ckpt-every K [--crash-at ITER]
//!      [--tracking auto|hash|uffd] [--async [--snapshot auto|copy|fork]] [--stats]
//! ```
//! `--config FILE` takes the storage levels from the TOML file's `[storage]` table
//! (node-local cache, partner copies, persistent storage; see `ckpt::storage`). After a
//! restart rank 0 also prints `restart-level local|partner|persistent`, and after each
//! checkpoint `flush-status in-flight <v|none> persisted <v>`.
//! With `--async` the iterations go on while each version is written; rank 0 prints
//! `committed <version>` when a version commits (at the next checkpoint, or at the end).
//! If DIR holds a committed version, the run restarts from it (`restarted-from <version>`).
//! It ends with `checksum <hex>` of the final global grid, printed by rank 0: a crashed run
//! followed by a rerun prints exactly the checksum of an uninterrupted run. It runs under
//! `mpirun` or alone (MPI singleton).

use std::time::Instant;

use ckpt::Job;
use ckpt_engine::{Config, Tracking};
use clap::Parser;
use mpi::collective::CommunicatorCollectives;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::Communicator;

#[derive(Parser)]
#[command(
    name = "heat",
    about = "2-D Jacobi heat equation with coordinated ckpt checkpoints",
    args_override_self = true
)]
struct Args {
    /// Job store directory (one storage level).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    store: Option<String>,
    /// TOML file whose `[storage]` table gives the storage levels.
    #[arg(long)]
    config: Option<String>,
    /// Global grid is N x N.
    #[arg(long, default_value_t = 256)]
    n: usize,
    /// Iterations to run in total.
    #[arg(long, default_value_t = 100)]
    iters: u64,
    /// Checkpoint every K iterations (0: never).
    #[arg(long, default_value_t = 10)]
    ckpt_every: u64,
    /// One rank (the last) aborts at the start of this iteration, like a node failure.
    #[arg(long)]
    crash_at: Option<u64>,
    /// Dirty tracking: auto, hash or uffd.
    #[arg(long, default_value = "auto")]
    tracking: String,
    /// Test hook: RANK:VERSION makes that rank's part of that checkpoint fail.
    #[arg(long, hide = true)]
    inject_fail: Option<String>,
    /// Test hook: RANK:VERSION kills that rank with SIGKILL while it writes that version.
    #[arg(long, hide = true)]
    kill_in_write: Option<String>,
    /// Test hook: RANK:N kills that rank with SIGKILL after its flushes to persistent
    /// storage copied N files.
    #[arg(long, hide = true)]
    kill_in_flush: Option<String>,
    /// Keep only the K newest versions of each rank's chain (per-rank automatic compaction,
    /// which a job refuses: use `ckpt-compact` on the job store).
    #[arg(long)]
    keep: Option<usize>,
    /// Checkpoint at once when any rank gets SIGUSR1 (or SIGTERM): Slurm's
    /// `--signal=B:USR1@N` before the time limit.
    #[arg(long)]
    signal_checkpoint: bool,
    /// With --signal-checkpoint: stop after the signal's checkpoint.
    #[arg(long)]
    exit_on_signal: bool,
    /// Print timing statistics as JSON (rank 0).
    #[arg(long)]
    stats: bool,
    /// Asynchronous checkpoints (`Job::checkpoint_async`): the iterations go on while each
    /// version is written; a version commits at the next checkpoint or at the end.
    #[arg(long = "async")]
    asynchronous: bool,
    /// zstd level for stored pages (0: stored raw, as dense floating-point fields mostly are).
    #[arg(long)]
    compression: Option<i32>,
    /// With --async: the snapshot mechanism (auto, copy or fork).
    #[arg(long, default_value = "auto")]
    snapshot: String,
}

/// What `--stats` prints (rank 0), as one JSON object after `stats `.
#[derive(serde::Serialize)]
struct Stats {
    ranks: usize,
    n: usize,
    iters_run: u64,
    checkpoints: u32,
    wall_secs: f64,
    ckpt_ms_mean: f64,
    coord_ms_mean: f64,
    tracking: &'static str,
    asynchronous: bool,
    /// Mean seconds per checkpoint of this rank's partner copies, in ms.
    partner_ms_mean: f64,
    /// Mean compute time of an iteration while a flush to persistent storage was in flight
    /// on rank 0, and while none was, in ms.
    iter_ms_flushing: f64,
    iter_ms_idle: f64,
    /// Iterations counted in each.
    iters_flushing: u64,
    iters_idle: u64,
}

fn rank_version(s: &Option<String>) -> Option<(u32, u64)> {
    let (r, v) = s.as_deref()?.split_once(':')?;
    Some((r.parse().ok()?, v.parse().ok()?))
}

fn main() {
    let args = Args::parse();
    // The library reports through `tracing` (fallbacks at restart, audit findings): show it.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let Some(universe) = mpi::initialize() else {
        eprintln!("heat: MPI could not be initialised");
        std::process::exit(2);
    };
    let world = universe.world();
    if let Err(e) = run(&args, &world) {
        eprintln!("heat (rank {}): error: {e}", world.rank());
        world.abort(2);
    }
}

fn run<C: Communicator>(a: &Args, world: &C) -> Result<(), Box<dyn std::error::Error>> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let n = a.n;
    if n < 3 || n < size {
        return Err(format!("--n {n} is too small for {size} ranks").into());
    }
    let r0 = rank * n / size;
    let r1 = (rank + 1) * n / size;
    let rows = r1 - r0;
    let tracking: Tracking = a.tracking.parse()?;
    let mut config = Config::default()
        .with_tracking(tracking)
        .with_snapshot(a.snapshot.parse()?);
    if let Some(k) = a.keep {
        config = config.with_retention(k);
    }
    if let Some(level) = a.compression {
        config.compression_level = level;
    }
    if a.signal_checkpoint {
        ckpt_engine::signals::install(&[
            ckpt_engine::signals::SIGUSR1,
            ckpt_engine::signals::SIGTERM,
        ])?;
    }
    let mut job = match (&a.store, &a.config) {
        (_, Some(file)) => {
            let storage = ckpt::StorageConfig::load(std::path::Path::new(file))?;
            Job::open_storage(world, &storage, "heat", config)?
        }
        (Some(dir), None) => Job::open(world, dir, "heat", config)?,
        (None, None) => return Err("give --store DIR or --config FILE".into()),
    };
    if let Some((r, n)) = rank_version(&a.kill_in_flush) {
        if r as usize == rank {
            ckpt_engine::fault::arm_kill(&format!("copy-chain#{n}"));
        }
    }
    if let Some((r, v)) = rank_version(&a.inject_fail) {
        if r as usize == rank {
            job.inject_failure(v);
        }
    }
    // Region 1: local rows plus one halo row above and below. Region 2: [iteration].
    let (grid, state) = {
        let ck = job.checkpointer();
        (
            ck.alloc_region::<f64>(1, (rows + 2) * n)?,
            ck.alloc_region::<u64>(2, 1)?,
        )
    };
    {
        let g = job.checkpointer().region_mut(&grid)?;
        if r0 == 0 {
            // Hot top edge (global row 0 is local row 1).
            g[n..2 * n].iter_mut().for_each(|x| *x = 100.0);
        }
    }
    let mut start = 1;
    if let Some(v) = job.restart()? {
        start = job.checkpointer().region(&state)?[0] + 1;
        if rank == 0 {
            println!("restarted-from {v}");
            if let Some((_, level)) = job.restart_level() {
                println!("restart-level {level}");
            }
        }
    }
    let up = (rank > 0).then(|| world.process_at_rank(rank as i32 - 1));
    let down = (rank + 1 < size).then(|| world.process_at_rank(rank as i32 + 1));
    let mut scratch = vec![0f64; rows * n];
    let t_run = Instant::now();
    let (mut ckpts, mut coord, mut total, mut partner) = (0u32, 0f64, 0f64, 0f64);
    // Compute time per iteration while a flush was in flight, and while none was.
    let mut iter_ms = [(0u64, 0f64); 2];
    let mut last_started: Option<u64> = None;
    for it in start..=a.iters {
        if a.crash_at == Some(it) && rank == size - 1 {
            eprintln!("heat: rank {rank} crashing at iteration {it}");
            std::process::abort();
        }
        let flushing = job.flush_status().is_some_and(|f| f.in_flight.is_some());
        let t_iter = Instant::now();
        let g = job.checkpointer().region_mut(&grid)?;
        // Halo exchange: first row up / bottom halo from below, then last row down / top
        // halo from above.
        {
            let (top, rest) = g.split_at_mut(n);
            let (body, bottom) = rest.split_at_mut(rows * n);
            let first = &body[..n];
            match (&up, &down) {
                (Some(u), Some(d)) => {
                    mpi::point_to_point::send_receive_into(first, u, bottom, d);
                }
                (Some(u), None) => u.send(first),
                (None, Some(d)) => {
                    d.receive_into(bottom);
                }
                (None, None) => {}
            }
            let last = &body[(rows - 1) * n..];
            match (&up, &down) {
                (Some(u), Some(d)) => {
                    mpi::point_to_point::send_receive_into(last, d, top, u);
                }
                (None, Some(d)) => d.send(last),
                (Some(u), None) => {
                    u.receive_into(top);
                }
                (None, None) => {}
            }
        }
        // Jacobi update of interior points; global rows 0 and n-1 and columns 0 and n-1 are
        // fixed.
        for i in 0..rows {
            let gi = r0 + i;
            let row = (i + 1) * n;
            for j in 0..n {
                scratch[i * n + j] = if gi == 0 || gi == n - 1 || j == 0 || j == n - 1 {
                    g[row + j]
                } else {
                    0.25 * (g[row - n + j] + g[row + n + j] + g[row + j - 1] + g[row + j + 1])
                };
            }
        }
        g[n..(rows + 1) * n].copy_from_slice(&scratch);
        let slot = &mut iter_ms[usize::from(flushing)];
        slot.0 += 1;
        slot.1 += 1e3 * t_iter.elapsed().as_secs_f64();
        let due = a.ckpt_every > 0 && it % a.ckpt_every == 0;
        // A signal on any rank (Slurm's pre-timeout USR1) checkpoints every rank at once.
        let asked = a.signal_checkpoint && job.checkpoint_requested();
        if due || asked {
            job.checkpointer().region_mut(&state)?[0] = it;
            if let Some((r, v)) = rank_version(&a.kill_in_write) {
                // (An asynchronous version in flight is not on disk yet.)
                let next = match last_started {
                    Some(l) => l + 1,
                    None => job.checkpointer().latest_version()?.unwrap_or(0) + 1,
                };
                if r as usize == rank && v == next {
                    ckpt_engine::fault::arm_kill("mid-write");
                }
            }
            if a.asynchronous && !asked {
                // The call returns once this rank's snapshot is taken; the previous version
                // commits here, once every rank's flush is durable.
                let t = Instant::now();
                match job.checkpoint_async() {
                    Ok(s) => {
                        ckpts += 1;
                        total += t.elapsed().as_secs_f64();
                        partner += s.committed.as_ref().map_or(0.0, |c| c.partner_secs);
                        last_started = Some(s.version);
                        if let (Some(c), 0) = (s.committed, rank) {
                            println!("committed {}", c.version);
                        }
                    }
                    Err(e) => {
                        if rank == 0 {
                            println!("checkpoint-failed {e}");
                        }
                    }
                }
            } else {
                match job.checkpoint() {
                    Ok(s) => {
                        ckpts += 1;
                        coord += s.coordination_secs();
                        total += s.total_secs;
                        partner += s.partner_secs;
                        if asked && rank == 0 {
                            println!("signal-checkpoint {} at iteration {it}", s.version);
                        }
                        if asked && a.exit_on_signal {
                            if rank == 0 {
                                println!("exiting after signal-checkpoint {}", s.version);
                            }
                            break;
                        }
                    }
                    Err(e) => {
                        if rank == 0 {
                            println!("checkpoint-failed {e}");
                        }
                    }
                }
            }
        }
        if let (Some(f), 0, true) = (job.flush_status(), rank, due || asked) {
            let in_flight = f.in_flight.map_or("none".to_string(), |v| v.to_string());
            println!(
                "flush-status in-flight {in_flight} persisted {}",
                f.persisted
            );
        }
        if job.should_exit() {
            if rank == 0 {
                println!("halted at iteration {it}");
            }
            break;
        }
    }
    // The last asynchronous version commits once every rank's flush is durable.
    match job.wait() {
        Ok(Some(c)) if rank == 0 => println!("committed {}", c.version),
        Ok(_) => {}
        Err(e) => {
            if rank == 0 {
                println!("checkpoint-failed {e}");
            }
        }
    }
    let wall = t_run.elapsed().as_secs_f64();
    // Checksum of the global grid, independent of the decomposition: blake3 over the
    // blake3 of each global row, in order. Rank 0 collects the row hashes.
    let g = job.checkpointer().region(&grid)?;
    let mine: Vec<u8> = g[n..(rows + 1) * n]
        .chunks(n)
        .flat_map(|row| {
            let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
            *blake3::hash(&bytes).as_bytes()
        })
        .collect();
    if rank == 0 {
        let mut all = mine;
        for r in 1..size {
            let count = (r + 1) * n / size - r * n / size;
            let mut buf = vec![0u8; 32 * count];
            world.process_at_rank(r as i32).receive_into(&mut buf[..]);
            all.extend_from_slice(&buf);
        }
        println!("checksum {}", blake3::hash(&all).to_hex());
        if a.stats {
            let c = ckpts.max(1) as f64;
            let stats = Stats {
                ranks: size,
                n,
                iters_run: a.iters + 1 - start,
                checkpoints: ckpts,
                wall_secs: wall,
                ckpt_ms_mean: 1e3 * total / c,
                coord_ms_mean: 1e3 * coord / c,
                tracking: job.checkpointer().tracking().name(),
                asynchronous: a.asynchronous,
                partner_ms_mean: 1e3 * partner / c,
                iter_ms_flushing: iter_ms[1].1 / iter_ms[1].0.max(1) as f64,
                iter_ms_idle: iter_ms[0].1 / iter_ms[0].0.max(1) as f64,
                iters_flushing: iter_ms[1].0,
                iters_idle: iter_ms[0].0,
            };
            println!("stats {}", serde_json::to_string(&stats)?);
        }
    } else {
        world.process_at_rank(0).send(&mine[..]);
    }
    world.barrier();
    Ok(())
}
