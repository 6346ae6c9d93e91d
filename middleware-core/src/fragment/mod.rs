//! eCAL message fragmentation (SPEC §3): [`split()`] cuts a message into datagrams, [`Reassembler`]
//! puts them back together under hard memory bounds.

pub mod reassembly;
pub mod split;

pub use reassembly::{
    DatagramLease, FragKey, Outcome, Reassembler, ReassemblyConfig, ReassemblyStats, SplitMessage, Splitter,
    EXPIRY_EVERY,
};
pub use split::{fragment_count, split, Piece};
