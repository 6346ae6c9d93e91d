//! Message -> datagrams (SPEC §3.1).
//!
//! Each datagram is a 24-byte header plus a borrowed slice of the message, so a transport can
//! send both with one vectored call and the message is never copied.

use crate::wire::{DatagramRepr, HEADER_LEN, MAX_DATAGRAM_LEN};

/// One datagram to send: its header and the message bytes that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The 24-byte eCAL header of the datagram.
    pub header: [u8; HEADER_LEN],
    /// The part of the message this datagram carries (empty for a type 1 announcement).
    pub body: &'a [u8],
}

/// How many fragment datagrams a message of `len` bytes needs; 0 when it fits one datagram.
///
/// # Panics
/// If `max_datagram_len` is not in `HEADER_LEN + 1 ..= MAX_DATAGRAM_LEN` (the config rejects that).
pub fn fragment_count(len: usize, max_datagram_len: usize) -> usize {
    assert!((HEADER_LEN + 1..=MAX_DATAGRAM_LEN).contains(&max_datagram_len));
    let per = max_datagram_len - HEADER_LEN;
    if len <= per {
        0
    } else {
        len.div_ceil(per)
    }
}

/// Cuts `message` into datagrams of at most `max_datagram_len` bytes. A message that fits is one
/// type-3 datagram; a larger one is one type-1 info datagram followed by type-2 fragments that
/// all carry `id` (SPEC §3.1). Messages longer than `u32::MAX` cannot be framed and yield `None`.
pub fn split(message: &[u8], max_datagram_len: usize, id: i32) -> Option<impl Iterator<Item = Piece<'_>>> {
    let total = u32::try_from(message.len()).ok()?;
    let n = fragment_count(message.len(), max_datagram_len);
    let per = max_datagram_len - HEADER_LEN;
    let first = if n == 0 {
        Piece { header: DatagramRepr::Whole { len: total }.to_bytes(), body: message }
    } else {
        Piece { header: DatagramRepr::FragmentInfo { id, count: n as u32, total_len: total }.to_bytes(), body: &[] }
    };
    let frags = message.chunks(per).enumerate().take(n).map(move |(i, chunk)| Piece {
        header: DatagramRepr::Fragment { id, index: i as u32, len: chunk.len() as u32 }.to_bytes(),
        body: chunk,
    });
    Some(std::iter::once(first).chain(frags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_spec() {
        // cap2: 65509-byte message -> 2 fragments; cap3: 1048663 -> 17 (SPEC §11.2, §11.3).
        assert_eq!(fragment_count(65483, MAX_DATAGRAM_LEN), 0);
        assert_eq!(fragment_count(65484, MAX_DATAGRAM_LEN), 2);
        assert_eq!(fragment_count(65509, MAX_DATAGRAM_LEN), 2);
        assert_eq!(fragment_count(1_048_663, MAX_DATAGRAM_LEN), 17);
    }

    #[test]
    fn cap3_layout() {
        let msg = vec![7u8; 1_048_663];
        let pieces: Vec<_> = split(&msg, MAX_DATAGRAM_LEN, -311886617).unwrap().collect();
        assert_eq!(pieces.len(), 18);
        // SPEC §11.3 info datagram bytes: 01 00 00 00 e7 fc 68 ed 11 00 00 00 57 00 10 00
        assert_eq!(&pieces[0].header[8..], &[1, 0, 0, 0, 0xe7, 0xfc, 0x68, 0xed, 0x11, 0, 0, 0, 0x57, 0, 0x10, 0]);
        assert!(pieces[1..17].iter().all(|p| p.body.len() == 65483));
        assert_eq!(pieces[17].body.len(), 935);
        assert_eq!(&pieces[17].header[16..], &[0x10, 0, 0, 0, 0xa7, 0x03, 0, 0]);
    }

    #[test]
    fn small_datagrams() {
        let msg: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let pieces: Vec<_> = split(&msg, 1472, 5).unwrap().collect();
        assert_eq!(pieces.len(), 1 + 200_000usize.div_ceil(1448));
        let joined: Vec<u8> = pieces[1..].iter().flat_map(|p| p.body.iter().copied()).collect();
        assert_eq!(joined, msg);
    }
}
