//! The publisher's hot path: one data message (sample frame + `Sample` protobuf) written straight
//! into the send buffer, with the payload encoded once, in place, by the codec.
//!
//! Hand-written rather than `Sample { .. }.encode()` because prost needs the payload as a
//! `Bytes` that already exists (one more copy of a possibly 8 MiB message) and the pre-encoded
//! `Topic` header would be re-encoded per message. Field order differs from prost's (the payload
//! goes last inside `content`, so it is written once); any field order is valid protobuf, and
//! the round-trip test below decodes the result with prost.

use super::{CmdType, Content};
use crate::wire::SampleFrameRepr;
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;

/// What a data message carries besides its payload.
#[derive(Debug, Clone, Copy)]
pub struct DataHeader<'a> {
    /// The topic: the sample name in front of the protobuf.
    pub topic_name: &'a str,
    /// `Sample.topic` already encoded (name, id, process id, host): the same for every message.
    pub topic_header: &'a [u8],
    /// The publisher's send counter for this message (`Content::clock`).
    pub clock: i64,
    /// Send time, µs since the Unix epoch.
    pub time_us: i64,
    /// `Content::hash`: `entity_id XOR (clock << 1)`, as eCAL writes it.
    pub hash: i64,
}

/// Appends the whole data message to `out`: `Sample{1 cmd_type, 5 topic, 6 content{2 clock,
/// 3 time, 6 size, 7 hash, 4 payload}, 8 padding}` after the name prefix. `write_payload` must
/// append exactly `payload_len` bytes.
///
/// # Panics
/// In debug builds, when `write_payload` appends a different number of bytes.
pub fn encode_data_message(
    out: &mut Vec<u8>,
    h: &DataHeader<'_>,
    payload_len: usize,
    write_payload: impl FnOnce(&mut Vec<u8>),
) {
    // The content fields before the payload: at most 4 varints of 10 bytes plus tags.
    let mut head = [0u8; 48];
    let head_len = {
        let mut w: &mut [u8] = &mut head[..];
        Content {
            id: 0,
            clock: h.clock,
            time: h.time_us,
            size: i32::try_from(payload_len).unwrap_or(0),
            hash: h.hash,
            payload: bytes::Bytes::new(),
        }
        .encode_raw(&mut w);
        48 - w.len()
    };
    let payload_field = if payload_len > 0 { 1 + encoded_len_varint(payload_len as u64) + payload_len } else { 0 };
    let content_len = head_len + payload_field;
    out.reserve(h.topic_name.len() + 3 + 3 + 10 + h.topic_header.len() + 11 + content_len + 2);
    SampleFrameRepr { name: h.topic_name }.emit_prefix(out);
    out.extend_from_slice(&[0x08, CmdType::SetSample as u8, 0x2a]);
    encode_varint(h.topic_header.len() as u64, out);
    out.extend_from_slice(h.topic_header);
    out.push(0x32);
    encode_varint(content_len as u64, out);
    out.extend_from_slice(&head[..head_len]);
    if payload_len > 0 {
        out.push(0x22);
        encode_varint(payload_len as u64, out);
        let before = out.len();
        write_payload(out);
        debug_assert_eq!(out.len() - before, payload_len, "payload writer disagrees with payload_len");
    }
    out.extend_from_slice(&[0x42, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Sample, Topic};
    use crate::wire::SampleFrame;

    fn encode(payload: &[u8], clock: i64) -> (Vec<u8>, Vec<u8>) {
        let topic = Topic {
            topic_name: "chatter".into(),
            topic_id: "1234567890123".into(),
            process_id: 4242,
            host_name: "vm".into(),
            ..Default::default()
        };
        let header = topic.encode_to_vec();
        let h = DataHeader {
            topic_name: "chatter",
            topic_header: &header,
            clock,
            time_us: 1_700_000_000_000_000,
            hash: -77,
        };
        let mut ours = Vec::new();
        encode_data_message(&mut ours, &h, payload.len(), |o| o.extend_from_slice(payload));
        // The same message built by prost.
        let sample = Sample {
            cmd_type: CmdType::SetSample as i32,
            topic: Some(topic),
            content: Some(Content {
                id: 0,
                clock,
                time: h.time_us,
                size: payload.len() as i32,
                hash: -77,
                payload: bytes::Bytes::copy_from_slice(payload),
            }),
            padding: vec![],
            ..Default::default()
        };
        let mut theirs = Vec::new();
        SampleFrameRepr { name: "chatter" }.emit_prefix(&mut theirs);
        sample.encode_raw(&mut theirs);
        (ours, theirs)
    }

    #[test]
    fn prost_decodes_exactly_what_prost_would_have_encoded() {
        for (payload, clock) in
            [(&b""[..], 1), (&b"hello"[..], 2), (&[7u8; 300][..], i64::MAX), (&[0u8; 70_000][..], -1)]
        {
            let (ours, theirs) = encode(payload, clock);
            let a = SampleFrame::new_checked(&ours).unwrap();
            let b = SampleFrame::new_checked(&theirs).unwrap();
            assert_eq!(a.name(), "chatter");
            let (sa, sb) = (Sample::decode(a.body()).unwrap(), Sample::decode(b.body()).unwrap());
            assert_eq!(sa, sb, "payload {}", payload.len());
            assert_eq!(&sa.content.unwrap().payload[..], payload);
        }
    }
}
