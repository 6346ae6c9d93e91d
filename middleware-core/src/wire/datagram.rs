//! The 24-byte ecaludp "v5" datagram header (SPEC §2).
//!
//! ```text
//!  0      4   5       8        12       16       20       24
//!  +------+---+-------+--------+--------+--------+--------+----------
//!  | ECAL | 5 | 0 0 0 |  type  |   id   |  num   |  len   | body ...
//!  +------+---+-------+--------+--------+--------+--------+----------
//!                      u32 LE   i32 LE   u32 LE   u32 LE
//! ```

use super::DecodeError;
use std::fmt;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: Range<usize> = 8..12;
    pub const ID: Range<usize> = 12..16;
    pub const NUM: Range<usize> = 16..20;
    pub const LEN: Range<usize> = 20..24;
}

/// Length of the header in bytes.
pub const HEADER_LEN: usize = field::LEN.end;
/// The magic bytes `ECAL`.
pub const MAGIC: [u8; 4] = *b"ECAL";
/// The only header version eCAL 6.1 receivers accept.
pub const VERSION: u8 = 5;
/// Largest UDP payload over IPv4 that eCAL sends: 65536 - 20 (IPv4) - 8 (UDP) - 1 (SPEC §3.1).
pub const MAX_DATAGRAM_LEN: usize = 65507;

/// The `type` field. Unknown values round-trip so they can be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatagramKind {
    /// Type 1: announces a fragmented message (`num` fragments, `len` total bytes).
    FragmentInfo,
    /// Type 2: fragment number `num` of message `id`, `len` bytes follow.
    Fragment,
    /// Type 3: a whole message of `len` bytes follows.
    Whole,
    /// Any other value (rejected by [`DatagramRepr::parse`], kept for logging).
    Unknown(u32),
}

impl From<u32> for DatagramKind {
    fn from(v: u32) -> Self {
        match v {
            1 => Self::FragmentInfo,
            2 => Self::Fragment,
            3 => Self::Whole,
            other => Self::Unknown(other),
        }
    }
}

impl From<DatagramKind> for u32 {
    fn from(k: DatagramKind) -> u32 {
        match k {
            DatagramKind::FragmentInfo => 1,
            DatagramKind::Fragment => 2,
            DatagramKind::Whole => 3,
            DatagramKind::Unknown(v) => v,
        }
    }
}

/// A read/write view over a datagram buffer.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<T: AsRef<[u8]>> {
    buffer: T,
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

// `len` is the wire field of that name, not the view's size.
#[allow(clippy::len_without_is_empty)]
impl<T: AsRef<[u8]>> Datagram<T> {
    /// Wraps without checks; only for buffers this process builds.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps after checking length, magic and version. Use this for anything from the network.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when shorter than the header or than `24 + len`,
    /// [`DecodeError::BadMagic`], [`DecodeError::BadVersion`].
    pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
        let d = Self::new_unchecked(buffer);
        d.check()?;
        Ok(d)
    }

    fn check(&self) -> Result<(), DecodeError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Truncated { required: HEADER_LEN, len: b.len() });
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if b[field::VERSION] != VERSION {
            return Err(DecodeError::BadVersion(b[field::VERSION]));
        }
        // Types 1 carries no body; for 2 and 3 the declared body must be present (SPEC §2.1).
        if matches!(self.kind(), DatagramKind::Fragment | DatagramKind::Whole) {
            let required = (self.len() as usize).saturating_add(HEADER_LEN);
            if b.len() < required {
                return Err(DecodeError::Truncated { required, len: b.len() });
            }
        }
        Ok(())
    }

    /// The `type` field (offset 8).
    pub fn kind(&self) -> DatagramKind {
        le_u32(&self.buffer.as_ref()[field::KIND]).into()
    }
    /// The message id field (offset 12): ties a message's fragments together.
    pub fn id(&self) -> i32 {
        le_u32(&self.buffer.as_ref()[field::ID]) as i32
    }
    /// The `num` field (offset 16): fragment count (type 1) or fragment index (type 2).
    pub fn num(&self) -> u32 {
        le_u32(&self.buffer.as_ref()[field::NUM])
    }
    /// The `len` field (offset 20): total message length (type 1) or body length (types 2 and 3).
    pub fn len(&self) -> u32 {
        le_u32(&self.buffer.as_ref()[field::LEN])
    }
    /// The `len` bytes after the header (empty for type 1). Extra trailing bytes are ignored,
    /// as eCAL does.
    pub fn body(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        match self.kind() {
            DatagramKind::Fragment | DatagramKind::Whole => {
                let end = HEADER_LEN.saturating_add(self.len() as usize).min(b.len());
                &b[HEADER_LEN..end]
            }
            _ => &[],
        }
    }
    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<'a> Datagram<&'a [u8]> {
    /// Like [`Datagram::body`], but borrowing the underlying buffer rather than the view.
    pub fn into_body(self) -> &'a [u8] {
        let body = self.body().len();
        &self.buffer[HEADER_LEN..HEADER_LEN + body]
    }
}

