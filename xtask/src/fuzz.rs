//! `cargo xtask fuzz [--seconds N] [--target NAME]`: every cargo-fuzz target in `fuzz/` for N
//! seconds each (default 60), seeded with `fuzz/regressions/<target>/` and the inputs cut from
//! the real captures (`fuzz/seeds/<target>/`); prints executions and
//! crashes per target and exits non-zero on a crash. Without cargo-fuzz it says so and fails:
//! a fuzz pass that did not run is not reported as passed.

use crate::project_root;
use anyhow::{bail, Context};
use std::process::Command;

pub const TARGETS: &[&str] = &["datagrams", "sample", "registration", "frames", "ip_fragments", "direct_placement"];

/// `stat::number_of_executed_units: N` from libFuzzer's final statistics.
pub fn executions(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 60u64;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().context("--seconds N")?.parse().context("--seconds N")?,
            "--target" => only = Some(it.next().context("--target NAME")?.clone()),
            other => bail!("unknown argument {other}"),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_fuzz = Command::new(&cargo).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_fuzz {
        bail!("cargo-fuzz is not installed: `cargo install cargo-fuzz` (from crates.io), then run this again");
    }
    let fuzz_dir = project_root().join("fuzz");
    let mut rows = Vec::new();
    let mut crashed = false;
    for target in TARGETS.iter().filter(|t| only.as_deref().is_none_or(|o| o == **t)) {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        for folder in ["regressions", "seeds"] {
            for e in std::fs::read_dir(fuzz_dir.join(folder).join(target))? {
                let p = e?.path();
                std::fs::copy(&p, corpus.join(p.file_name().unwrap()))?;
            }
        }
        eprintln!("fuzz: {target} for {seconds} s");
        let out = Command::new(&cargo)
            .current_dir(&fuzz_dir)
            // cargo-fuzz passes -Z flags (sanitizers); a stable toolchain accepts them this way.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1", "-rss_limit_mb=2048"])
            .output()
            .with_context(|| format!("cargo fuzz run {target}"))?;
        let stderr = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let execs = executions(&stderr);
        let crash = !out.status.success();
        if crash {
            crashed = true;
            // The panic message (the broken invariant), then libFuzzer's report.
            for l in stderr.lines().filter(|l| l.contains("panicked") || l.starts_with("==")).take(10) {
                eprintln!("{l}");
            }
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        rows.push((target, execs, crash));
    }
    println!("| target | seconds | executions | result |\n|---|---|---|---|");
    for (t, e, crash) in &rows {
        let e = e.map_or("?".to_string(), |e| e.to_string());
        let r = if *crash { "CRASH (input in fuzz/artifacts/; copy it to fuzz/regressions/)" } else { "no crash" };
        println!("| {t} | {seconds} | {e} | {r} |");
    }
    if crashed {
        bail!("a fuzz target crashed");
    }
    if rows.iter().any(|(_, e, _)| e.is_none()) {
        bail!("libFuzzer printed no final statistics for some target: the run is not trustworthy");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn executions_come_from_the_final_stats() {
        let s = "#1024 DONE cov: 10\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec: 2000\n";
        assert_eq!(super::executions(s), Some(123_456));
        assert_eq!(super::executions("nothing"), None);
    }
}
