//! Any text as the Slurm hooks' TOML configuration: an error naming the file, or a
//! configuration with absolute roots; never a panic.
#![no_main]

use std::path::Path;

use ckpt_cli::hooks::HookConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match HookConfig::parse(Path::new("ckpt.toml"), &text) {
        Ok(c) => assert!(c.local_root.is_absolute() && c.persistent_root.is_absolute()),
        Err(e) => assert!(format!("{e:#}").contains("ckpt.toml"), "{e:#}"),
    }
});
