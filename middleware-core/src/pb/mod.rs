//! The protobuf messages of package `eCAL.pb` that the UDP layer carries (SPEC §5), written
//! from the SPEC's field tables with `prost` derives: no `.proto` files and no `protoc`.
//!
//! Only fields eCAL 6.1 reads or writes are declared; everything else (legacy `Host`, services)
//! is skipped by prost as unknown fields, which is what a receiver must do (SPEC §9).

#![allow(clippy::derive_partial_eq_without_eq)]

/// `eCAL.pb.eCmdType` (SPEC §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CmdType {
    None = 0,
    SetSample = 1,
    RegPublisher = 2,
    RegSubscriber = 3,
    RegProcess = 4,
    RegService = 5,
    RegClient = 6,
    UnregPublisher = 12,
    UnregSubscriber = 13,
    UnregProcess = 14,
    UnregService = 15,
    UnregClient = 16,
}

/// Top-level message of every eCAL datagram.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(enumeration = "CmdType", tag = "1")]
    pub cmd_type: i32,
    #[prost(message, optional, tag = "3")]
    pub process: Option<Process>,
    #[prost(message, optional, tag = "5")]
    pub topic: Option<Topic>,
    #[prost(message, optional, tag = "6")]
    pub content: Option<Content>,
    /// Legacy alignment bytes; eCAL writes an empty value.
    #[prost(bytes = "vec", tag = "8")]
    pub padding: Vec<u8>,
}

/// `eCAL.pb.Topic`: registration of a publisher/subscriber and the header of data samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Topic {
    #[prost(int32, tag = "1")]
    pub registration_clock: i32,
    #[prost(string, tag = "2")]
    pub host_name: String,
    #[prost(string, tag = "28")]
    pub shm_transport_domain: String,
    #[prost(int32, tag = "3")]
    pub process_id: i32,
    #[prost(string, tag = "4")]
    pub process_name: String,
    #[prost(string, tag = "5")]
    pub unit_name: String,
    /// The 64-bit entity id as decimal ASCII; eCAL drops a sample whose id is not numeric.
    #[prost(string, tag = "6")]
    pub topic_id: String,
    #[prost(string, tag = "7")]
    pub topic_name: String,
    #[prost(string, tag = "8")]
    pub direction: String,
    #[prost(message, optional, tag = "30")]
    pub datatype_information: Option<DataTypeInformation>,
    #[prost(message, repeated, tag = "12")]
    pub transport_layer: Vec<TransportLayer>,
    #[prost(int32, tag = "13")]
    pub topic_size: i32,
    #[prost(int32, tag = "16")]
    pub connections_local: i32,
    #[prost(int32, tag = "17")]
    pub connections_external: i32,
    #[prost(int32, tag = "18")]
    pub message_drops: i32,
    #[prost(int64, tag = "19")]
    pub data_id: i64,
    #[prost(int64, tag = "20")]
    pub data_clock: i64,
    #[prost(int32, tag = "21")]
    pub data_frequency: i32,
    #[prost(message, optional, tag = "31")]
    pub data_latency_us: Option<Statistics>,
}

/// `eCAL.pb.Content`: one published message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Content {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub clock: i64,
    #[prost(int64, tag = "3")]
    pub time: i64,
    /// `Bytes`, so that decoding from a reassembled buffer slices it instead of copying.
    #[prost(bytes = "bytes", tag = "4")]
    pub payload: bytes::Bytes,
    #[prost(int32, tag = "6")]
    pub size: i32,
    #[prost(int64, tag = "7")]
    pub hash: i64,
}

/// `eCAL.pb.DataTypeInformation`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DataTypeInformation {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub encoding: String,
    #[prost(bytes = "vec", tag = "3")]
    pub descriptor_information: Vec<u8>,
}

/// `eCAL.pb.eTLayerType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LayerType {
    None = 0,
    UdpMc = 1,
    Shm = 4,
    Tcp = 5,
    All = 255,
}

/// `eCAL.pb.TransportLayer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TransportLayer {
    #[prost(enumeration = "LayerType", tag = "1")]
    pub r#type: i32,
    #[prost(int32, tag = "2")]
    pub version: i32,
    #[prost(bool, tag = "3")]
    pub active: bool,
    #[prost(message, optional, tag = "5")]
    pub par_layer: Option<ConnectionPar>,
    #[prost(bool, tag = "6")]
    pub enabled: bool,
}

impl TransportLayer {
    /// eCAL 6.1 counts a layer as readable when it is enabled or older than version 2 (SPEC §7.4).
    pub fn is_usable(&self) -> bool {
        self.enabled || self.version < 2
    }
}

