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
//!
//! ```
//! use middleware_core::wire::{Datagram, DatagramKind, DatagramRepr, DecodeError, HEADER_LEN};
//!
//! // A whole message of 5 bytes: header then body.
//! let mut bytes = DatagramRepr::Whole { len: 5 }.to_bytes().to_vec();
//! bytes.extend_from_slice(b"hello");
//! let d = Datagram::new_checked(&bytes[..])?;
//! assert_eq!((d.kind(), d.body()), (DatagramKind::Whole, &b"hello"[..]));
//!
//! // Bytes from the network that lie about their length are rejected, never read past.
//! let err = Datagram::new_checked(&bytes[..HEADER_LEN + 2]).unwrap_err();
//! assert_eq!(err, DecodeError::Truncated { required: HEADER_LEN + 5, len: HEADER_LEN + 2 });
//! # Ok::<(), DecodeError>(())
//! ```

pub mod datagram;
pub mod sample_frame;

pub use datagram::{
    coalesced_segment_len, Datagram, DatagramKind, DatagramRepr, HEADER_LEN, MAX_COALESCED, MAX_DATAGRAM_LEN,
};
pub use sample_frame::{SampleFrame, SampleFrameRepr};

/// Why bytes from the network were rejected. Data, not prose, so tests compare by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the header or a declared length needs.
    #[error("truncated: need {required} bytes, have {len}")]
    Truncated {
        /// Bytes the header or its declared length needs.
        required: usize,
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not `ECAL` (not an eCAL datagram).
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Header version other than the one eCAL 5/6 send.
    #[error("unsupported header version {0}")]
    BadVersion(u8),
    /// Datagram type outside 1..=3.
    #[error("unknown datagram type {0}")]
    BadKind(u32),
    /// A sample frame's name length runs past the end of the message.
    #[error("sample name length {name_len} does not fit a message of {len} bytes")]
    BadNameLength {
        /// The declared name length (including its NUL).
        name_len: usize,
        /// The message's length.
        len: usize,
    },
    /// A sample frame's name does not end with a NUL byte.
    #[error("sample name is not NUL terminated")]
    NameNotTerminated,
    /// A sample frame's name is not valid UTF-8.
    #[error("sample name is not UTF-8")]
    NameNotUtf8,
}
