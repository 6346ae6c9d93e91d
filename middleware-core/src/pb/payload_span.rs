//! Where the payload of a data message lies, found from the message's first bytes, so that
//! reassembly can put the payload in a buffer of its own (the one the subscriber is handed) while
//! the fragments arrive, and [`decode_without_payload`] decodes the rest: one copy per payload
//! byte instead of two (reassembly, then moving the payload to the front of its buffer).
//!
//! A data message is the sample name prefix, then `Sample{1 cmd_type, 5 topic, 6 content{..., 4
//! payload, ...}, 8 padding}` in any field order. The walk follows the protobuf wire format
//! (varint keys; wire types 0, 1, 2 and 5; groups end it) and gives up (`None`: the message is
//! reassembled and decoded whole, as before) on anything else: no content, no payload inside the
//! bytes given, groups, truncated varints.

use super::Sample;
use crate::wire::SampleFrame;
use prost::Message;
use std::ops::Range;

/// The layout of a data message around its payload, in message offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSpan {
    /// Where the `Sample` protobuf starts (after the name prefix).
    pub body_start: usize,
    /// Where the `content` field's key starts.
    pub content_key: usize,
    /// Where the content's bytes start (after its length) and end.
    pub content: (usize, usize),
    /// Where the payload field's key starts (inside the content).
    pub payload_key: usize,
    /// The payload bytes.
    pub payload: (usize, usize),
}

impl PayloadSpan {
    /// The payload's byte range in the message.
    pub fn payload_range(&self) -> Range<usize> {
        self.payload.0..self.payload.1
    }
}

/// A varint at `at` in `b`: (value, position after it); `None` if truncated or longer than 10 bytes.
fn varint(b: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(at)?;
        at += 1;
        if shift == 63 && byte > 1 {
            // A tenth byte may carry only the top bit; prost rejects the rest, and so do we.
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v, at));
        }
    }
    None
}

/// One field at `at`: (field number, wire type, where its value starts, where it ends). A
/// length-delimited field's end may lie beyond `b` (its value need not be in the bytes given).
fn field(b: &[u8], at: usize) -> Option<(u64, u8, usize, usize)> {
    let (key, at) = varint(b, at)?;
    let (number, wire) = (key >> 3, (key & 7) as u8);
    let end = match wire {
        0 => varint(b, at)?.1,
        1 => at.checked_add(8)?,
        2 => {
            let (len, start) = varint(b, at)?;
            return Some((number, wire, start, start.checked_add(usize::try_from(len).ok()?)?));
        }
        5 => at.checked_add(4)?,
        _ => return None,
    };
    Some((number, wire, at, end))
}

/// Finds the payload of the data message whose first bytes are `prefix`: the name prefix, the
/// `Sample` fields before `content`, and the content fields before the payload's length must all
/// lie in `prefix` (the payload itself need not). `None` when they do not, or when the message is
/// not laid out as a data sample.
pub fn locate_payload(prefix: &[u8]) -> Option<PayloadSpan> {
    let frame = SampleFrame::new_checked(prefix).ok()?;
    let body_start = prefix.len() - frame.body().len();
    let mut at = body_start;
    loop {
        let key_at = at;
        let (number, wire, start, end) = field(prefix, at)?;
        if number == 6 && wire == 2 {
            let mut c = start;
            while c < end {
                let (n, w, s, e) = field(prefix, c)?;
                if n == 4 && w == 2 {
                    if e > end || s > prefix.len() {
                        return None;
                    }
                    return Some(PayloadSpan {
                        body_start,
                        content_key: key_at,
                        content: (start, end),
                        payload_key: c,
                        payload: (s, e),
                    });
                }
                if e > prefix.len() {
                    return None;
                }
                c = e;
            }
            return None;
        }
        if end > prefix.len() {
            return None;
        }
        at = end;
    }
}

/// Whether the fields in `b` (a run of whole fields) include `number`; `None` if `b` is not a run
/// of whole fields.
fn has_field(b: &[u8], number: u64) -> Option<bool> {
    let mut at = 0;
    let mut found = false;
    while at < b.len() {
        let (n, _, _, end) = field(b, at)?;
        if end > b.len() {
            return None;
        }
        found |= n == number;
        at = end;
    }
    Some(found)
}

