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

/// How a store names its version files. Part of the format: a version file's file table
/// names the files it references, and a committed file's name must match its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum Naming {
    /// `<chain>.ckpt.<N>`: ckpt's own naming (DragonFly's checkpt(1)). Versions from 1.
    #[default]
    Ckpt,
    /// `<chain>-<N-1>.dat`: VeloC's per-rank file names (`<name>-<rank>-<version>.dat`, with
    /// chain `<name>-<rank>`). VeloC numbers versions from 0 and ckpt from 1, so file
    /// `x-0-0.dat` holds ckpt version 1.
    Dat,
}

impl Naming {
    /// The file name of ckpt version `version` (at least 1) of chain `chain`.
    pub fn file_name(self, chain: &str, version: u64) -> String {
        match self {
            Naming::Ckpt => version_file_name(chain, version),
            Naming::Dat => format!("{chain}-{}.dat", version.saturating_sub(1)),
        }
    }

    /// Parses a file name of this naming into `(chain, ckpt version)`; `None` for any other
    /// file name, including temporary files (which start with `.`).
    pub fn parse(self, file: &str) -> Option<(&str, u64)> {
        match self {
            Naming::Ckpt => parse_version_file_name(file),
            Naming::Dat => {
                if file.starts_with('.') {
                    return None;
                }
                let stem = file.strip_suffix(".dat")?;
                let pos = stem.rfind('-')?;
                let (chain, num) = (&stem[..pos], &stem[pos + 1..]);
                if chain.is_empty()
                    || num.is_empty()
                    || !num.bytes().all(|b| b.is_ascii_digit())
                    || (num.len() > 1 && num.starts_with('0'))
                {
                    return None;
                }
                let n: u64 = num.parse().ok()?;
                Some((chain, n.checked_add(1)?))
            }
        }
    }

    /// Parses a version file name of any naming into `(chain, ckpt version, naming)`.
    pub fn parse_any(file: &str) -> Option<(&str, u64, Naming)> {
        [Naming::Ckpt, Naming::Dat]
            .into_iter()
            .find_map(|n| n.parse(file).map(|(c, v)| (c, v, n)))
    }
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
