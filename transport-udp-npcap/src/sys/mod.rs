//! Platform specifics of the capture path, one file per platform with the same exports.

#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

#[cfg(not(windows))]
#[path = "other.rs"]
mod imp;

pub(crate) use imp::{cold_start, wait_readable};