/// Decodes the `Sample` of a data message held in three parts, `head` (the message up to the
/// payload's bytes, as [`locate_payload`] found them in `span`), the payload (not given: it stays
/// in its own buffer, the caller sets it) and `tail` (the message after the payload), as prost
/// would decode the whole message, except that `content.payload` is left empty.
///
/// `None` when the parts are not that (the caller then decodes the whole message): a second
/// `content` outside the first, a second payload inside it (protobuf's last-one-wins would make
/// it the payload), bytes that are not whole fields, or a `tail` shorter than the content's rest.
pub fn decode_without_payload(
    head: &[u8],
    span: &PayloadSpan,
    tail: &[u8],
) -> Option<Result<Sample, prost::DecodeError>> {
    let PayloadSpan { body_start, content_key, content, payload_key, payload } = *span;
    if head.len() != payload.0 || payload_key > payload.0 || content_key > payload_key {
        return None;
    }
    // The content after the payload, and the Sample after the content, are in `tail`.
    let content_rest = content.1.checked_sub(payload.1)?;
    if content_rest > tail.len() {
        return None;
    }
    let before = head.get(body_start..content_key)?;
    let content_before = head.get(content.0..payload_key)?;
    let (content_after, after) = tail.split_at(content_rest);
    if has_field(before, 6)? || has_field(after, 6)? || has_field(content_before, 4)? || has_field(content_after, 4)? {
        return None;
    }
    // The same message with the payload field cut out (and the content's length adjusted).
    let inner = content_before.len() + content_after.len();
    let mut skeleton = Vec::with_capacity(before.len() + 11 + inner + after.len());
    skeleton.extend_from_slice(before);
    skeleton.push(0x32);
    prost::encoding::encode_varint(inner as u64, &mut skeleton);
    skeleton.extend_from_slice(content_before);
    skeleton.extend_from_slice(content_after);
    skeleton.extend_from_slice(after);
    Some(Sample::decode(&skeleton[..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{encode_data_message, DataHeader, Topic};

    fn message(payload: &[u8]) -> Vec<u8> {
        let header =
            Topic { topic_name: "t".into(), topic_id: "42".into(), host_name: "h".into(), ..Default::default() }
                .encode_to_vec();
        let h = DataHeader { topic_name: "t", topic_header: &header, clock: 7, time_us: 9, hash: 3 };
        let mut out = Vec::new();
        encode_data_message(&mut out, &h, payload.len(), |o| o.extend_from_slice(payload));
        out
    }

    #[test]
    fn finds_the_payload_of_our_messages_from_their_first_bytes_and_decodes_the_rest() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let m = message(&payload);
        let span = locate_payload(&m[..300]).expect("found in the first 300 bytes");
        assert_eq!(&m[span.payload_range()], &payload[..]);
        let whole = Sample::decode(&m[span.body_start..]).unwrap();
        let (head, tail) = (&m[..span.payload.0], &m[span.payload.1..]);
        let mut split = decode_without_payload(head, &span, tail).unwrap().unwrap();
        assert!(split.content.as_ref().unwrap().payload.is_empty());
        split.content.as_mut().unwrap().payload = bytes::Bytes::from(payload);
        assert_eq!(split, whole);
        // Too few bytes to reach the payload's length: not found.
        assert_eq!(locate_payload(&m[..20]), None);
    }

    #[test]
    fn refuses_what_it_cannot_split_faithfully() {
        let m = message(&[5; 1000]);
        let span = locate_payload(&m).unwrap();
        let (head, tail) = (&m[..span.payload.0], &m[span.payload.1..]);
        // A second payload after the first (last one wins in protobuf): not split.
        let mut tail2 = vec![0x22, 0x01, 0xAA];
        tail2.extend_from_slice(tail);
        let mut span2 = span;
        span2.content.1 += 3;
        assert_eq!(decode_without_payload(head, &span2, &tail2), None);
        // A second content after the first: not split.
        let mut tail3 = tail.to_vec();
        tail3.extend_from_slice(&[0x32, 0x00]);
        assert_eq!(decode_without_payload(head, &span, &tail3), None);
        // A tail shorter than the content's rest (the content claims 5 bytes after the payload):
        // not split.
        let mut span4 = span;
        span4.content.1 += 5;
        assert_eq!(decode_without_payload(head, &span4, &tail[..2]), None);
        // No content at all, or a group: nothing located.
        let mut no_content = Vec::new();
        crate::wire::SampleFrameRepr { name: "t" }.emit_prefix(&mut no_content);
        no_content.extend_from_slice(&[0x08, 0x01]);
        assert_eq!(locate_payload(&no_content), None);
        let mut group = no_content.clone();
        group.extend_from_slice(&[0x0b, 0x0c]);
        assert_eq!(locate_payload(&group), None);
    }

    #[test]
    fn a_ten_byte_varint_overflowing_64_bits_is_refused_as_prost_refuses_it() {
        let mut ok = vec![0xff; 9];
        ok.push(0x01);
        assert_eq!(varint(&ok, 0), Some((u64::MAX, 10)));
        assert!(prost::encoding::decode_varint(&mut &ok[..]).is_ok());
        for last in [0x02u8, 0x7f] {
            let mut bad = vec![0xff; 9];
            bad.push(last);
            assert_eq!(varint(&bad, 0), None, "tenth byte {last:#x}");
            assert!(prost::encoding::decode_varint(&mut &bad[..]).is_err());
        }
    }
}
