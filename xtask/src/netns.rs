//! Two test hosts: network namespaces joined by a veth pair, with multicast routes, removed on
//! drop (also when a case fails or panics).

use anyhow::{bail, Context};
use std::process::{Command, Stdio};

pub struct Host {
    pub ns: String,
    pub hostname: String,
    pub ip: String,
    pub dev: String,
}

pub struct Lab {
    pub a: Host,
    pub b: Host,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stderr(Stdio::piped()).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Lab {
    /// Creates `<prefix>a` and `<prefix>b` with 10.77.0.1/24 and 10.77.0.2/24.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        if !is_root() {
            bail!("the interop harness creates network namespaces and must run as root (CAP_NET_ADMIN)");
        }
        remove_stale(prefix);
        // Full pid (at most 7 digits): names stay within the 15 characters of an interface name.
        let tag = std::process::id();
        let mk = |side: &str, ip: &str, host: &str| Host {
            ns: format!("{prefix}{tag}{side}"),
            hostname: host.to_string(),
            ip: ip.to_string(),
            dev: format!("mwv{tag}{side}"),
        };
        let lab = Self { a: mk("a", "10.77.0.1", "hosta"), b: mk("b", "10.77.0.2", "hostb") };
        lab.setup().inspect_err(|_| lab.teardown())?;
        Ok(lab)
    }

    fn setup(&self) -> anyhow::Result<()> {
        let (a, b) = (&self.a, &self.b);
        ip(&["netns", "add", &a.ns])?;
        ip(&["netns", "add", &b.ns])?;
        ip(&["link", "add", &a.dev, "type", "veth", "peer", "name", &b.dev])?;
        for h in [a, b] {
            ip(&["link", "set", &h.dev, "netns", &h.ns])?;
            ip(&["-n", &h.ns, "addr", "add", &format!("{}/24", h.ip), "dev", &h.dev])?;
            ip(&["-n", &h.ns, "link", "set", &h.dev, "up"])?;
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &h.ns, "route", "add", "224.0.0.0/4", "dev", &h.dev])?;
        }
        Ok(())
    }

    fn teardown(&self) {
        for h in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Host {
    /// A command that runs `program args` inside this host: its network namespace and a UTS
    /// namespace with its own host name.
    pub fn command(&self, program: &str, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "unshare", "--uts", "--", "sh", "-c"])
            .arg(format!("hostname {} && exec \"$0\" \"$@\"", self.hostname))
            .arg(program)
            .args(args);
        c
    }
}

/// Removes namespaces `<prefix><pid><side>` left by an earlier run that was killed before it
/// could clean up (its pid no longer exists).
fn remove_stale(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid = rest.trim_end_matches(['a', 'b']);
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name} from an interrupted run");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
