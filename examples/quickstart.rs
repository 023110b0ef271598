//! Quick start: register a region, checkpoint a few times, restore in a "new run".
//!
//! Run: `cargo run --release -p ckpt-examples --example quickstart -- /tmp/qs`

use ckpt_engine::{Checkpointer, Config};

fn main() -> Result<(), ckpt_engine::Error> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quickstart-store".into());
    {
        let mut ck = Checkpointer::open(&dir, "sim", Config::default())?;
        let grid = ck.alloc_region::<f64>(1, 1 << 20)?; // 8 MiB
        let restored = match ck.latest_version()? {
            Some(v) => {
                ck.restore(Some(v))?;
                println!("restored version {v}");
                true
            }
            None => false,
        };
        for step in 0..5u32 {
            let g = ck.region_mut(&grid)?;
            // Touch 1% of the grid per step.
            let n = g.len();
            for i in (step as usize * 997..n).step_by(100 * 512).take(20) {
                g[i] += 1.0;
            }
            let s = ck.checkpoint()?;
            println!(
                "wrote {} ({} of {} pages stored, {} bytes, parent {:?})",
                s.path.display(),
                s.pages_stored,
                s.pages_total,
                s.file_bytes,
                s.parent
            );
        }
        if restored {
            println!("the file we restored from was left untouched");
        }
    }
    Ok(())
}
