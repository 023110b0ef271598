//! `ckpt-compact`: keep the newest versions of a chain, flatten what they reference, remove
//! the rest — crash-safe at every instant, and safe to run while the application writes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use ckpt_engine::compact::{self, CompactOptions};
use ckpt_engine::job::JobStore;
use ckpt_engine::Store;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "ckpt-compact",
    version,
    about = "Flatten chains and retire old checkpoint files, crash-safely"
)]
struct Args {
    /// Store directory.
    dir: PathBuf,
    /// Chain name (optional when DIR holds one chain).
    #[arg(long)]
    name: Option<String>,
    /// Keep the newest K versions of the newest version's lineage (default: the whole
    /// lineage; abandoned branches, unreferenced files and temporaries are still removed).
    #[arg(long)]
    keep: Option<usize>,
    /// Rewrite as full any kept version deeper than D.
    #[arg(long)]
    max_depth: Option<u32>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let run = || -> ckpt_engine::Result<serde_json::Value> {
        if let Some((job, meta)) = JobStore::detect(&a.dir)? {
            // A job store: keep the newest K committed versions on every rank.
            let r = job.compact(a.keep.unwrap_or(usize::MAX), a.dry_run)?;
            let written: u64 = r.ranks.iter().map(|x| x.bytes_written).sum();
            let freed: u64 = r.ranks.iter().map(|x| x.bytes_freed).sum();
            let secs: f64 = r.ranks.iter().map(|x| x.secs).sum();
            return Ok(json!({
                "name": job.name(),
                "job": {"world_size": meta.world_size},
                "dry_run": a.dry_run,
                "kept": r.kept,
                "removed": r.commits_removed,
                "rewritten": r.ranks.iter().flat_map(|x| x.rewritten.iter().copied())
                    .collect::<std::collections::BTreeSet<u64>>(),
                "spared": [],
                "temporaries": r.ranks.iter().flat_map(|x| x.temps_removed.iter().map(|t| t.display().to_string()))
                    .collect::<Vec<_>>(),
                "bytes_written": written,
                "bytes_freed": freed,
                "secs": secs,
            }));
        }
        let store = Store::discover(&a.dir, a.name.as_deref())?;
        let opts = CompactOptions {
            keep: a.keep.unwrap_or(usize::MAX),
            max_depth: a.max_depth,
            dry_run: a.dry_run,
            ..CompactOptions::default()
        };
        let pb = if std::io::stderr().is_terminal() && !a.dry_run {
            let pb = ProgressBar::new(0);
            if let Ok(s) = ProgressStyle::with_template("compact [{bar:40}] {pos}/{len} {elapsed}")
            {
                pb.set_style(s.progress_chars("=> "));
            }
            pb
        } else {
            ProgressBar::hidden()
        };
        let r = compact::compact(&store, &opts, &mut |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        })?;
        pb.finish_and_clear();
        let temps: Vec<String> = r
            .plan
            .temps
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Ok(json!({
            "name": store.name(),
            "dry_run": a.dry_run,
            "kept": r.plan.kept,
            "rewritten": r.plan.rewrite,
            "removed": r.plan.remove.iter().filter(|v| !r.spared.contains(v)).collect::<Vec<_>>(),
            "spared": r.spared,
            "temporaries": temps,
            "bytes_written": r.bytes_written,
            "bytes_freed": r.bytes_freed,
            "secs": r.secs,
        }))
    };
    match run() {
        Ok(doc) => {
            if a.json {
                println!("{doc}");
            } else {
                let verb = if a.dry_run { "would" } else { "did" };
                println!("ckpt-compact {} ({verb}):", a.dir.display());
                println!("  keep     {}", doc["kept"]);
                println!("  rewrite  {}", doc["rewritten"]);
                println!("  remove   {}", doc["removed"]);
                if !doc["spared"].as_array().is_none_or(|v| v.is_empty()) {
                    println!(
                        "  spared   {} (still referenced by a version committed meanwhile)",
                        doc["spared"]
                    );
                }
                println!("  temporaries {}", doc["temporaries"]);
                if !a.dry_run {
                    println!(
                        "  wrote {} bytes, freed {} bytes in {:.3}s",
                        doc["bytes_written"],
                        doc["bytes_freed"],
                        doc["secs"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if a.json {
                println!("{}", json!({"error": e.to_string()}));
            }
            eprintln!("ckpt-compact: error: {e}");
            ExitCode::from(2)
        }
    }
}
