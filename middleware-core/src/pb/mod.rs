//! The protobuf messages of package `eCAL.pb` that the UDP layer carries (SPEC §5), written
//! from the SPEC's field tables with `prost` derives: no `.proto` files and no `protoc`.
//!
//! Field numbers and types are those of eCAL 6.1.1's `.proto` files
//! (`ecal/core_pb/src/ecal/core/pb/`). Only fields eCAL 6.1 reads or writes are declared;
//! everything else (legacy `Host`, services) is skipped by prost as unknown fields when decoding
//! (not kept), which is what a receiver must do (SPEC §9).
//!
//! Every registration sample and every data sample is a [`Sample`]; its [`CmdType`] says which
//! part is filled: [`Process`] for a process, [`Topic`] for a publisher or subscriber (and, in
//! data samples, the header naming topic and publisher), [`Content`] for the message itself.

#![allow(clippy::derive_partial_eq_without_eq)]

/// `eCAL.pb.eCmdType` (SPEC §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CmdType {
    /// No command (a default `Sample`); ignored.
    None = 0,
    /// A data sample: `topic` carries the topic header, `content` the message (data port).
    SetSample = 1,
    /// A publisher's registration (`topic`), repeated every refresh period.
    RegPublisher = 2,
    /// A subscriber's registration (`topic`), repeated every refresh period.
    RegSubscriber = 3,
    /// A process's registration (`process`), repeated every refresh period.
    RegProcess = 4,
    /// A service server's registration (RPC; not used by this implementation).
    RegService = 5,
    /// A service client's registration (RPC; not used by this implementation).
    RegClient = 6,
    /// A publisher is gone (sent once when it is dropped).
    UnregPublisher = 12,
    /// A subscriber is gone.
    UnregSubscriber = 13,
    /// A process is shutting down.
    UnregProcess = 14,
    /// A service server is gone (RPC).
    UnregService = 15,
    /// A service client is gone (RPC).
    UnregClient = 16,
}

/// Top-level message of every eCAL datagram.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// What the sample is ([`CmdType`] as its number; unknown values are kept, not rejected).
    #[prost(enumeration = "CmdType", tag = "1")]
    pub cmd_type: i32,
    /// The process part of commands 4 and 14.
    #[prost(message, optional, tag = "3")]
    pub process: Option<Process>,
    /// The entity part of commands 2, 3, 12, 13, and the topic header of data samples (command 1).
    #[prost(message, optional, tag = "5")]
    pub topic: Option<Topic>,
    /// The message of a data sample (command 1).
    #[prost(message, optional, tag = "6")]
    pub content: Option<Content>,
    /// Legacy alignment bytes; eCAL writes an empty value.
    #[prost(bytes = "vec", tag = "8")]
    pub padding: Vec<u8>,
}

