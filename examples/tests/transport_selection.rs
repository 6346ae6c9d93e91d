//! Transport selection as a user meets it: without capture permission, `npcap` fails with an
//! error that says what to grant, and `auto` falls back to sockets with one warning and says so
//! in the summary. The programs run without privileges (as `nobody` when the tests run as root).

use std::process::Command;

fn unprivileged(bin: &str) -> Command {
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    if is_root {
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
