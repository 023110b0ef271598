//! File names in a store: what a chain may be called, and how a version's file is named.
//! Part of the format: a version file's file table names the files it references.

use super::MAX_NAME_LEN;
use crate::error::{Error, Result};

/// Checks a chain name: non-empty, at most 64 bytes, no `/`, no `..`, no NUL, not starting
/// with `.` (names starting with `.` are reserved for temporary and lock files).
pub fn check_chain_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 64 bytes")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains("..") {
        Some("contains '..'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks a file name found inside a version file's file table: a plain name in the same
/// directory.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.contains('/') || name.contains("..") || name.contains('\0') {
        return Err(format!("unacceptable file name {name:?}"));
    }
    Ok(())
}

/// The file name of version `version` of chain `name`: `<name>.ckpt.<version>`.
pub fn version_file_name(name: &str, version: u64) -> String {
    format!("{name}.ckpt.{version}")
}

/// Parses `<name>.ckpt.<N>` into `(name, N)`. Returns `None` for any other file name,
/// including temporary files (which start with `.`).
pub fn parse_version_file_name(file: &str) -> Option<(&str, u64)> {
    if file.starts_with('.') {
        return None;
    }
    let pos = file.rfind(".ckpt.")?;
    let (name, rest) = (&file[..pos], &file[pos + 6..]);
    if name.is_empty() || rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest.starts_with('0') {
        return None;
    }
    let v: u64 = rest.parse().ok()?;
    Some((name, v))
}
