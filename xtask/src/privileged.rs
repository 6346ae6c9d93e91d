//! `cargo xtask privileged` (part of `cargo xtask test`): a program given file capabilities, run
//! by an unprivileged user who names a library of their own through `MW_NPCAP_LIBRARY` and a
//! config file (`MW_CONFIG`), must not load it.
//!
//! The library's constructor writes a file; the test passes when, with the capabilities, that
//! file is not written and the program's warning says why. The same program *without*
//! capabilities, run the same way, is the control: it loads the library (the file is written),
//! so a harness that could not load the library at all would fail here rather than pass.
//!
//! Runs in a network namespace of its own (only `lo`), as user `nobody` through `setpriv`;
//! needs root, `setcap` (Debian `libcap2-bin`) and a C compiler.

use crate::{cargo, netns::is_root, project_root, run};
use anyhow::{bail, ensure, Context};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOBODY: &str = "65534";

const EVIL_C: &str = r#"
#include <stdio.h>
static void __attribute__((constructor)) planted(void) {
    FILE *f = fopen(MARK, "w");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
"#;

struct Scratch(std::path::PathBuf, String);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = Command::new("ip").args(["netns", "del", &self.1]).stderr(Stdio::null()).status();
    }
}

/// `chmod` as a command: this file compiles on every platform (the Windows build check builds
/// the whole workspace); the step itself runs on Linux only.
fn chmod(p: &Path, mode: u32) -> anyhow::Result<()> {
    run(Command::new("chmod").arg(format!("{mode:o}")).arg(p))
}

/// Runs `program` (the example subscriber) as `nobody` in the namespace with `args` and only
/// the `env` given (besides `PATH` and `MW_LOG`); its stderr. A watchdog bounds it.
fn run_as_nobody(ns: &str, program: &Path, args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> anyhow::Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(program)
        .args(["--topic", "privileged", "--count", "1", "--timeout", "1"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("MW_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running setpriv (util-linux)")?;
    let start = std::time::Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!("{} did not end within 30 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(String::from_utf8_lossy(&child.wait_with_output()?.stderr).into_owned())
}

pub fn run_cmd(_rest: &[String]) -> anyhow::Result<()> {
    ensure!(is_root(), "cargo xtask privileged gives a program file capabilities and must run as root");
    for tool in ["setcap", "setpriv", "cc"] {
        ensure!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status()?.success(),
            "`{tool}` is missing (Debian: libcap2-bin for setcap, util-linux for setpriv, gcc for cc)"
        );
    }
    run(cargo().args(["build", "--release", "-p", "examples", "--bin", "subscriber"]))?;
    let built = project_root().join("target/release/subscriber");
    let ns = format!("mwpriv{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("mw-privileged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _scratch = Scratch(dir.clone(), ns.clone());
    chmod(&dir, 0o755)?;
    // Where the planted library leaves its mark: writable by nobody.
    let marks = dir.join("marks");
    std::fs::create_dir(&marks)?;
    chmod(&marks, 0o777)?;
    let mark = marks.join("loaded");
    let lib = dir.join("planted.so");
    std::fs::write(dir.join("planted.c"), EVIL_C)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(format!("-DMARK=\"{}\"", mark.display()))
        .arg(dir.join("planted.c")))?;
    std::fs::write(
        dir.join("config.toml"),
        format!("transport = \"npcap\"\n[npcap]\nlibrary = \"{}\"\n", lib.display()),
    )?;
    for f in ["planted.so", "config.toml"] {
        chmod(&dir.join(f), 0o644)?;
    }
    run(Command::new("ip").args(["netns", "add", &ns]))?;
    run(Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]))?;

    let config = dir.join("config.toml");
    let by_env: [(&str, &Path); 2] = [("MW_NPCAP_LIBRARY", &lib), ("MW_CONFIG", &config)];
    let by_file_arg = [std::ffi::OsStr::new("--config"), config.as_os_str()];

    // The control: no capabilities, the library the environment names is loaded.
    let plain = dir.join("subscriber-plain");
    std::fs::copy(&built, &plain)?;
    chmod(&plain, 0o755)?;
    let stderr = run_as_nobody(&ns, &plain, &[], &by_env)?;
    ensure!(
        mark.exists(),
        "control failed: without capabilities the planted library was not loaded, so this test proves nothing; \
         stderr:\n{stderr}"
    );
    std::fs::remove_file(&mark)?;
    println!("privileged: control (no capabilities): the library MW_NPCAP_LIBRARY names was loaded, as intended");

    // With file capabilities: ignored, and said so; named by the environment (variable and
    // config file), then by a config file on the command line.
    let capable = dir.join("subscriber-capable");
    std::fs::copy(&built, &capable)?;
    chmod(&capable, 0o755)?;
    run(Command::new("setcap").arg("cap_net_raw,cap_net_admin=eip").arg(&capable))?;
    for (how, args, env) in
        [("MW_NPCAP_LIBRARY and MW_CONFIG", &[][..], &by_env[..]), ("--config", &by_file_arg[..], &[][..])]
    {
        let stderr = run_as_nobody(&ns, &capable, args, env)?;
        ensure!(
            !mark.exists(),
            "a program with file capabilities loaded the library named by {how} (its constructor ran); stderr:\n{stderr}"
        );
        ensure!(
            stderr.contains("npcap.library ignored") && stderr.contains("elevated privileges"),
            "no warning that npcap.library ({how}) was ignored; stderr:\n{stderr}"
        );
    }
    println!(
        "privileged: with cap_net_raw,cap_net_admin=eip, run by nobody: npcap.library from MW_NPCAP_LIBRARY, \
         MW_CONFIG and --config ignored (the planted constructor did not run), and the warning printed"
    );
    Ok(())
}