/// Most datagrams one segmentation offload buffer holds (Linux `UDP_MAX_SEGMENTS` since 6.11).
pub const MAX_COALESCED: usize = 128;

/// The datagram size when `payload` is a segmentation offload buffer of eCAL datagrams seen
/// uncut; `None` for anything else (one datagram, with or without trailing bytes).
///
/// A sender using segmentation offload (`udp.send_mode = frames`) hands the OS one buffer of
/// equal-sized datagrams that the network device cuts apart. Sockets see the pieces (ours, with
/// `UDP_GRO`, get the size from the kernel), but a packet capture taken before the cut (on the
/// sending host, or on a link such as `lo` or veth that carries the uncut buffer) sees one UDP
/// payload. It is taken for such a buffer only in its exact shape: from 2 to
/// [`MAX_COALESCED`] pieces of one size, the last possibly shorter, each an eCAL datagram
/// (magic, version, a known type) whose declared end (type 1: the header; types 2 and 3:
/// `24 + len`) is exactly its piece's end. So a datagram with trailing bytes stays what it was
/// (eCAL ignores them), and the check reads nothing past the payload.
pub fn coalesced_segment_len(payload: &[u8]) -> Option<usize> {
    let extent = |b: &[u8]| {
        let d = Datagram::new_checked(b).ok()?;
        match d.kind() {
            DatagramKind::FragmentInfo => Some(HEADER_LEN),
            DatagramKind::Fragment | DatagramKind::Whole => Some(HEADER_LEN + d.len() as usize),
            DatagramKind::Unknown(_) => None,
        }
    };
    let size = extent(payload)?;
    let pieces = payload.len().div_ceil(size);
    if size >= payload.len() || pieces > MAX_COALESCED {
        return None;
    }
    payload.chunks(size).all(|piece| extent(piece) == Some(piece.len())).then_some(size)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    fn put(&mut self, range: core::ops::Range<usize>, v: u32) {
        self.buffer.as_mut()[range].copy_from_slice(&v.to_le_bytes());
    }
    /// Writes the magic `ECAL`, the version and the reserved zero bytes.
    pub fn set_magic_and_version(&mut self) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = VERSION;
        b[5..8].fill(0);
    }
    /// Writes the `type` field.
    pub fn set_kind(&mut self, k: DatagramKind) {
        self.put(field::KIND, k.into());
    }
    /// Writes the message id field.
    pub fn set_id(&mut self, id: i32) {
        self.put(field::ID, id as u32);
    }
    /// Writes the `num` field.
    pub fn set_num(&mut self, n: u32) {
        self.put(field::NUM, n);
    }
    /// Writes the `len` field.
    pub fn set_len(&mut self, n: u32) {
        self.put(field::LEN, n);
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Datagram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DatagramRepr::parse(self) {
            Ok(r) => write!(f, "{r}"),
            Err(e) => write!(f, "ecaludp ({e})"),
        }
    }
}

