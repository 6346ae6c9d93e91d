//! `cargo xtask <command>` (matklad's xtask convention).
//!
//! * `interop [--filter S] [--keep-going]`: the sender x receiver matrix over two network
//!   namespaces (and same-host), this project and real eCAL 6.1.1, comparing counts and digests;
//! * `privileged`: a capability-granted program loads no library its invoker names (see
//!   `privileged.rs`);
//! * `parity`: eCAL's monitoring view of our processes against eCAL's own, field by field;
//! * `tools [CASE..]`: the operator tool `mwctl` against real eCAL and this project's processes;
//! * `test`: everything a user or CI runs: the workspace tests, the Windows build check, a short
//!   fuzz pass, then `interop`, `tools` and `torture` (with a 60 s sustained-load row);
//! * `fuzz [--seconds N]`: every cargo-fuzz target (see `fuzz.rs`);
//! * `torture`: hostile traffic and faults against a subscriber (see `torture.rs`);
//! * `windows [--require] [--filter TEXT]`: check, link and inspect the Windows build, and run
//!   its programs under Wine against real eCAL and ours (see `windows.rs`);
//! * `bench`: throughput, CPU and latency against raw UDP and eCAL (see `bench.rs`);
//! * `scale [--processes N,..] [--topics M] [--ecal N,..] [--before DIR]`: registration cost
//!   with hundreds of processes, ours and eCAL (see `scale.rs`);
//! * `ecal-venv`: create (or reuse) the Python virtual environment with eclipse-ecal 6.1.1 and
//!   the MCAP readers.

mod bench;
mod ecal;
mod fuzz;
mod hostile;
mod interop;
mod lies;
mod netns;
mod parity;
mod privileged;
mod readme;
mod scale;
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

/// Every command and its options (`cargo xtask help`, `cargo xtask <command> --help`).
const USAGE: &str = "usage: cargo xtask <command> [options]   (root for those that build a lab of network namespaces)

  demo [--json] [--transport T ..]
                                  build and run a subscriber and a publisher talking (local mode); other
                                  options go to both programs
  readme                          build the README's first example against `middleware` alone and run it (root)
  test [--filter TEXT]            every test: fmt, workspace tests, docs, windows, readme, fuzz, interop (TEXT
                                  selects its rows), parity, tools, scale --check, torture (root)
  bench [--sizes 64,1024,..] [--pairs LIST] [--repeat N] [--before DIR] [--no-latency | --latency-only]
                                  throughput, CPU and latency against raw UDP and eCAL (root); only a run with
                                  no option rewrites BENCHMARKS.md, others write target/xtask/bench.md
  interop [--filter TEXT]         interop matrix against real eCAL 6.1.1 in network namespaces (root)
  tools [CASE ..]                 mwctl monitor / echo / record / replay / doctor against real eCAL and ours (root)
  parity                          registration fields of ours against real eCAL's (root)
  privileged                      a program with file capabilities, run by nobody, loads no library that its
                                  environment or config file names (root)
  scale [--processes N,..] [--topics M] [--ecal N,..] [--before DIR] [--receive-buffer BYTES] [--check]
                                  registration cost with the number of processes and entities (root)
  windows [--require] [--filter TEXT]
                                  the x86_64-pc-windows-gnu build and its import check, then the Wine rows (root)
  fuzz [--seconds N] [--target NAME]
                                  the fuzz targets (cargo-fuzz, nightly)
  torture [--transport LIST] [--sustain-seconds N] [--filter TEXT]
                                  hostile traffic against a subscriber (root)
  ecal-venv                       create or reuse the eclipse-ecal 6.1.1 virtual environment
  help                            this text";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

/// Whether the arguments ask for help rather than for work: `help`, `-h` or `--help` as the
/// command, or right after it (later, an option's value or an unknown argument).
fn asks_help(args: &[String]) -> bool {
    args.iter().take(2).any(|a| a == "-h" || a == "--help") || args.first().is_some_and(|a| a == "help")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    let rest = &args[1..];
    if asks_help(&args) {
        println!("{USAGE}");
        return Ok(());
    }
    match cmd.as_str() {
        "interop" => interop::run(rest),
        "ecal-venv" => ecal::venv().map(|p| println!("{}", p.display())),
        "test" => test_all(rest),
        "demo" => demo(rest),
        "readme" => readme::run_cmd(rest),
        "bench" => bench::run(rest),
        "scale" => scale::run(rest),
        "tools" => tools::run(rest),
        "parity" => parity::run(rest),
        "privileged" => privileged::run_cmd(rest),
        "windows" => windows::run_cmd(rest),
        "fuzz" => fuzz::run(rest),
        "torture" => torture::run(rest),
        "torture-send" => hostile::run(rest),
        "torture-lie" => lies::run(rest),
        _ => usage(),
    }
}