/// `eCAL.pb.Topic`: registration of a publisher/subscriber and the header of data samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Topic {
    /// Registration counter; eCAL 6.1 always writes 0.
    #[prost(int32, tag = "1")]
    pub registration_clock: i32,
    /// Host name of the sending process (`gethostname()` unless configured); equal host names are the
    /// same host to eCAL.
    #[prost(string, tag = "2")]
    pub host_name: String,
    /// Shared-memory domain; defaults to the host name.
    #[prost(string, tag = "28")]
    pub shm_transport_domain: String,
    /// Process id of the entity's process (eCAL writes 0 in data samples).
    #[prost(int32, tag = "3")]
    pub process_id: i32,
    /// Executable path of the entity's process.
    #[prost(string, tag = "4")]
    pub process_name: String,
    /// Unit (node) name given at initialisation.
    #[prost(string, tag = "5")]
    pub unit_name: String,
    /// The 64-bit entity id as decimal ASCII; eCAL drops a sample whose id is not numeric.
    #[prost(string, tag = "6")]
    pub topic_id: String,
    /// The topic's name (also the sample name of data messages).
    #[prost(string, tag = "7")]
    pub topic_name: String,
    /// Legacy; eCAL 6.1 writes it empty.
    #[prost(string, tag = "8")]
    pub direction: String,
    /// What the topic's messages are (name, encoding, descriptor).
    #[prost(message, optional, tag = "30")]
    pub datatype_information: Option<DataTypeInformation>,
    /// The transport layers the entity has, with whether each is enabled and has carried data.
    #[prost(message, repeated, tag = "12")]
    pub transport_layer: Vec<TransportLayer>,
    /// Size in bytes of the last message sent (publisher) or received (subscriber).
    #[prost(int32, tag = "13")]
    pub topic_size: i32,
    /// Matched peers on the same host (for a publisher: connected subscribers).
    #[prost(int32, tag = "16")]
    pub connections_local: i32,
    /// Matched peers on other hosts.
    #[prost(int32, tag = "17")]
    pub connections_external: i32,
    /// Messages a subscriber found missing (gaps in a publisher's clock).
    #[prost(int32, tag = "18")]
    pub message_drops: i32,
    /// The last message's `Content::id` (publisher; 0: the deprecated filter id is not used).
    #[prost(int64, tag = "19")]
    pub data_id: i64,
    /// Messages sent (publisher) or accepted (subscriber) so far.
    #[prost(int64, tag = "20")]
    pub data_clock: i64,
    /// Message rate in millihertz (messages per 1000 s), over eCAL's resettable window.
    #[prost(int32, tag = "21")]
    pub data_frequency: i32,
    /// Receive latency in µs (subscribers: count, latest, min, max, mean and M2); publishers send
    /// the empty statistics.
    #[prost(message, optional, tag = "31")]
    pub data_latency_us: Option<Statistics>,
}

/// `eCAL.pb.Content`: one published message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Content {
    /// Deprecated user filter id; eCAL writes 0.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The publisher's send counter: +1 per `send()` call, whether or not it was sent; subscribers
    /// find drops and duplicates by it.
    #[prost(int64, tag = "2")]
    pub clock: i64,
    /// Send time, µs since the Unix epoch on the sender's clock.
    #[prost(int64, tag = "3")]
    pub time: i64,
    /// `Bytes`, so that decoding from a reassembled buffer slices it instead of copying.
    #[prost(bytes = "bytes", tag = "4")]
    pub payload: bytes::Bytes,
    /// Payload size; eCAL's UDP writer leaves it 0.
    #[prost(int32, tag = "6")]
    pub size: i32,
    /// `entity_id XOR (clock << 1)`, informational (eCAL does not check it).
    #[prost(int64, tag = "7")]
    pub hash: i64,
}

/// `eCAL.pb.DataTypeInformation`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DataTypeInformation {
    /// Datatype name: the full protobuf message name (`pb.People.Person`), `std::string`, `bytes`, or
    /// empty for raw data.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How the payload is encoded: `proto`, `base` (strings), `raw`, or empty.
    #[prost(string, tag = "2")]
    pub encoding: String,
    /// What a reader needs to decode the payload: for `proto`, a serialized protobuf
    /// `FileDescriptorSet` holding the message type and its dependencies.
    #[prost(bytes = "vec", tag = "3")]
    pub descriptor_information: Vec<u8>,
}

/// `eCAL.pb.eTLayerType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LayerType {
    /// No layer.
    None = 0,
    /// UDP multicast / broadcast: the layer this implementation speaks.
    UdpMc = 1,
    /// Shared memory (same host).
    Shm = 4,
    /// TCP.
    Tcp = 5,
    /// Every layer (a filter value, not a layer).
    All = 255,
}

/// `eCAL.pb.TransportLayer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TransportLayer {
    /// The layer ([`LayerType`] as its number).
    #[prost(enumeration = "LayerType", tag = "1")]
    pub r#type: i32,
    /// Layer protocol version; eCAL 6.1 writes 2 (receivers treat older entries as enabled).
    #[prost(int32, tag = "2")]
    pub version: i32,
    /// The layer has carried data for this entity.
    #[prost(bool, tag = "3")]
    pub active: bool,
    /// Layer parameters (the TCP port, SHM memory files); omitted for UDP.
    #[prost(message, optional, tag = "5")]
    pub par_layer: Option<ConnectionPar>,
    /// The layer is switched on for this entity.
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
    /// UDP parameters (none).
    #[prost(message, optional, tag = "1")]
    pub layer_par_udpmc: Option<LayerParUdpMc>,
    /// Shared-memory parameters.
    #[prost(message, optional, tag = "2")]
    pub layer_par_shm: Option<LayerParShm>,
    /// TCP parameters.
    #[prost(message, optional, tag = "4")]
    pub layer_par_tcp: Option<LayerParTcp>,
}