/// `eCAL.pb.ConnectionPar`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectionPar {
    #[prost(message, optional, tag = "1")]
    pub layer_par_udpmc: Option<LayerParUdpMc>,
    #[prost(message, optional, tag = "2")]
    pub layer_par_shm: Option<LayerParShm>,
    #[prost(message, optional, tag = "4")]
    pub layer_par_tcp: Option<LayerParTcp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParUdpMc {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParShm {
    #[prost(string, repeated, tag = "1")]
    pub memory_file_list: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParTcp {
    #[prost(int32, tag = "1")]
    pub port: i32,
}

/// `eCAL.pb.Statistics` (latency figures in µs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Statistics {
    #[prost(uint64, tag = "1")]
    pub count: u64,
    #[prost(double, tag = "2")]
    pub latest: f64,
    #[prost(double, tag = "3")]
    pub min: f64,
    #[prost(double, tag = "4")]
    pub max: f64,
    #[prost(double, tag = "5")]
    pub mean: f64,
    #[prost(double, tag = "6")]
    pub variance: f64,
}

/// `eCAL.pb.Process` (cmd 4 / 14).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(int32, tag = "1")]
    pub registration_clock: i32,
    #[prost(string, tag = "2")]
    pub host_name: String,
    #[prost(int32, tag = "3")]
    pub process_id: i32,
    #[prost(string, tag = "4")]
    pub process_name: String,
    #[prost(string, tag = "5")]
    pub unit_name: String,
    #[prost(string, tag = "6")]
    pub process_parameter: String,
    #[prost(message, optional, tag = "12")]
    pub state: Option<ProcessState>,
    #[prost(int32, tag = "13")]
    pub time_sync_state: i32,
    #[prost(string, tag = "14")]
    pub time_sync_module_name: String,
    #[prost(int32, tag = "15")]
    pub component_init_state: i32,
    #[prost(string, tag = "16")]
    pub component_init_info: String,
    #[prost(string, tag = "17")]
    pub ecal_runtime_version: String,
    #[prost(string, tag = "18")]
    pub shm_transport_domain: String,
    #[prost(string, tag = "19")]
    pub config_file_path: String,
}

/// `eCAL.pb.ProcessState`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessState {
    #[prost(int32, tag = "1")]
    pub severity: i32,
    #[prost(string, tag = "2")]
    pub info: String,
    #[prost(int32, tag = "3")]
    pub severity_level: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The Sample of SPEC §11.1 (cap1 frame 14), body after the sample name.
    pub(crate) const CAP1_FRAME14_SAMPLE: &[u8] = &[
        0x08, 0x01, 0x2a, 0x28, 0x3a, 0x0a, b'w', b'i', b'r', b'e', b'_', b's', b'm', b'a', b'l', b'l', 0x32, 0x11,
        b'1', b'4', b'4', b'3', b'1', b'5', b'0', b'6', b'7', b'2', b'4', b'4', b'8', b'7', b'1', b'6', b'8', 0x18,
        0x00, 0x12, 0x05, b'h', b'o', b's', b't', b'a', 0x32, 0x24, 0x08, 0x00, 0x10, 0x01, 0x18, 0xbb, 0xf7, 0xe1,
        0xcf, 0xd1, 0x9b, 0x98, 0x03, 0x30, 0x00, 0x22, 0x0a, b'm', b's', b'g', b'-', b'0', b'0', b'0', b'0', b'0',
        b'0', 0x38, 0x82, 0x80, 0x8c, 0xff, 0x8f, 0xac, 0xd1, 0x19, 0x42, 0x00,
    ];

    #[test]
    fn decodes_real_data_sample() {
        let s = Sample::decode(CAP1_FRAME14_SAMPLE).unwrap();
        assert_eq!(s.cmd_type(), CmdType::SetSample);
        let t = s.topic.unwrap();
        assert_eq!(t.topic_name, "wire_small");
        assert_eq!(t.topic_id, "14431506724487168");
        assert_eq!(t.host_name, "hosta");
        let c = s.content.unwrap();
        assert_eq!(c.clock, 1);
        assert_eq!(c.time, 1795352600017851);
        assert_eq!(&c.payload[..], b"msg-000000");
        assert_eq!(c.hash, 14431506724487168 ^ (1 << 1));
    }

    #[test]
    fn unknown_cmd_type_is_kept() {
        let s = Sample { cmd_type: 99, ..Default::default() };
        let d = Sample::decode(&*s.encode_to_vec()).unwrap();
        assert_eq!(d.cmd_type, 99);
        assert!(CmdType::try_from(d.cmd_type).is_err());
    }
}

mod data_sample;
pub use data_sample::{encode_data_message, DataHeader};