fn test_all(rest: &[String]) -> anyhow::Result<()> {
    // Formatting first: the cheapest failure.
    run(cargo().args(["fmt", "--all", "--check"]))?;
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
    // The API documentation: every public item of the library crates documented (their
    // `#![warn(missing_docs)]`), no broken intra-doc link; warnings are errors here.
    // Both with every feature (the `testing` module included) and with the defaults (as
    // docs.rs builds them), so a link to a feature-gated item cannot break either.
    for features in [&["--all-features"][..], &[]] {
        run(cargo()
            .args(["doc", "--no-deps"])
            .args(features)
            .args([
                "-p",
                "middleware",
                "-p",
                "middleware-core",
                "-p",
                "transport-udp-socket",
                "-p",
                "transport-udp-npcap",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"))?;
    }
    // The Windows build: checked, import-checked, and its programs run under Wine.
    windows::run_cmd(&["--require".into()])?;
    // The README's first example, as an outside application builds and runs it.
    readme::run_cmd(&[])?;
    // A program with file capabilities loads no library its invoker names.
    privileged::run_cmd(&[])?;
    // A short fuzz pass (the long one is `cargo xtask fuzz --seconds 60`).
    fuzz::run(&["--seconds".into(), "15".into()])?;
    interop::run(rest)?;
    // Registration fields as eCAL's own monitoring sees them, ours against eCAL's.
    parity::run(&[])?;
    tools::run(&[])?;
    // Registration at scale, small: 10 of our processes and 10 of eCAL's (200 entities each);
    // fails unless all discover each other and ours lose no registration.
    scale::run(&["--processes".into(), "10".into(), "--ecal".into(), "10".into(), "--check".into()])?;
    // Hostile traffic and faults, with a 60 s sustained-load row (the README's figures come from
    // the full `cargo xtask torture`, 600 s).
    torture::run(&["--sustain-seconds".into(), "60".into()])
}

/// The main job: a subscriber and a publisher, two processes, on the default configuration
/// (socket transport, local mode: nothing leaves the host), 200 messages of 4 KiB each. Prints a
/// short summary; `--json` also prints the programs' JSON lines. Other options go to both
/// programs (e.g. `--transport npcap`).
fn demo(rest: &[String]) -> anyhow::Result<()> {
    let json = rest.iter().any(|a| a == "--json");
    let rest: Vec<&String> = rest.iter().filter(|a| *a != "--json").collect();
    run(cargo().args(["build", "--release", "-p", "examples", "--bins"]))?;
    let bin = project_root().join("target").join("release");
    let (count, size) = (200u64, 4096u64);
    let sub = Command::new(bin.join("subscriber"))
        .args(["--topic", "demo", "--count", &count.to_string(), "--timeout", "30"])
        .args(&rest)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting subscriber")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let publ = Command::new(bin.join("publisher"))
        .args(["--topic", "demo", "--count", &count.to_string(), "--size", &size.to_string(), "--rate", "100"])
        .args(&rest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting publisher")?;
    let sub = sub.wait_with_output()?;
    let elapsed = started.elapsed().as_secs_f64();
    let line = |o: &std::process::Output| -> serde_json::Value {
        let text = String::from_utf8_lossy(&o.stdout);
        text.lines().next().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null)
    };
    let (p, s) = (line(&publ), line(&sub));
    if json {
        println!("{p}\n{s}");
    }
    let received = s["received"].as_u64().unwrap_or(0);
    let verified = s["verified"].as_bool() == Some(true);
    let digests_match = p["sha256"].is_string() && p["sha256"] == s["sha256"];
    let rate = s["first_to_last_s"].as_f64().filter(|t| *t > 0.0).map(|t| (received.saturating_sub(1)) as f64 / t);
    println!("demo: transport {}, topic \"demo\"", s["transport"].as_str().unwrap_or("?"));
    println!("  sent      {} messages of {size} B", p["sent"].as_u64().map_or("?".to_string(), |n| n.to_string()));
    println!(
        "  received  {received} of {count}{}",
        rate.map(|r| format!(", {r:.0} msg/s (publisher paced at 100/s)")).unwrap_or_default()
    );
    println!(
        "  verified  {} (every payload checked byte by byte; stream SHA-256 {} the publisher's)",
        if verified { "yes" } else { "NO" },
        if digests_match { "equals" } else { "DIFFERS from" }
    );
    println!("  took      {elapsed:.1} s");
    if !publ.status.success() || !sub.status.success() || received != count || !verified || !digests_match {
        bail!("demo failed: publisher {}, subscriber {}", publ.status, sub.status);
    }
    Ok(())
}