/// `eCAL.pb.LayerParUdpMC`: UDP layer parameters (an empty message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParUdpMc {}

/// `eCAL.pb.LayerParShm`: shared-memory layer parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParShm {
    /// Names of the publisher's memory files.
    #[prost(string, repeated, tag = "1")]
    pub memory_file_list: Vec<String>,
}

/// `eCAL.pb.LayerParTcp`: TCP layer parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParTcp {
    /// The publisher's TCP port (0: none).
    #[prost(int32, tag = "1")]
    pub port: i32,
}

/// `eCAL.pb.Statistics` (latency figures in µs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Statistics {
    /// Samples in the statistics.
    #[prost(uint64, tag = "1")]
    pub count: u64,
    /// The last sample.
    #[prost(double, tag = "2")]
    pub latest: f64,
    /// Smallest sample (+inf when there is none).
    #[prost(double, tag = "3")]
    pub min: f64,
    /// Largest sample (-inf when there is none).
    #[prost(double, tag = "4")]
    pub max: f64,
    /// Running mean.
    #[prost(double, tag = "5")]
    pub mean: f64,
    /// What eCAL 6.1 writes here: Welford's M2 (the sum of squared deviations), not divided by the
    /// count.
    #[prost(double, tag = "6")]
    pub variance: f64,
}

/// `eCAL.pb.Process` (cmd 4 / 14).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    /// Registration counter; eCAL 6.1 always writes 0.
    #[prost(int32, tag = "1")]
    pub registration_clock: i32,
    /// Host name of the process.
    #[prost(string, tag = "2")]
    pub host_name: String,
    /// Operating-system process id.
    #[prost(int32, tag = "3")]
    pub process_id: i32,
    /// Executable path.
    #[prost(string, tag = "4")]
    pub process_name: String,
    /// Unit (node) name given at initialisation.
    #[prost(string, tag = "5")]
    pub unit_name: String,
    /// The full command line.
    #[prost(string, tag = "6")]
    pub process_parameter: String,
    /// How the process says it is doing (eCAL's `Process::SetState`).
    #[prost(message, optional, tag = "12")]
    pub state: Option<ProcessState>,
    /// Time synchronisation: 0 none, 1 realtime, 2 replay.
    #[prost(int32, tag = "13")]
    pub time_sync_state: i32,
    /// The time synchronisation module (e.g. `ecaltime-localtime`).
    #[prost(string, tag = "14")]
    pub time_sync_module_name: String,
    /// Bitmask of initialised components (0x01 publisher, 0x02 subscriber, 0x04 service, 0x08
    /// monitoring, 0x10 logging, 0x20 time).
    #[prost(int32, tag = "15")]
    pub component_init_state: i32,
    /// The same as text, e.g. `pub|sub|log|time`.
    #[prost(string, tag = "16")]
    pub component_init_info: String,
    /// The eCAL version the process runs (`v6.1.1`).
    #[prost(string, tag = "17")]
    pub ecal_runtime_version: String,
    /// Shared-memory domain; defaults to the host name.
    #[prost(string, tag = "18")]
    pub shm_transport_domain: String,
    /// The configuration file the process loaded.
    #[prost(string, tag = "19")]
    pub config_file_path: String,
}

/// `eCAL.pb.ProcessState`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessState {
    /// 0 unknown, 1 healthy, 2 warning, 3 critical, 4 failed.
    #[prost(int32, tag = "1")]
    pub severity: i32,
    /// Free text shown with the state.
    #[prost(string, tag = "2")]
    pub info: String,
    /// Level 1-5 within the severity (application-defined).
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
mod payload_span;
pub use payload_span::{decode_without_payload, locate_payload, PayloadSpan};
