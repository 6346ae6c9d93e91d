//! `mwctl doctor`: checks what breaks deployments, says how to fix each, exits non-zero when
//! something is wrong.

use middleware::core::config::{Mode, TransportKind};
use middleware::core::fragment::{Outcome, Reassembler};
use middleware::core::pb::Sample;
use middleware::core::wire::SampleFrame;
use middleware::core::Config;
use middleware::socket::InterfaceInfo;
use prost::Message;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check { name, status, detail: detail.into(), fix }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds to listen for peers' registration (mode and host name checks).
    #[arg(long, default_value_t = 2.5)]
    listen: f64,
}

fn host_name(config: &Config) -> String {
    config.host_name().map_or_else(|| gethostname::gethostname().to_string_lossy().into_owned(), str::to_string)
}

/// The capture library and the permission to capture on the devices this config would use.
fn capture_checks(config: &Config, out: &mut Vec<Check>) {
    let needed = match config.transport() {
        TransportKind::Npcap => Status::Fail,
        TransportKind::Auto => Status::Warn,
        TransportKind::Socket => Status::Info,
    };
    let consequence = match config.transport() {
        TransportKind::Npcap => "the npcap transport cannot start",
        TransportKind::Auto => "transport auto falls back to sockets",
        TransportKind::Socket => "not needed: this config uses the socket transport",
    };
    let available = middleware::npcap::availability(config);
    let decision = middleware::npcap::decide(config.mode(), &available);
    match &available.library {
        Ok((path, version)) => {
            let devices = available.devices.as_ref().map_or(0, Vec::len);
            out.push(check(
                "capture library",
                Status::Ok,
                format!("{version}, loaded at run time from {path}; {devices} capture devices"),
                None,
            ))
        }
        Err(e) => {
            out.push(check(
                "capture library",
                needed,
                format!("{e} ({consequence})"),
                Some(if cfg!(windows) {
                    "install Npcap from https://npcap.com (WinPcap API-compatible mode not required)".into()
                } else {
                    "install libpcap: `apt-get install libpcap0.8` (Debian/Ubuntu)".into()
                }),
            ));
            auto_choice(config, &decision.reason, false, out);
            return;
        }
    }
    if !decision.capture {
        out.push(check("capture devices", needed, format!("{} ({consequence})", decision.reason), None));
        auto_choice(config, &decision.reason, false, out);
        return;
    }
    let factory = match middleware::npcap::NpcapFactory::new(config) {
        Ok(f) => f,
        Err(e) => {
            out.push(check("capture permission", Status::Fail, format!("bad npcap.* option: {e}"), None));
            return;
        }
    };
    match factory.check() {
        Ok(devices) => {
            out.push(check("capture permission", Status::Ok, format!("can capture on {}", devices.join(", ")), None));
            auto_choice(config, &decision.reason, true, out);
        }
        Err(e) => {
            out.push(check(
                "capture permission",
                needed,
                format!("{e} ({consequence})"),
                Some("run as root, or `sudo setcap cap_net_raw,cap_net_admin=eip <binary>`".into()),
            ));
            auto_choice(config, &e.to_string(), false, out);
        }
    }
}

/// What `transport = auto` picks with this configuration, in the words the program logs.
fn auto_choice(config: &Config, reason: &str, capture: bool, out: &mut Vec<Check>) {
    if config.transport() != TransportKind::Auto {
        return;
    }
    let text = if capture {
        format!("packet capture with {reason}")
    } else {
        format!("sockets, packet capture unavailable: {reason}")
    };
    out.push(check("transport auto", Status::Info, text, None));
}