/// The semantic content of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramRepr {
    /// Type 1: message `id` follows as `count` fragments carrying `total_len` bytes in all.
    FragmentInfo {
        /// Message id, the same in every fragment of the message (random per message in eCAL).
        id: i32,
        /// Number of fragments (type 2 datagrams) that follow.
        count: u32,
        /// The whole message's length in bytes.
        total_len: u32,
    },
    /// Type 2: fragment `index` (from 0) of message `id`, `len` body bytes.
    Fragment {
        /// Message id, as in its type 1 datagram.
        id: i32,
        /// Position of this fragment, from 0.
        index: u32,
        /// Body bytes after the header.
        len: u32,
    },
    /// Type 3: a whole message of `len` bytes follows the header.
    Whole {
        /// Body bytes after the header.
        len: u32,
    },
}

impl DatagramRepr {
    /// # Errors
    /// [`DecodeError::BadKind`] for a type outside 1..=3.
    pub fn parse<T: AsRef<[u8]>>(d: &Datagram<T>) -> Result<Self, DecodeError> {
        Ok(match d.kind() {
            DatagramKind::FragmentInfo => Self::FragmentInfo { id: d.id(), count: d.num(), total_len: d.len() },
            DatagramKind::Fragment => Self::Fragment { id: d.id(), index: d.num(), len: d.len() },
            DatagramKind::Whole => Self::Whole { len: d.len() },
            DatagramKind::Unknown(k) => return Err(DecodeError::BadKind(k)),
        })
    }

    /// Header bytes only; the body (if any) follows and is written by the caller.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 24 header bytes into `d` (which must hold at least [`HEADER_LEN`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, d: &mut Datagram<T>) {
        d.set_magic_and_version();
        match *self {
            Self::FragmentInfo { id, count, total_len } => {
                d.set_kind(DatagramKind::FragmentInfo);
                d.set_id(id);
                d.set_num(count);
                d.set_len(total_len);
            }
            Self::Fragment { id, index, len } => {
                d.set_kind(DatagramKind::Fragment);
                d.set_id(id);
                d.set_num(index);
                d.set_len(len);
            }
            Self::Whole { len } => {
                // eCAL writes id -1 and num 1 for whole messages (SPEC §2).
                d.set_kind(DatagramKind::Whole);
                d.set_id(-1);
                d.set_num(1);
                d.set_len(len);
            }
        }
    }

    /// Convenience: the 24 header bytes as an array.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.emit(&mut Datagram::new_unchecked(&mut b[..]));
        b
    }
}

