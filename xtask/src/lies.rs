//! The lying peer of `cargo xtask torture` (`cargo xtask torture-lie CASE SECONDS`, run inside
//! the publisher's namespace): well-formed eCAL samples and registrations that name someone
//! else's ids, as any peer on the segment can send them. It first listens to registration (as
//! an attacker would) until it has heard the live publisher and subscriber of the torture
//! topic, then, for one case:
//!
//! * `forged_max_clock`: one data sample naming the live publisher with `clock = i64::MAX` (a
//!   payload that passes the subscriber's per-clock check), mid-stream;
//! * `registration_flood`: registrations of made-up publishers with 60 KB descriptors, 400 a
//!   second (24 MB/s);
//! * `forged_unregistration`: every 500 ms, the unregistration of the live subscriber and of the
//!   live publisher, their host and process copied from their registration;
//! * `identity_collision`: every 500 ms, the live subscriber's and publisher's ids registered
//!   with another topic and host, and the subscriber's process with another unit name.
//!
//! Prints one JSON line: the case, the datagrams sent, and the ids it lied about.

use anyhow::{bail, Context};
use middleware_core::pb::{CmdType, Content, DataTypeInformation, Process, Sample, Topic};
use middleware_core::topic_group::{topic_group, GroupMapping};
use middleware_core::wire::{Datagram, SampleFrame, SampleFrameRepr};
use prost::Message;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::hostile::{DATA_PORT, GROUP, REG_PORT};

/// The lying cases: (name, what it sends).
pub const CASES: &[(&str, &str)] = &[
    ("forged_max_clock", "one data sample naming the live publisher with clock i64::MAX, mid-stream"),
    ("registration_flood", "registrations of made-up publishers with 60 KB descriptors, 400/s"),
    ("forged_unregistration", "the live subscriber's and publisher's unregistrations, every 500 ms"),
    (
        "identity_collision",
        "the live subscriber's, publisher's and process's ids with other topic, host, unit, every 500 ms",
    ),
];

/// What registration told about the live entities of `topic`.
struct Heard {
    publisher: Topic,
    subscriber: Topic,
    subscriber_process: Option<Process>,
}

/// Listens on the registration port until the publisher and subscriber of `topic` are heard.
fn listen(topic: &str, within: Duration) -> anyhow::Result<Heard> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, REG_PORT)))?;
    s.join_multicast_v4(&GROUP, &Ipv4Addr::UNSPECIFIED).context("joining the registration group")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let s: UdpSocket = s.into();
    let (mut publisher, mut subscriber, mut processes) = (None, None, Vec::new());
    let end = Instant::now() + within;
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < end {
        let Ok(n) = s.recv(&mut buf) else { continue };
        let Ok(d) = Datagram::new_checked(&buf[..n]) else { continue };
        let Ok(frame) = SampleFrame::new_checked(d.body()) else { continue };
        let Ok(sample) = Sample::decode(frame.body()) else { continue };
        match (CmdType::try_from(sample.cmd_type), sample.topic, sample.process) {
            (Ok(CmdType::RegPublisher), Some(t), _) if t.topic_name == topic => publisher = Some(t),
            (Ok(CmdType::RegSubscriber), Some(t), _) if t.topic_name == topic => subscriber = Some(t),
            (Ok(CmdType::RegProcess), _, Some(p)) => processes.push(p),
            _ => {}
        }
        if let (Some(p), Some(sub)) = (&publisher, &subscriber) {
            let subscriber_process =
                processes.iter().find(|p| p.host_name == sub.host_name && p.process_id == sub.process_id).cloned();
            return Ok(Heard { publisher: p.clone(), subscriber: sub.clone(), subscriber_process });
        }
    }
    bail!("did not hear the publisher and subscriber of {topic} within {within:?}")
}

/// One whole eCAL message (type 3 datagram) carrying `sample` under `name`.
fn whole(name: &str, sample: &Sample) -> Vec<u8> {
    let mut msg = Vec::new();
    SampleFrameRepr { name }.emit_prefix(&mut msg);
    sample.encode_raw(&mut msg);
    let mut out = middleware_core::wire::DatagramRepr::Whole { len: msg.len() as u32 }.to_bytes().to_vec();
    out.extend_from_slice(&msg);
    out
}

