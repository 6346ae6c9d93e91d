//! How typed values become payload bytes, and what datatype a topic announces.

use crate::pb::DataTypeInformation;
use std::marker::PhantomData;

/// Payload could not be decoded into the subscriber's type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {type_name}: {reason}")]
pub struct CodecError {
    /// The subscriber's type (e.g. `String`, the protobuf message name).
    pub type_name: String,
    /// What was wrong with the bytes.
    pub reason: String,
}

/// Maps a Rust type to eCAL payload bytes and datatype information.
pub trait Codec: Send + Sync + 'static {
    /// What a publisher sends (borrowed).
    type Input: ?Sized;
    /// What a subscriber receives (owned).
    type Output: Send + 'static;
    /// The datatype announced in registration.
    fn datatype() -> DataTypeInformation;
    /// Exact number of bytes [`Codec::encode`] appends.
    fn encoded_len(value: &Self::Input) -> usize;
    /// Appends the payload bytes of `value` to `out` (exactly [`Codec::encoded_len`] bytes).
    fn encode(value: &Self::Input, out: &mut Vec<u8>);
    /// # Errors
    /// Payload not valid for the type.
    fn decode(payload: Vec<u8>) -> Result<Self::Output, CodecError>;
}

/// Raw bytes; announces no datatype unless wrapped (eCAL's `bytes`/`raw` is used by its tools).
#[derive(Debug)]
pub struct Raw;

impl Codec for Raw {
    type Input = [u8];
    type Output = Vec<u8>;
    fn datatype() -> DataTypeInformation {
        DataTypeInformation { name: "bytes".into(), encoding: "raw".into(), descriptor_information: Vec::new() }
    }
    fn encoded_len(v: &[u8]) -> usize {
        v.len()
    }
    fn encode(v: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(v);
    }
    fn decode(p: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(p)
    }
}

/// Text, as eCAL's `std::string` / `base` string messages.
#[derive(Debug)]
pub struct Text;

impl Codec for Text {
    type Input = str;
    type Output = String;
    fn datatype() -> DataTypeInformation {
        DataTypeInformation { name: "std::string".into(), encoding: "base".into(), descriptor_information: Vec::new() }
    }
    fn encoded_len(v: &str) -> usize {
        v.len()
    }
    fn encode(v: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(v.as_bytes());
    }
    fn decode(p: Vec<u8>) -> Result<String, CodecError> {
        String::from_utf8(p).map_err(|e| CodecError { type_name: "std::string".into(), reason: e.to_string() })
    }
}

/// A protobuf message type with the metadata eCAL announces for `proto` topics.
pub trait ProtoType: prost::Message + Default + Send + 'static {
    /// Full protobuf name, e.g. `pb.People.Person`.
    fn full_name() -> String;
    /// Serialized `google.protobuf.FileDescriptorSet` holding the type and its dependencies,
    /// used by tools to decode without the `.proto` file. Empty when unknown.
    fn descriptor() -> Vec<u8> {
        Vec::new()
    }
}

/// Protobuf messages (`proto` encoding).
#[derive(Debug)]
pub struct Proto<M>(PhantomData<fn() -> M>);

impl<M: ProtoType> Codec for Proto<M> {
    type Input = M;
    type Output = M;
    fn datatype() -> DataTypeInformation {
        DataTypeInformation { name: M::full_name(), encoding: "proto".into(), descriptor_information: M::descriptor() }
    }
    fn encoded_len(v: &M) -> usize {
        v.encoded_len()
    }
    fn encode(v: &M, out: &mut Vec<u8>) {
        // Cannot fail: Vec grows as needed.
        v.encode_raw(out);
    }
    fn decode(p: Vec<u8>) -> Result<M, CodecError> {
        M::decode(&*p).map_err(|e| CodecError { type_name: M::full_name(), reason: e.to_string() })
    }
}
