//! Shared by the example programs: payload generation, digests, process figures and the example
//! protobuf type. They open their nodes with `middleware::open_node`, as any application.

use sha2::{Digest, Sha256};

pub use middleware::cli::{init_logging, stop_on_ctrl_c, stopping, CommonArgs};

/// CPU time (user + system) this process has used so far, all threads (ended ones included), in
/// seconds: the process CPU clock (`CLOCK_PROCESS_CPUTIME_ID`, nanoseconds, through the `cpu-time`
/// crate), not `/proc/self/stat`'s 10 ms ticks, which cannot tell 1/2 from 1x over a few hundred
/// messages; `None` where the clock cannot be read.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_time::ProcessTime::try_now().ok().map(|t| t.as_duration().as_secs_f64())
}

/// The most resident memory this process has used (VmHWM), in KiB; `None` where
/// `/proc/self/status` does not exist (non-Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Payload `k` of the captures' `mod251` generator: `size` bytes, byte i = (i + k) mod 251.
pub fn mod251(size: usize, k: usize) -> Vec<u8> {
    (0..size).map(|i| ((i + k) % 251) as u8).collect()
}

/// Digest over a message stream, each message prefixed by its length as u64 little-endian
/// (the peer scripts that produced the captures' `*.pub.json` compute the same).
#[derive(Debug, Clone, Default)]
pub struct StreamDigest {
    h: Sha256,
    pub count: u64,
    pub bytes: u64,
    /// Count only (benchmarks: hashing 64 KiB costs more than receiving it).
    pub count_only: bool,
}

impl StreamDigest {
    pub fn counting_only() -> Self {
        Self { count_only: true, ..Self::default() }
    }
    pub fn update(&mut self, msg: &[u8]) {
        if !self.count_only {
            self.h.update((msg.len() as u64).to_le_bytes());
            self.h.update(msg);
        }
        self.count += 1;
        self.bytes += msg.len() as u64;
    }
    /// The digest, or an empty string when only counting.
    pub fn hex(&self) -> String {
        if self.count_only {
            return String::new();
        }
        self.h.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The example protobuf type: a person record, with a hand-built descriptor so eCAL tools can
/// decode it without the `.proto` file.
pub mod people {
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Person {
        #[prost(int32, tag = "1")]
        pub id: i32,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub email: String,
    }

    impl middleware::ProtoType for Person {
        fn full_name() -> String {
            "pb.People.Person".into()
        }
        fn descriptor() -> Vec<u8> {
            use prost_types::field_descriptor_proto::{Label, Type};
            use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};
            let field = |name: &str, number, ty: Type| FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(number),
                label: Some(Label::Optional as i32),
                r#type: Some(ty as i32),
                json_name: Some(name.into()),
                ..Default::default()
            };
            FileDescriptorSet {
                file: vec![FileDescriptorProto {
                    name: Some("person.proto".into()),
                    package: Some("pb.People".into()),
                    syntax: Some("proto3".into()),
                    message_type: vec![DescriptorProto {
                        name: Some("Person".into()),
                        field: vec![
                            field("id", 1, Type::Int32),
                            field("name", 2, Type::String),
                            field("email", 3, Type::String),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_capture_peer_json() {
        // cap1_small_strings.pub.json: 10 x "msg-%06d" -> eaa5d4ad...0754.
        let mut d = StreamDigest::default();
        for k in 0..10 {
            d.update(format!("msg-{k:06}").as_bytes());
        }
        assert_eq!(d.hex(), "eaa5d4ada75ffc9114ab23517827e97fd24ce0e8ef02bf077c07d5c6e6800754");
    }

    #[test]
    fn mod251_generator() {
        assert_eq!(mod251(4, 0), vec![0, 1, 2, 3]);
        assert_eq!(mod251(3, 250), vec![250, 0, 1]);
    }
}
