//! `cargo xtask <command>` (matklad's xtask convention).
//!
//! * `interop [--filter S] [--keep-going]`: the sender x receiver matrix over two network
//!   namespaces (and same-host), this project and real eCAL 6.1.1, comparing counts and digests;
//! * `test`: everything a user or CI runs: the workspace tests, then `interop`;
//! * `ecal-venv`: create (or reuse) the Python virtual environment with eclipse-ecal 6.1.1.

mod ecal;
mod interop;
mod netns;

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
         \n  test                       workspace tests (nextest when installed, else cargo test), then interop\
         \n  interop [--filter TEXT]    interop matrix in network namespaces (root), with real eCAL 6.1.1\
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
    interop::run(rest)
}
