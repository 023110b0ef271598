//! The background thread of one rank that copies committed versions to persistent storage
//! and, on rank 0, writes their persistent commit records and compacts it. It runs at a lower priority (nice +10) so that it yields the
//! cores to the application and its MPI progress.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use ckpt_engine::job::{copy_chain, CommitRecord, CopyReport, JobStore};
use ckpt_engine::{Identity, Store};

/// Niceness added to the flush thread.
const FLUSH_NICENESS: i32 = 10;

/// Work for the flush thread.
pub enum Task {
    /// Copy version file `src` and what it references into `dst`, then check that the copy is
    /// the file `want` names.
    Flush {
        /// The version.
        version: u64,
        /// The rank's file in the local cache.
        src: PathBuf,
        /// The rank's chain on persistent storage.
        dst: Store,
        /// Its identity in the commit record.
        want: Identity,
    },
    /// Write commit record `rec` into persistent job store `store` (every rank's files are
    /// there), then keep its newest `keep` committed versions once twice as many are there.
    Commit {
        /// The persistent job store.
        store: JobStore,
        /// The record.
        rec: CommitRecord,
        /// Versions kept, if limited.
        keep: Option<usize>,
    },
}

/// What the last task did.
#[derive(Debug, Clone, Default)]
pub struct Done {
    /// Bytes copied.
    pub bytes: u64,
    /// Seconds it took.
    pub secs: f64,
    /// What went wrong without failing the task (a compaction).
    pub warning: Option<String>,
}

#[derive(Default)]
struct State {
    busy: bool,
    last: Option<Result<Done, String>>,
}

/// A rank's flush thread.
pub struct Flusher {
    tx: Option<mpsc::Sender<Task>>,
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Task>();
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("ckpt-flush".into())
            .spawn(move || {
                ckpt_engine::lower_thread_priority(FLUSH_NICENESS);
                for task in rx {
                    let out = run(task);
                    let (m, cv) = &*st;
                    let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
                    s.busy = false;
                    s.last = Some(out);
                    cv.notify_all();
                }
            })?;
        Ok(Flusher {
            tx: Some(tx),
            state,
            thread: Some(thread),
        })
    }

    /// Hands `task` to the thread (the thread is then busy until it is done).
    pub fn send(&mut self, task: Task) -> Result<(), String> {
        let (m, _) = &*self.state;
        m.lock().unwrap_or_else(|e| e.into_inner()).busy = true;
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(task).is_ok());
        if !sent {
            let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
            s.busy = false;
            return Err("the flush thread is gone".into());
        }
        Ok(())
    }

    /// Whether the thread has nothing to do.
    pub fn idle(&self) -> bool {
        let (m, _) = &*self.state;
        !m.lock().unwrap_or_else(|e| e.into_inner()).busy
    }

    /// Waits until the thread has nothing to do.
    pub fn wait_idle(&self) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        while s.busy {
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The outcome of the last task, taken (`None` if none finished since the last call).
    pub fn take_last(&self) -> Option<Result<Done, String>> {
        let (m, _) = &*self.state;
        m.lock().unwrap_or_else(|e| e.into_inner()).last.take()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(task: Task) -> Result<Done, String> {
    let t0 = Instant::now();
    match task {
        Task::Flush {
            version,
            src,
            dst,
            want,
        } => {
            #[cfg(feature = "fault-injection")]
            if let Some(ms) = std::env::var("CKPT_TEST_FLUSH_DELAY_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            let mut report = CopyReport::default();
            let copy = copy_chain(&src, &dst, None, &mut report)
                .map_err(|e| format!("flush version {version}: {e}"))?;
            if !ckpt_engine::catalog::satisfies(&copy, &want).map_err(|e| e.to_string())? {
                return Err(format!(
                    "{}: the flushed copy is not the file the commit record names",
                    copy.display()
                ));
            }
            Ok(Done {
                bytes: report.bytes_copied,
                secs: t0.elapsed().as_secs_f64(),
                warning: None,
            })
        }
        Task::Commit { store, rec, keep } => {
            store
                .ensure_commit(&rec)
                .map_err(|e| format!("version {}: {e}", rec.version))?;
            let warning = match keep {
                Some(k) => match store.commits() {
                    Ok(c) if c.len() >= 2 * k => store
                        .compact(k, false)
                        .err()
                        .map(|e| format!("compact {}: {e}", store.dir().display())),
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                },
                None => None,
            };
            Ok(Done {
                bytes: 0,
                secs: t0.elapsed().as_secs_f64(),
                warning,
            })
        }
    }
}
