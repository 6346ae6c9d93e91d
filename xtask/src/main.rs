//! `cargo xtask <command>` (matklad's xtask convention).
//!
//! * `interop [--filter S] [--keep-going]`: the sender x receiver matrix over two network
//!   namespaces (and same-host), this project and real eCAL 6.1.1, comparing counts and digests;
//! * `tools`: the operator tool `mwctl` against real eCAL and this project's processes;
//! * `test`: everything a user or CI runs: the workspace tests, the Windows build check, a short
//!   fuzz pass, then `interop`, `tools` and `torture` (with a 60 s sustained-load row);
//! * `fuzz [--seconds N]`: every cargo-fuzz target (see `fuzz.rs`);
//! * `torture`: hostile traffic and faults against a subscriber (see `torture.rs`);
//! * `windows [--require]`: check, link and inspect the Windows build (see `windows.rs`);
//! * `ecal-venv`: create (or reuse) the Python virtual environment with eclipse-ecal 6.1.1.

mod bench;
mod ecal;
mod fuzz;
mod hostile;
mod interop;
mod netns;
mod tools;
mod torture;
mod windows;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(project_root());
    c
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n  demo [--transport T]       build and run a subscriber and a publisher talking (default transport, local mode)\
         \n  bench [--sizes 64,1024]    end-to-end throughput table (root; writes BENCHMARKS.md)\
         \n  test                       workspace tests (nextest when installed, else cargo test), then interop and tools\
         \n  interop [--filter TEXT]    interop matrix in network namespaces (root), with real eCAL 6.1.1\
         \n  tools                      mwctl monitor/echo/record/replay/doctor vs real eCAL and ours (root)\
         \n  ecal-venv                  create/reuse the eclipse-ecal 6.1.1 virtual environment"
    );
    std::process::exit(2)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    let rest = &args[1..];
    match cmd.as_str() {
        "interop" => interop::run(rest),
        "ecal-venv" => ecal::venv().map(|p| println!("{}", p.display())),
        "test" => test_all(rest),
        "demo" => demo(rest),
        "bench" => bench::run(rest),
        "tools" => tools::run(rest),
        "windows" => windows::run_cmd(rest),
        "fuzz" => fuzz::run(rest),
        "torture" => torture::run(rest),
        "torture-send" => hostile::run(rest),
        _ => usage(),
    }
}

fn test_all(rest: &[String]) -> anyhow::Result<()> {
    let nextest = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if nextest {
        run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
        // nextest does not run doctests.
        run(cargo().args(["test", "--workspace", "--doc"]))?;
    } else {
        run(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
    }
    windows::run_cmd(&[])?;
    // A short fuzz pass (the long one is `cargo xtask fuzz --seconds 60`).
    fuzz::run(&["--seconds".into(), "15".into()])?;
    interop::run(rest)?;
    tools::run(&[])?;
    // Hostile traffic and faults, with a 60 s sustained-load row (the README's figures come from
    // the full `cargo xtask torture`, 600 s).
    torture::run(&["--sustain-seconds".into(), "60".into()])
}

/// The main job: a subscriber and a publisher, two processes, on the default configuration
/// (socket transport, local mode: nothing leaves the host), 200 messages of 4 KiB each.
fn demo(rest: &[String]) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "-p", "examples", "--bins"]))?;
    let bin = project_root().join("target").join("release");
    let (count, size) = ("200", "4096");
    let mut sub = Command::new(bin.join("subscriber"))
        .args(["--topic", "demo", "--count", count, "--timeout", "30"])
        .args(rest)
        .spawn()
        .context("starting subscriber")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let publ = Command::new(bin.join("publisher"))
        .args(["--topic", "demo", "--count", count, "--size", size, "--rate", "100"])
        .args(rest)
        .status()
        .context("starting publisher")?;
    let sub_status = sub.wait()?;
    if !publ.success() || !sub_status.success() {
        bail!("demo failed: publisher {publ}, subscriber {sub_status}");
    }
    eprintln!("demo: the subscriber received and verified all {count} messages (digests above match)");
    Ok(())
}
