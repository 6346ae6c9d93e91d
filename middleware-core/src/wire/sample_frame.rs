//! The eCAL message inside reassembled bytes (SPEC §4).
//!
//! ```text
//!  0        2                2+N
//!  +--------+----------------+-------------------------------+
//!  | N u16LE| name ... 00    | protobuf eCAL.pb.Sample ...   |
//!  +--------+----------------+-------------------------------+
//! ```
//! `N` counts the terminating NUL. A wrong `N` stops a real eCAL 6.1 receive loop for good, so
//! [`SampleFrameRepr::emit_prefix`] derives it from the name and never takes it from a caller.

use super::DecodeError;

const NAME_LEN_BYTES: usize = 2;

/// A checked view over one eCAL message.
#[derive(Debug, Clone, Copy)]
pub struct SampleFrame<'a> {
    name: &'a str,
    body: &'a [u8],
}

impl<'a> SampleFrame<'a> {
    /// # Errors
    /// [`DecodeError::Truncated`] (< 2 bytes), [`DecodeError::BadNameLength`] (N is 0 or larger
    /// than what follows), [`DecodeError::NameNotTerminated`], [`DecodeError::NameNotUtf8`].
    pub fn new_checked(message: &'a [u8]) -> Result<Self, DecodeError> {
        let Some((len_bytes, rest)) = message.split_first_chunk::<NAME_LEN_BYTES>() else {
            return Err(DecodeError::Truncated { required: NAME_LEN_BYTES, len: message.len() });
        };
        let n = u16::from_le_bytes(*len_bytes) as usize;
        if n == 0 || n > rest.len() {
            return Err(DecodeError::BadNameLength { name_len: n, len: message.len() });
        }
        let (name_nul, body) = rest.split_at(n);
        let (&last, name) = name_nul.split_last().expect("n >= 1");
        if last != 0 {
            return Err(DecodeError::NameNotTerminated);
        }
        let name = std::str::from_utf8(name).map_err(|_| DecodeError::NameNotUtf8)?;
        Ok(Self { name, body })
    }

    /// Sample name: the topic name on the data channel, `reg_sample` on registration.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The protobuf `eCAL.pb.Sample` bytes.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// Builds a frame: name + protobuf body.
#[derive(Debug, Clone, Copy)]
pub struct SampleFrameRepr<'a> {
    /// The sample name (`reg_sample` on the registration port, the topic name for data).
    pub name: &'a str,
}

impl SampleFrameRepr<'_> {
    /// Largest name a frame can carry (N is a u16 and counts the NUL).
    pub const MAX_NAME_LEN: usize = u16::MAX as usize - 1;

    /// Bytes before the protobuf body.
    pub fn header_len(&self) -> usize {
        NAME_LEN_BYTES + self.name.len() + 1
    }

    /// Appends the name prefix to `out`; the caller appends the protobuf body.
    ///
    /// # Panics
    /// If the name is longer than [`Self::MAX_NAME_LEN`]; topic names are checked when a
    /// publisher or subscriber is created, so this is a programming error.
    pub fn emit_prefix(&self, out: &mut Vec<u8>) {
        assert!(self.name.len() <= Self::MAX_NAME_LEN, "sample name too long");
        let n = (self.name.len() + 1) as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut v = Vec::new();
        SampleFrameRepr { name: "wire_small" }.emit_prefix(&mut v);
        assert_eq!(&v[..2], &[0x0b, 0x00]);
        v.extend_from_slice(&[8, 1]);
        let f = SampleFrame::new_checked(&v).unwrap();
        assert_eq!(f.name(), "wire_small");
        assert_eq!(f.body(), &[8, 1]);
    }

    #[test]
    fn hostile_name_lengths() {
        // N larger than the message: the case that kills eCAL's receive loop.
        assert_eq!(
            SampleFrame::new_checked(&[0xff, 0xff, b'a', 0]).unwrap_err(),
            DecodeError::BadNameLength { name_len: 0xffff, len: 4 }
        );
        assert!(matches!(SampleFrame::new_checked(&[0, 0, 1]), Err(DecodeError::BadNameLength { .. })));
        assert!(matches!(SampleFrame::new_checked(&[1]), Err(DecodeError::Truncated { .. })));
        assert_eq!(SampleFrame::new_checked(&[2, 0, b'a', b'b']).unwrap_err(), DecodeError::NameNotTerminated);
        assert_eq!(SampleFrame::new_checked(&[2, 0, 0xff, 0]).unwrap_err(), DecodeError::NameNotUtf8);
        // Empty name is legal: just the NUL.
        assert_eq!(SampleFrame::new_checked(&[1, 0, 0]).unwrap().name(), "");
    }
}