impl fmt::Display for DatagramRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FragmentInfo { id, count, total_len } => {
                write!(f, "ecaludp info id={id} count={count} total_len={total_len}")
            }
            Self::Fragment { id, index, len } => {
                write!(f, "ecaludp frag id={id} num={index} len={len}")
            }
            Self::Whole { len } => write!(f, "ecaludp whole len={len}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // cap2 frame 14 (SPEC §11.2): fragmentation info.
    const INFO: [u8; 24] = [
        0x45, 0x43, 0x41, 0x4c, 0x05, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x34, 0x82, 0x27, 0x0d, 0x02, 0x00,
        0x00, 0x00, 0xe5, 0xff, 0x00, 0x00,
    ];

    #[test]
    fn only_an_offload_buffer_of_equal_datagrams_is_cut() {
        let frag = |index: u32, body: &[u8]| {
            let mut v = DatagramRepr::Fragment { id: 9, index, len: body.len() as u32 }.to_bytes().to_vec();
            v.extend_from_slice(body);
            v
        };
        // Equal fragments and a shorter last one, back to back (one offload buffer).
        let parts = [frag(0, &[1; 100]), frag(1, &[2; 100]), frag(2, &[3; 100]), frag(3, &[4; 7])];
        let joined = parts.concat();
        assert_eq!(coalesced_segment_len(&joined), Some(124));
        let cut: Vec<&[u8]> = joined.chunks(124).collect();
        assert_eq!(cut, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(coalesced_segment_len(&parts[..2].concat()), Some(124));

        // One datagram, alone or with trailing bytes (eCAL ignores them), is never cut.
        assert_eq!(coalesced_segment_len(&parts[0]), None);
        let mut tail = frag(0, &[1; 10]);
        tail.extend_from_slice(&[0xEE; 40]);
        assert_eq!(coalesced_segment_len(&tail), None);
        // Trailing bytes that look like a header but are not a whole datagram of the shape.
        let mut fake = frag(0, &[1; 10]);
        fake.extend_from_slice(&frag(1, &[2; 20]));
        assert_eq!(coalesced_segment_len(&fake), None, "a longer second piece");
        let mut short = frag(0, &[1; 10]);
        short.extend_from_slice(b"ECAL\x05");
        assert_eq!(coalesced_segment_len(&short), None);
        let mut v4 = frag(0, &[1; 10]);
        v4.extend_from_slice(&frag(1, &[2; 10]));
        v4[34 + 4] = 4;
        assert_eq!(coalesced_segment_len(&v4), None, "a bad version in the second piece");
        // The info datagram (24 bytes) before fragments is not one size with them.
        assert_eq!(coalesced_segment_len(&[INFO.to_vec(), frag(0, &[1; 100])].concat()), None);
        // Garbage and truncations read nothing past the end.
        assert_eq!(coalesced_segment_len(&joined[..50]), None);
        assert_eq!(coalesced_segment_len(b"xy"), None);
        // 2 700 type-1 datagrams of 24 bytes: more pieces than an offload buffer holds.
        assert_eq!(coalesced_segment_len(&INFO.repeat(MAX_COALESCED)), Some(24));
        assert_eq!(coalesced_segment_len(&INFO.repeat(MAX_COALESCED + 1)), None);
    }

    #[test]
    fn deconstruct() {
        let d = Datagram::new_checked(&INFO[..]).unwrap();
        assert_eq!(d.kind(), DatagramKind::FragmentInfo);
        assert_eq!(d.id(), 220693044);
        assert_eq!(d.num(), 2);
        assert_eq!(d.len(), 65509);
        assert!(d.body().is_empty());
        assert_eq!(
            DatagramRepr::parse(&d).unwrap(),
            DatagramRepr::FragmentInfo { id: 220693044, count: 2, total_len: 65509 }
        );
    }

    #[test]
    fn construct() {
        let r = DatagramRepr::FragmentInfo { id: 220693044, count: 2, total_len: 65509 };
        assert_eq!(r.to_bytes(), INFO);
    }

    #[test]
    fn whole_writes_minus_one_and_one() {
        let b = DatagramRepr::Whole { len: 97 }.to_bytes();
        assert_eq!(&b[8..24], &[3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0x61, 0, 0, 0]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Datagram::new_checked(&INFO[..23]).unwrap_err(), DecodeError::Truncated { required: 24, len: 23 });
        let mut b = INFO;
        b[0] = b'X';
        assert!(matches!(Datagram::new_checked(&b[..]), Err(DecodeError::BadMagic(_))));
        let mut b = INFO;
        b[4] = 6;
        assert_eq!(Datagram::new_checked(&b[..]).unwrap_err(), DecodeError::BadVersion(6));
        let mut b = INFO;
        b[8] = 9;
        let d = Datagram::new_checked(&b[..]).unwrap();
        assert_eq!(DatagramRepr::parse(&d).unwrap_err(), DecodeError::BadKind(9));
        // A whole message declaring more bytes than present.
        let mut b = DatagramRepr::Whole { len: 10 }.to_bytes().to_vec();
        b.extend_from_slice(&[0; 9]);
        assert_eq!(Datagram::new_checked(&b[..]).unwrap_err(), DecodeError::Truncated { required: 34, len: 33 });
        // A declared length of u32::MAX never overflows.
        let b = DatagramRepr::Whole { len: u32::MAX }.to_bytes();
        assert!(Datagram::new_checked(&b[..]).is_err());
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut b = DatagramRepr::Whole { len: 2 }.to_bytes().to_vec();
        b.extend_from_slice(&[7, 8, 9]);
        let d = Datagram::new_checked(&b[..]).unwrap();
        assert_eq!(d.body(), &[7, 8]);
    }
}