/// Opens a node exactly as an application does (`middleware::open_node`) and reports the
/// transport it got, and why; on the capture transport, also whether the capture hears the
/// node's own registration (a capture that does not receives nothing from anyone). Returned, to
/// stay open while the peer checks listen (they leave this process out); then
/// [`registration_check`] reads what it lost.
fn node_check(config: &Config, out: &mut Vec<Check>) -> Option<middleware::Node> {
    let node = match middleware::open_node(config.clone()) {
        Ok(node) => node,
        Err(e) => {
            out.push(check(
                "node",
                Status::Fail,
                format!("cannot open a node with this config: {e}"),
                Some("see the capture and route checks".into()),
            ));
            return None;
        }
    };
    match &node {
        node if node.transport().name == "npcap" => {
            match middleware::capture_hears_itself(node, middleware::hearing_window(config)) {
                Ok(()) => out.push(check(
                    "node",
                    Status::Ok,
                    format!("opens on transport {}; the capture hears its own registration", node.transport()),
                    None,
                )),
                Err(why) => out.push(check(
                    "node",
                    Status::Fail,
                    format!("opens on transport {}, but {why}", node.transport()),
                    Some(
                        "capture on the device the traffic crosses (network.interface or npcap.interfaces; \
                         the capture check lists the devices), or use transport = socket"
                            .into(),
                    ),
                )),
            }
        }
        node => out.push(check("node", Status::Ok, format!("opens on transport {}", node.transport()), None)),
    }
    Some(node)
}

/// What the node of [`node_check`] heard on the registration channel while the peer checks
/// listened, and what it lost: each loss delays discovery by a refresh period.
fn registration_check(node: &middleware::Node, seconds: f64, out: &mut Vec<Check>) {
    let st = node.stats();
    let h = crate::monitor::RegistrationHealth::of(&st.registration, st.remote_table_bytes);
    let text = format!("{} ({seconds} s, this node's own included)", h.line());
    if h.lost == 0 {
        out.push(check("registration", Status::Ok, text, None));
        return;
    }
    let fix = if h.dropped_by_os > 0 {
        "the receive buffer overflowed: raise udp.receive_buffer and net.core.rmem_max (sysctl -w \
         net.core.rmem_max=67108864), or give the process more CPU"
    } else if h.table_full > 0 {
        "more remote entities than the table holds: split the system into eCAL groups (other ports)"
    } else if h.over_budget > 0 {
        "the remote table reached its byte budget: raise registration.max_table_bytes if the system's \
         datatype descriptors are that large, else find who floods registration with \
         `mwctl record --out F.pcapng` (port 14000)"
    } else {
        "malformed or incomplete registration comes from a peer or the network: find the sender with \
         `mwctl record --out F.pcapng` (registration is on port 14000)"
    };
    out.push(check("registration", Status::Warn, text, Some(fix.into())));
}

/// Where the group routes, and whether that interface can carry multicast.
fn route_checks(config: &Config, ifaces: &[InterfaceInfo], out: &mut Vec<Check>) {
    if config.mode() == Mode::Local {
        let lo = ifaces.iter().find(|i| i.loopback);
        match lo {
            Some(i) if i.up => out.push(check(
                "route",
                Status::Ok,
                format!("local mode: broadcast to {} on {}", config.local_group(), i.name),
                None,
            )),
            Some(i) => out.push(check(
                "route",
                Status::Fail,
                format!("loopback interface {} is down", i.name),
                Some(format!("ip link set dev {} up", i.name)),
            )),
            None if ifaces.is_empty() => {
                out.push(check("route", Status::Info, "interfaces not enumerated on this platform", None));
            }
            None => out.push(check("route", Status::Fail, "no loopback interface with an IPv4 address", None)),
        }
        return;
    }
    let group = config.network_group();
    let probe = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect(SocketAddrV4::new(group, config.data_port()))?;
        s.local_addr()
    });
    let configured = config.interface().as_deref().map(middleware::socket::resolve_interface);
    let src = match probe {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        Ok(_) => Ipv4Addr::UNSPECIFIED,
        Err(e) => {
            let dev = match &configured {
                Some(Ok(ip)) => ifaces.iter().find(|i| i.ipv4 == *ip).map_or("<interface>".into(), |i| i.name.clone()),
                _ => ifaces.iter().find(|i| !i.loopback).map_or("<interface>".into(), |i| i.name.clone()),
            };
            out.push(check(
                "multicast route",
                Status::Fail,
                format!("no route to the eCAL group {group}: {e}; nothing can be sent or joined"),
                Some(format!("ip route add 224.0.0.0/4 dev {dev}   (or set network.interface)")),
            ));
            return;
        }
    };
    let via = ifaces.iter().find(|i| i.ipv4 == src);
    let name = via.map_or_else(|| src.to_string(), |i| format!("{} ({src})", i.name));
    match &configured {
        Some(Err(e)) => out.push(check("multicast route", Status::Fail, format!("network.interface: {e}"), None)),
        Some(Ok(ip)) if *ip != src => out.push(check(
            "multicast route",
            Status::Warn,
            format!("{group} routes via {name}, but network.interface is {ip}: sending uses {ip}, peers on {name} may not hear"),
            Some(format!("ip route replace 224.0.0.0/4 dev <interface of {ip}>")),
        )),
        _ => out.push(check("multicast route", Status::Ok, format!("{group} routes via {name}"), None)),
    }
    if let Some(i) = via {
        if !i.up || !i.multicast {
            out.push(check(
                "interface flags",
                Status::Fail,
                format!(
                    "{}: {}{}",
                    i.name,
                    if i.up { "" } else { "down " },
                    if i.multicast { "" } else { "no MULTICAST flag" }
                ),
                Some(format!("ip link set dev {} up multicast on", i.name)),
            ));
        } else {
            out.push(check("interface flags", Status::Ok, format!("{} is UP with MULTICAST", i.name), None));
        }
    }
}

