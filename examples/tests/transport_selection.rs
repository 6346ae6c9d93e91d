//! Transport selection as a user meets it: without capture permission or without the capture
//! library, `npcap` fails with an error that says what to grant or install, and `auto` falls back
//! to sockets with one warning, says so in the summary and still delivers every message. With
//! both, `auto` captures. The library is loaded at run time: the programs do not link it.

use sha2::{Digest, Sha256};
use std::process::{Command, Stdio};

const MISSING_LIBRARY: &str = "/nonexistent/libpcap.so.1";

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    let json = String::from_utf8_lossy(&out.stdout);
    let line = json.lines().next().unwrap_or_else(|| panic!("no summary: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap()
}

fn unprivileged(bin: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"]);
        c.arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

#[test]
fn npcap_without_permission_is_a_clear_error() {
    let out = unprivileged(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "perm", "--count", "0", "--timeout", "0.2", "--transport", "npcap"])
        .env("MW_PORTS_REGISTRATION", "24400")
        .env("MW_PORTS_DATA", "24401")
        .output()
        .expect("run subscriber");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "npcap without permission must fail: {err}");
    assert!(err.contains("setcap cap_net_raw,cap_net_admin=eip") && err.contains("root"), "{err}");
}

#[test]
fn auto_falls_back_to_sockets_and_says_so() {
    let out = unprivileged(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "fallback", "--count", "0", "--timeout", "0.2", "--transport", "auto"])
        .env("MW_PORTS_REGISTRATION", "24402")
        .env("MW_PORTS_DATA", "24403")
        .output()
        .expect("run subscriber");
    let err = String::from_utf8_lossy(&out.stderr);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("falling back to sockets").count(), 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(json.lines().next().expect("summary line")).unwrap();
    let t = v["transport"].as_str().unwrap();
    assert!(t.starts_with("socket (auto fallback:") && t.contains("setcap"), "{t}");
}

#[test]
fn npcap_without_the_library_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "nolib", "--count", "0", "--timeout", "0.2", "--transport", "npcap"])
        .env("MW_NPCAP_LIBRARY", MISSING_LIBRARY)
        .env("MW_PORTS_REGISTRATION", "24404")
        .env("MW_PORTS_DATA", "24405")
        .output()
        .expect("run subscriber");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "npcap without the library must fail: {err}");
    assert!(
        err.contains("packet capture library not found") && err.contains(MISSING_LIBRARY) && err.contains("libpcap0.8"),
        "{err}"
    );
}

/// Publisher (sockets) and subscriber (`auto`, library missing) on the same host: every message
/// arrives with the publisher's checksum, over sockets.
#[test]
fn auto_without_the_library_delivers_over_sockets() {
    let ports = [("MW_PORTS_REGISTRATION", "24406"), ("MW_PORTS_DATA", "24407")];
    let sub = Command::new(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "nolib_auto", "--count", "20", "--timeout", "20", "--transport", "auto"])
        .env("MW_NPCAP_LIBRARY", MISSING_LIBRARY)
        .envs(ports)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run subscriber");
    let publ = Command::new(env!("CARGO_BIN_EXE_publisher"))
        .args(["--topic", "nolib_auto", "--count", "20", "--size", "3000", "--rate", "100", "--transport", "socket"])
        .envs(ports)
        .output()
        .expect("run publisher");
    let sub = sub.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&sub.stderr);
    assert!(publ.status.success(), "{}", String::from_utf8_lossy(&publ.stderr));
    assert!(sub.status.success(), "{err}");
    assert_eq!(err.matches("falling back to sockets").count(), 1, "{err}");
    let (p, s) = (summary(&publ), summary(&sub));
    assert_eq!((p["sent"].as_u64(), s["received"].as_u64()), (Some(20), Some(20)), "{p} {s}");
    // The digests chain (length, bytes) of every message, as `StreamDigest` does.
    let mut h = Sha256::new();
    for k in 0..20 {
        h.update(3000u64.to_le_bytes());
        h.update(examples::mod251(3000, k));
    }
    assert_eq!(s["sha256"].as_str().unwrap(), hex(&h.finalize()), "{s}");
    assert_eq!((&s["sha256"], &s["verified"]), (&p["sha256"], &serde_json::Value::Bool(true)));
    let t = s["transport"].as_str().unwrap();
    assert!(t.starts_with("socket (auto fallback: packet capture library not found"), "{t}");
}

/// With the library installed, `auto` captures when it may (root), and otherwise falls back for
/// lack of permission (the other test covers that case as `nobody`).
#[test]
fn auto_with_the_library_captures_when_permitted() {
    let out = Command::new(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "withlib", "--count", "0", "--timeout", "0.2", "--transport", "auto", "--mode", "local"])
        .env("MW_LOG", "info")
        .env("MW_PORTS_REGISTRATION", "24408")
        .env("MW_PORTS_DATA", "24409")
        .output()
        .expect("run subscriber");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let t = summary(&out)["transport"].as_str().unwrap().to_string();
    if is_root() {
        assert!(t.starts_with("npcap (auto: libpcap version") && t.contains("loopback lo"), "{t}");
        assert_eq!(err.matches("transport auto: packet capture with libpcap version").count(), 1, "{err}");
    } else {
        assert!(t.starts_with("socket (auto fallback:") && t.contains("setcap"), "{t}");
    }
}

