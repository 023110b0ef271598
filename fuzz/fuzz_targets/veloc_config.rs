//! Any text as a VeloC configuration file (and as ckpt's native one, and as a `[storage]`
//! table): an error naming the file, or a configuration; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

// The parser lives in ckpt-mpi, whose MPI bindings need no fuzzing: include its file alone.
#[allow(dead_code, missing_docs)]
#[path = "../../mpi-shim/src/config.rs"]
mod config;

#[allow(dead_code, missing_docs)]
#[path = "../../mpi-shim/src/storage/config.rs"]
mod storage_config;

// `config.rs` reads the `[storage]` table through `crate::storage::StorageConfig`.
mod storage {
    pub use super::storage_config::StorageConfig;
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("veloc.cfg");
    if let Err(e) = config::VelocConfig::parse(path, &text) {
        assert!(e.to_string().starts_with("veloc.cfg: "), "{e}");
    }
    let _ = config::parse_ini(path, &text);
    if let Err(e) = storage::StorageConfig::parse(path, &text) {
        assert!(e.to_string().starts_with("veloc.cfg: "), "{e}");
    }
});