/// Receive buffer asked for vs what the OS lets an unprivileged process have.
fn buffer_check(config: &Config, out: &mut Vec<Check>) {
    let want = config.receive_buffer();
    let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok().and_then(|s| s.trim().parse::<usize>().ok());
    match max {
        Some(max) if max < want => out.push(check(
            "receive buffer",
            Status::Fail,
            format!(
                "udp.receive_buffer asks for {want} bytes but net.core.rmem_max is {max}: processes without \
                 CAP_NET_ADMIN (real eCAL ones included) get {max}, and bursts of large messages are lost"
            ),
            Some(format!(
                "sysctl -w net.core.rmem_max={want}   (persist in /etc/sysctl.d/), or lower udp.receive_buffer"
            )),
        )),
        Some(max) => {
            out.push(check("receive buffer", Status::Ok, format!("{want} bytes requested, rmem_max {max}"), None))
        }
        None => {
            // Elsewhere: ask for it and see what is granted.
            let got = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .and_then(|s| {
                    s.set_recv_buffer_size(want)?;
                    s.recv_buffer_size()
                })
                .unwrap_or(0);
            let status = if got >= want { Status::Ok } else { Status::Warn };
            out.push(check("receive buffer", status, format!("{want} bytes requested, {got} granted"), None));
        }
    }
}

/// The kernel's IPv4 reassembly limits (Linux, per network namespace), which decide how long a
/// burst of never-completed fragments blocks every fragmented datagram a socket receives.
fn fragment_check(out: &mut Vec<Check>) {
    let read = |k: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{k}")).ok()?.trim().parse::<u64>().ok();
    let (Some(time), Some(high)) = (read("ipfrag_time"), read("ipfrag_high_thresh")) else { return };
    let (want_time, want_high) = (5, 64 << 20);
    if time > want_time || high < want_high {
        out.push(check(
            "IP reassembly",
            Status::Warn,
            format!(
                "ipfrag_time {time} s, ipfrag_high_thresh {high} bytes: once {high} bytes of incomplete fragments \
                 are held (a lost fragment per datagram under load, or a flood), the kernel drops every new \
                 fragment for up to {time} s; the socket transport then loses all large messages (counted as \
                 kernel_ip_reasm_fails)"
            ),
            Some(format!(
                "sysctl -w net.ipv4.ipfrag_time={want_time} net.ipv4.ipfrag_high_thresh={want_high}   (persist in \
                 /etc/sysctl.d/), or use the npcap transport, which reassembles in user space"
            )),
        ));
    } else {
        out.push(check(
            "IP reassembly",
            Status::Ok,
            format!("ipfrag_time {time} s, ipfrag_high_thresh {high} bytes"),
            None,
        ));
    }
}

/// A process heard through registration.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub host_name: String,
    pub process_id: i32,
    pub unit_name: String,
    pub mode: &'static str,
    pub source: String,
}

