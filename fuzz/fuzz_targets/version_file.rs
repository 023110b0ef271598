//! Any bytes as a version file: opening it (header, footer, index, every table checked),
//! checking every record (decompression included) and summarising it must return, never panic,
//! hang or allocate without bound.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static FILE: PathBuf = {
        let dir = std::env::temp_dir().join(format!("ckpt-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Not a version-file name, so the name-against-header check does not short-circuit.
        dir.join("input.bin")
    };
}

fuzz_target!(|data: &[u8]| {
    FILE.with(|path| {
        std::fs::write(path, data).unwrap();
        if let Ok(f) = ckpt_engine::read::VersionFile::open(path) {
            let _ = f.verify_records();
        }
        let _ = ckpt_engine::catalog::inspect(path);
    });
});