/// The binaries start where libpcap is not installed: it is not among their load-time
/// dependencies (ELF `NEEDED` entries).
#[test]
fn binaries_do_not_link_libpcap() {
    for bin in [env!("CARGO_BIN_EXE_subscriber"), env!("CARGO_BIN_EXE_publisher")] {
        let out = Command::new("readelf").args(["--dynamic", bin]).output().expect("readelf (binutils) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
        assert!(needed.iter().any(|l| l.contains("libc.so")), "{bin}: {text}");
        assert!(!needed.iter().any(|l| l.contains("pcap")), "{bin} links libpcap: {needed:?}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn unknown_transport_names_the_accepted_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "x", "--count", "0", "--timeout", "0.1"])
        .env("MW_TRANSPORT", "carrier-pigeon")
        .output()
        .expect("run subscriber");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("MW_TRANSPORT") && err.contains("socket, npcap, auto"), "{err}");
}

/// A child process killed (and reaped) if the test ends before taking it back.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn take(mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A network namespace of this test's own: `lo` up, and a veth pair whose end `deaf0` no
/// traffic of the test crosses. Removed on drop.
struct DeafLab {
    ns: String,
}

impl DeafLab {
    fn new(tag: &str) -> Self {
        let ns = format!("mw{tag}{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip (iproute2) runs");
            assert!(
                st.success(),
                "ip {args:?} failed: this test creates a network namespace and needs root (CI runs as root)"
            );
        };
        ip(&["netns", "add", &ns]);
        let lab = Self { ns };
        let ns = lab.ns.as_str();
        let peer = format!("vd{}", std::process::id());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["link", "add", &peer, "netns", ns, "type", "veth", "peer", "name", "deaf0", "netns", ns]);
        ip(&["-n", ns, "link", "set", "deaf0", "up"]);
        ip(&["-n", ns, "link", "set", &peer, "up"]);
        lab
    }

    fn command(&self, bin: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, bin]);
        c
    }
}

impl Drop for DeafLab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A capture that opens but hears nothing (here: on a device the traffic does not cross) is
/// noticed. `auto` falls back to sockets with one warning that says why, and delivers every
/// message; `npcap` keeps capturing but says so at error level and in its stats.
#[test]
fn a_deaf_capture_is_noticed_auto_falls_back_and_npcap_says_so() {
    let lab = DeafLab::new("deaf");
    let sub = KillOnDrop(Some(
        lab.command(env!("CARGO_BIN_EXE_subscriber"))
            .args(["--topic", "deaf", "--count", "20", "--timeout", "20", "--transport", "auto", "--mode", "local"])
            .env("MW_NPCAP_INTERFACES", "deaf0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run subscriber"),
    ));
    // The subscriber's node opens once `auto` has decided (about 2 s on a deaf capture).
    let publ = lab
        .command(env!("CARGO_BIN_EXE_publisher"))
        .args(["--topic", "deaf", "--count", "20", "--size", "1000", "--rate", "50", "--transport", "socket"])
        .args(["--mode", "local", "--wait-subscriber", "15"])
        .output()
        .expect("run publisher");
    let sub = sub.take().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&sub.stderr);
    assert!(publ.status.success() && sub.status.success(), "{err}");
    let (p, s) = (summary(&publ), summary(&sub));
    assert_eq!((s["received"].as_u64(), &s["sha256"]), (Some(20), &p["sha256"]), "{s}");
    let t = s["transport"].as_str().unwrap();
    assert!(t.starts_with("socket (auto fallback: the packet capture (npcap on deaf0) heard nothing"), "{t}");
    assert_eq!(err.matches("falling back to sockets").count(), 1, "{err}");
    assert!(!err.contains("ERROR"), "a fallback is one warning, not an error: {err}");

    let out = lab
        .command(env!("CARGO_BIN_EXE_subscriber"))
        .args(["--topic", "deaf", "--count", "1", "--timeout", "4.5", "--transport", "npcap", "--mode", "local"])
        .env("MW_NPCAP_INTERFACES", "deaf0")
        .output()
        .expect("run subscriber");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("has not heard this node's own registration").count(), 1, "{err}");
    assert!(err.contains("ERROR") && err.contains("npcap.interfaces"), "{err}");
    let s = summary(&out);
    let d = &s["stats"]["registration"]["transport"]["details"];
    assert_eq!(
        (&d["capture_deaf"], &d["capture_deaf_events"], &d["self_heard"]),
        (&1.into(), &1.into(), &0.into()),
        "{d}"
    );
}