fn listener(bind: Ipv4Addr, port: u16, join: Option<(Ipv4Addr, Ipv4Addr)>) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddrV4::new(bind, port).into())?;
    if let Some((group, iface)) = join {
        s.join_multicast_v4(&group, &iface)?;
    }
    let s: UdpSocket = s.into();
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Listens for registration in both modes: local-mode peers broadcast on loopback, network-mode
/// peers send to the group. Each socket is bound to its destination address, so each hears only
/// its own mode.
fn listen(config: &Config, seconds: f64) -> (Vec<Peer>, Vec<String>) {
    let port = config.registration_port();
    let me = (host_name(config), std::process::id() as i32);
    let mut errors = Vec::new();
    let iface = config
        .interface()
        .as_deref()
        .and_then(|i| middleware::socket::resolve_interface(i).ok())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mut socks = Vec::new();
    match listener(config.local_group(), port, None) {
        Ok(s) => socks.push(("local", s)),
        Err(e) => errors.push(format!("cannot listen on {}:{port}: {e}", config.local_group())),
    }
    match listener(config.network_group(), port, Some((config.network_group(), iface))) {
        Ok(s) => socks.push(("network", s)),
        Err(e) => errors.push(format!("cannot listen on {}:{port}: {e}", config.network_group())),
    }
    let mut peers: BTreeMap<(&'static str, String, i32), Peer> = BTreeMap::new();
    let mut reassemblers: Vec<Reassembler> =
        socks.iter().map(|_| Reassembler::new(config.reassembly().clone())).collect();
    let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        let mut idle = true;
        for (i, (mode, s)) in socks.iter().enumerate() {
            let Ok((n, src)) = s.recv_from(&mut buf) else { continue };
            idle = false;
            let Outcome::Message(m) = reassemblers[i].on_datagram(Instant::now(), src, &buf[..n]) else { continue };
            let Some(sample) = SampleFrame::new_checked(&m).ok().and_then(|f| Sample::decode(f.body()).ok()) else {
                continue;
            };
            let Some(p) = sample.process else { continue };
            // This process's own node (kept open for the registration check) is no peer.
            if p.process_id == me.1 && p.host_name == me.0 {
                continue;
            }
            peers.entry((mode, p.host_name.clone(), p.process_id)).or_insert(Peer {
                host_name: p.host_name,
                process_id: p.process_id,
                unit_name: p.unit_name,
                mode,
                source: src.ip().to_string(),
            });
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (peers.into_values().collect(), errors)
}

fn peer_checks(config: &Config, ifaces: &[InterfaceInfo], seconds: f64, out: &mut Vec<Check>) -> Vec<Peer> {
    let me = host_name(config);
    let (peers, errors) = listen(config, seconds);
    for e in errors {
        out.push(check("peers", Status::Warn, e, None));
    }
    let mine = config.mode().to_string();
    let (same, other): (Vec<&Peer>, Vec<&Peer>) = peers.iter().partition(|p| p.mode == mine);
    let list =
        |v: &[&Peer]| v.iter().map(|p| format!("{}@{}", p.process_id, p.host_name)).collect::<Vec<_>>().join(", ");
    out.push(check(
        "peers",
        Status::Info,
        format!("{} processes heard in {mine} mode, {} in the other mode ({seconds} s)", same.len(), other.len()),
        None,
    ));
    if !other.is_empty() {
        let other_mode = if config.mode() == Mode::Local { "network" } else { "local" };
        let status = if same.is_empty() { Status::Fail } else { Status::Warn };
        out.push(check(
            "mode",
            status,
            format!(
                "this config uses {mine} mode, but {} use {other_mode} mode: they do not hear each other",
                list(&other)
            ),
            Some(format!(
                "set `mode = \"{other_mode}\"` (or MW_MODE={other_mode}) here, or change the peers' eCAL config"
            )),
        ));
    } else if !peers.is_empty() {
        out.push(check("mode", Status::Ok, format!("all peers use {mine} mode"), None));
    }
    let local_ips: Vec<Ipv4Addr> = ifaces.iter().map(|i| i.ipv4).collect();
    let clash: Vec<&Peer> = peers
        .iter()
        .filter(|p| {
            p.host_name == me
                && p.source.parse::<IpAddr>().is_ok_and(|ip| match ip {
                    IpAddr::V4(v4) => !local_ips.is_empty() && !local_ips.contains(&v4) && !v4.is_loopback(),
                    IpAddr::V6(_) => false,
                })
        })
        .collect();
    if clash.is_empty() {
        out.push(check("host name", Status::Ok, format!("no peer on another machine is called {me:?}"), None));
    } else {
        out.push(check(
            "host name",
            Status::Fail,
            format!(
                "{} on another machine ({}) report the host name {me:?} of this machine: eCAL then uses shared \
                 memory between them and sends nothing over UDP",
                list(&clash),
                clash.iter().map(|p| p.source.clone()).collect::<Vec<_>>().join(", ")
            ),
            Some("give every machine a unique host name (or set host_name in one side's config)".into()),
        ));
    }
    peers
}

/// Firewall hints: rules that drop input traffic, read with the tools the system has.
fn firewall_check(out: &mut Vec<Check>) {
    if cfg!(windows) {
        out.push(check(
            "firewall",
            Status::Info,
            "Windows Defender Firewall inspects every received multicast datagram in the kernel",
            Some(
                "allow the program for UDP 14000-14002, or use the npcap transport (captures below the firewall)"
                    .into(),
            ),
        ));
        return;
    }
    let mut rules = None;
    for (cmd, args) in [("nft", &["list", "ruleset"][..]), ("iptables", &["-S", "INPUT"][..])] {
        if let Ok(o) = std::process::Command::new(cmd).args(args).output() {
            if o.status.success() {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let drops = text
                    .lines()
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        (l.contains("drop") || l.contains("reject")) && (l.contains("input") || cmd == "iptables")
                    })
                    .count();
                rules = Some((cmd, drops));
                break;
            }
        }
    }
    match rules {
        Some((cmd, 0)) => out.push(check("firewall", Status::Ok, format!("no drop/reject input rules ({cmd})"), None)),
        Some((cmd, n)) => out.push(check(
            "firewall",
            Status::Warn,
            format!("{n} drop/reject input rules ({cmd}); they may drop eCAL's UDP traffic"),
            Some("allow UDP ports 14000-14002 to 239.0.0.0/24 and 127.255.255.255 on the eCAL interface".into()),
        )),
        None => out.push(check("firewall", Status::Info, "nft/iptables not available; rules not checked", None)),
    }
}