fn registration(cmd: CmdType, topic: Option<Topic>, process: Option<Process>) -> Vec<u8> {
    whole(
        middleware_core::registration::REG_SAMPLE_NAME,
        &Sample { cmd_type: cmd as i32, topic, process, ..Default::default() },
    )
}

/// `torture-lie CASE SECONDS`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let [case, seconds] = args else { bail!("usage: torture-lie CASE SECONDS") };
    if !CASES.iter().any(|c| c.0 == case) {
        bail!("unknown lying case {case}");
    }
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let heard = listen(crate::torture::TOPIC, Duration::from_secs(15))?;
    let tx = UdpSocket::bind("0.0.0.0:0")?;
    tx.set_multicast_ttl_v4(1)?;
    // Looped back: the publisher on this host must hear the lies too.
    tx.set_multicast_loop_v4(true)?;
    let reg_to = SocketAddrV4::new(GROUP, REG_PORT);
    let data_group = topic_group(crate::torture::TOPIC, GROUP, Ipv4Addr::new(255, 255, 255, 240), GroupMapping::V2);
    let mut sent = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    match case.as_str() {
        "forged_max_clock" => {
            // Mid-way through the attack window: the stream has run before and runs after.
            std::thread::sleep(Duration::from_secs_f64(seconds / 2.0));
            let clock = i64::MAX;
            let k = (clock - 1).rem_euclid(251) as usize;
            let payload: Vec<u8> = (0..1000).map(|i| ((i + k) % 251) as u8).collect();
            let sample = Sample {
                cmd_type: CmdType::SetSample as i32,
                topic: Some(Topic {
                    topic_name: heard.publisher.topic_name.clone(),
                    topic_id: heard.publisher.topic_id.clone(),
                    host_name: heard.publisher.host_name.clone(),
                    process_id: heard.publisher.process_id,
                    ..Default::default()
                }),
                content: Some(Content { clock, payload: payload.into(), size: 1000, ..Default::default() }),
                ..Default::default()
            };
            tx.send_to(&whole(crate::torture::TOPIC, &sample), SocketAddrV4::new(data_group, DATA_PORT))?;
            sent += 1;
        }
        "registration_flood" => {
            let rate = 400.0;
            let mut i = 0u64;
            while Instant::now() < end {
                let t = Topic {
                    topic_name: format!("flood{}", i % 1000),
                    topic_id: (9_000_000_000 + i).to_string(),
                    host_name: "liar".into(),
                    process_id: 4242,
                    process_name: "liar".into(),
                    unit_name: "liar".into(),
                    datatype_information: Some(DataTypeInformation {
                        name: "pb.Flood".into(),
                        encoding: "proto".into(),
                        descriptor_information: vec![(i % 251) as u8; 60_000],
                    }),
                    ..Default::default()
                };
                tx.send_to(&registration(CmdType::RegPublisher, Some(t), None), reg_to)?;
                sent += 1;
                i += 1;
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        }
        "forged_unregistration" | "identity_collision" => {
            while Instant::now() < end {
                let lies = if case == "forged_unregistration" {
                    vec![
                        registration(CmdType::UnregSubscriber, Some(heard.subscriber.clone()), None),
                        registration(CmdType::UnregPublisher, Some(heard.publisher.clone()), None),
                    ]
                } else {
                    let elsewhere = |t: &Topic| Topic {
                        topic_name: "elsewhere".into(),
                        host_name: "impostor".into(),
                        transport_layer: Vec::new(),
                        ..t.clone()
                    };
                    let mut v = vec![
                        registration(CmdType::RegSubscriber, Some(elsewhere(&heard.subscriber)), None),
                        registration(CmdType::RegPublisher, Some(elsewhere(&heard.publisher)), None),
                    ];
                    if let Some(p) = &heard.subscriber_process {
                        let p = Process { unit_name: "impostor".into(), ..p.clone() };
                        v.push(registration(CmdType::RegProcess, None, Some(p)));
                    }
                    v
                };
                for l in lies {
                    tx.send_to(&l, reg_to)?;
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        _ => unreachable!("checked above"),
    }
    println!(
        "{}",
        serde_json::json!({
            "case": case, "datagrams": sent,
            "publisher_id": heard.publisher.topic_id, "subscriber_id": heard.subscriber.topic_id,
        })
    );
    Ok(())
}
