//! Bytes <-> fields for the eCAL UDP wire format (SPEC §2, §4).
//!
//! The contract, stated once:
//! * a *view* (`Datagram<T>`, `SampleFrame<T>`) wraps any buffer and never allocates;
//!   `new_checked` verifies every length the accessors rely on, so accessors cannot panic
//!   afterwards. Anything that came from the network goes through `new_checked`.
//! * a *repr* (`DatagramRepr`) owns the semantic fields; `parse` does the semantic checks and
//!   `emit` writes into a buffer of exactly `buffer_len()` bytes and never fails.
//! * all multi-byte integers of the eCAL header are little-endian; the accessors decide that,
//!   callers never do.

pub mod datagram;
pub mod sample_frame;

pub use datagram::{Datagram, DatagramKind, DatagramRepr, HEADER_LEN, MAX_DATAGRAM_LEN};
pub use sample_frame::{SampleFrame, SampleFrameRepr};

/// Why bytes from the network were rejected. Data, not prose, so tests compare by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated: need {required} bytes, have {len}")]
    Truncated { required: usize, len: usize },
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported header version {0}")]
    BadVersion(u8),
    #[error("unknown datagram type {0}")]
    BadKind(u32),
    #[error("sample name length {name_len} does not fit a message of {len} bytes")]
    BadNameLength { name_len: usize, len: usize },
    #[error("sample name is not NUL terminated")]
    NameNotTerminated,
    #[error("sample name is not UTF-8")]
    NameNotUtf8,
}