pub fn checks(config: &Config, listen_seconds: f64) -> (Vec<Check>, Vec<Peer>) {
    let ifaces = middleware::socket::interfaces();
    let mut out = vec![check(
        "config",
        Status::Info,
        format!(
            "transport {}, mode {}, group {}, interface {}, host name {:?}",
            config.transport(),
            config.mode(),
            config.destination(),
            config.interface().as_deref().unwrap_or("(routing table)"),
            host_name(config)
        ),
        None,
    )];
    capture_checks(config, &mut out);
    let node = node_check(config, &mut out);
    route_checks(config, &ifaces, &mut out);
    buffer_check(config, &mut out);
    fragment_check(&mut out);
    let peers = peer_checks(config, &ifaces, listen_seconds, &mut out);
    if let Some(node) = node {
        registration_check(&node, listen_seconds, &mut out);
    }
    firewall_check(&mut out);
    (out, peers)
}

pub fn run(config: &Config, args: &Args) -> anyhow::Result<i32> {
    let (checks, peers) = checks(config, args.listen);
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"checks": checks, "peers": peers}))?);
    } else {
        for c in &checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Info => "info",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("[{tag}] {:<18} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("       {:<18} fix: {f}", "");
            }
        }
        for p in &peers {
            println!(
                "       peer: {}@{} {} ({} mode, from {})",
                p.process_id, p.host_name, p.unit_name, p.mode, p.source
            );
        }
        let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
        println!("{}", if fails == 0 { "no problems found".to_string() } else { format!("{fails} problems found") });
    }
    Ok(if worst == Status::Fail { 1 } else { 0 })
}
