//! Writing: a new version file from the dirty pages, committed atomically.
//!
//! - [`pipeline`]: scan a region span by span and stream its dirty pages to the writer;
//! - [`file`]: the version file being written (compression, writer thread, index, footer,
//!   fsync, atomic rename);
//! - [`staging`]: aligned buffers between encoder and writer thread, for direct I/O;
//! - [`index`]: how a delta's index is built from its parent's picture and the new records.
//!
//! Invariant: nothing here is visible under a version name until [`file::VersionWriter`]'s
//! commit renames a fully written and fsynced file into place.

pub(crate) mod file;
pub(crate) mod index;
pub(crate) mod pipeline;
pub(crate) mod staging;
