//! `cargo xtask windows`: the Windows build, checked from Linux.
//!
//! 1. `cargo check` of the whole workspace for `x86_64-pc-windows-gnu`;
//! 2. a real build (linked with MinGW-w64) of the programs users run: `publisher`,
//!    `subscriber`, `pingpong`, `people`, `mwctl`;
//! 3. their import tables read with `objdump -p`: `wpcap.dll` / `Packet.dll` must not be among
//!    the DLLs Windows loads before `main` (the capture library is loaded at run time), and the
//!    binaries must name `wpcap.dll` (the run-time loader is there);
//! 4. `publisher` and `subscriber` built for `x86_64-win7-windows-gnu` and run under Wine in the
//!    two-namespace lab (`interop::wine_cases`): with real eCAL 6.1.1 and our Linux programs,
//!    socket and capture transport (Wine's wpcap.dll over the host's libpcap), a table printed.
//!
//! Toolchain: rustup's target when installed; otherwise Debian's `rustc-web` with its standard
//! library sources (`rust-web-src`), building std for Windows (`-Zbuild-std`), since rustup's
//! Windows target cannot be downloaded on machines that only reach the package registries. When
//! something is missing the step says what to install; with `--require` (as `cargo xtask test`
//! runs it) that is a failure, never a silent pass.

use crate::{project_root, run};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-pc-windows-gnu";
/// The target of the programs run under Wine: Debian 12's Wine 8 lacks `ProcessPrng`
/// (bcryptprimitives.dll), which the std of `x86_64-pc-windows-gnu` imports; the tier-3 target
/// for Windows 7 and later uses the older `RtlGenRandom` and runs. Same code, same std.
const WINE_TARGET: &str = "x86_64-win7-windows-gnu";
/// Wine's 64-bit loader on Debian (package `wine64`).
const WINE64: &str = "/usr/lib/wine/wine64";
const WINE_BINARIES: &[&str] = &["publisher", "subscriber"];
const LINKER: &str = "x86_64-w64-mingw32-gcc";
const OBJDUMP: &str = "x86_64-w64-mingw32-objdump";
/// Debian packages that provide everything this step needs.
pub const APT_PACKAGES: &str = "rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 binutils-mingw-w64-x86-64";
const BINARIES: &[(&str, &str)] = [
    ("examples", "publisher"),
    ("examples", "subscriber"),
    ("examples", "pingpong"),
    ("examples", "people"),
    ("mwctl", "mwctl"),
]
.as_slice();
/// DLLs that must only ever be loaded at run time.
const CAPTURE_DLLS: &[&str] = &["wpcap.dll", "packet.dll"];

enum Toolchain {
    /// rustup with the Windows target installed.
    Rustup,
    /// Debian's rustc-web: std built from source for the target.
    Debian { cargo: PathBuf, rustc: PathBuf },
}

impl Toolchain {
    fn find() -> Result<Self, String> {
        let rustup_has_target = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == TARGET))
            .unwrap_or(false);
        if rustup_has_target {
            return Ok(Self::Rustup);
        }
        let (cargo, rustc) = (PathBuf::from("/usr/bin/cargo"), PathBuf::from("/usr/bin/rustc"));
        let src = Path::new("/usr/lib/rustlib/src/rust/library/std");
        let version = Command::new(&rustc).arg("--version").output().ok().filter(|o| o.status.success());
        match version {
            Some(v) if cargo.exists() && src.exists() => {
                let v = String::from_utf8_lossy(&v.stdout);
                let minor: u32 = v.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
                if minor < 85 {
                    return Err(format!("{} is too old to build the workspace", v.trim()));
                }
                Ok(Self::Debian { cargo, rustc })
            }
            _ => Err(format!(
                "the Rust target {TARGET} is not installed (rustup cannot download it here) and Debian's \
                 rustc-web with its sources is not either; install: apt-get install {APT_PACKAGES}"
            )),
        }
    }

    fn cargo(&self, target_dir: &Path) -> Command {
        let mut c = match self {
            Self::Rustup => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
            Self::Debian { cargo, rustc } => {
                let mut c = Command::new(cargo);
                // Only this process's own toolchain: nothing inherited from the outer cargo.
                for v in ["CARGO", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO_MAKEFLAGS"] {
                    c.env_remove(v);
                }
                c.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
                c
            }
        };
        c.current_dir(project_root()).env("CARGO_TARGET_DIR", target_dir);
        c
    }

    /// Arguments after the subcommand: target, std from source for Debian's toolchain, and the
    /// lock file as committed.
    fn target_args(&self) -> Vec<&'static str> {
        let mut a = vec!["--locked", "--target", TARGET];
        if matches!(self, Self::Debian { .. }) {
            a.push("-Zbuild-std=std,panic_abort");
        }
        a
    }

    /// The linker. rustup's target ships the CRT start/end objects `rsbegin.o`/`rsend.o`; a
    /// std built from source does not, so they are compiled from the sources and a wrapper
    /// hands their paths to MinGW's gcc.
    fn linker(&self, target_dir: &Path, target: &str) -> anyhow::Result<PathBuf> {
        let Self::Debian { rustc, .. } = self else { return Ok(PathBuf::from(LINKER)) };
        let dir = target_dir.join(format!("rtstartup-{target}"));
        std::fs::create_dir_all(&dir)?;
        for obj in ["rsbegin", "rsend"] {
            let src = format!("/usr/lib/rustlib/src/rust/library/rtstartup/{obj}.rs");
            run(Command::new(rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["--edition", "2021", "--crate-type", "lib", "--emit", "obj", "--target", target])
                .args(["-C", "panic=abort", "-C", "opt-level=2", &src, "-o"])
                .arg(dir.join(format!("{obj}.o"))))?;
        }
        // Named `*-gcc` so that rustc passes gcc-style (not ld-style) arguments.
        let wrapper = dir.join("rtstartup-mingw-gcc");
        std::fs::write(
            &wrapper,
            format!(
                "#!/usr/bin/env bash
# Generated by cargo xtask windows: {LINKER} with the CRT objects built here.
                 a=()
for x in \"$@\"; do case \"$x\" in rsbegin.o|rsend.o) a+=(\"{d}/$x\");; *) a+=(\"$x\");; esac; done
                 exec {LINKER} \"${{a[@]}}\"
",
                d = dir.display()
            ),
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(wrapper)
    }

    fn describe(&self) -> String {
        match self {
            Self::Rustup => format!("rustup target {TARGET}"),
            Self::Debian { rustc, .. } => {
                let v = Command::new(rustc).arg("--version").output().map(|o| o.stdout).unwrap_or_default();
                format!("{} (Debian rustc-web, std built for {TARGET})", String::from_utf8_lossy(&v).trim())
            }
        }
    }
}

/// The DLLs a PE file imports at load time, from `objdump -p` (section "The Import Tables").
/// Delay-load imports, which objdump lists in a separate table, are not included.
pub fn load_time_imports(objdump_output: &str) -> Vec<String> {
    let mut dlls = Vec::new();
    let mut in_imports = false;
    for line in objdump_output.lines() {
        let t = line.trim();
        if t.starts_with("The Import Tables") {
            in_imports = true;
        } else if t.starts_with("The ") && t.contains("Tables") {
            in_imports = false;
        } else if in_imports {
            if let Some(name) = t.strip_prefix("DLL Name:") {
                dlls.push(name.trim().to_string());
            }
        }
    }
    dlls
}

pub fn run_cmd(args: &[String]) -> anyhow::Result<()> {
    let required = args.iter().any(|a| a == "--require");
    let toolchain = match Toolchain::find() {
        Ok(t) => t,
        Err(why) if !required => {
            eprintln!("NOTE: Windows cross-check NOT run: {why}");
            return Ok(());
        }
        Err(why) => bail!("Windows cross-check cannot run: {why}"),
    };
    eprintln!("windows: toolchain {}", toolchain.describe());
    let target_dir = project_root().join("target").join("windows");
    // 1. Everything compiles: libraries and programs, which is what ships (test targets are
    //    built and run on Linux).
    let mut check = toolchain.cargo(&target_dir);
    check.args(["check", "--workspace"]).args(toolchain.target_args());
    match toolchain {
        Toolchain::Rustup => check.arg("--all-targets"),
        Toolchain::Debian { .. } => check.args(["--lib", "--bins"]),
    };
    run(&mut check)?;
    // 2. The programs link.
    let have_linker = Command::new(LINKER).arg("--version").output().is_ok_and(|o| o.status.success());
    let have_objdump = Command::new(OBJDUMP).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_linker || !have_objdump {
        let msg = format!(
            "{LINKER} / {OBJDUMP} missing: the Windows programs were checked but not linked, and their \
             import tables not read; install: apt-get install gcc-mingw-w64-x86-64 binutils-mingw-w64-x86-64"
        );
        if required {
            bail!(msg);
        }
        eprintln!("NOTE: {msg}");
        return Ok(());
    }
    let mut build = toolchain.cargo(&target_dir);
    build
        .args(["build"])
        .args(toolchain.target_args())
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", toolchain.linker(&target_dir, TARGET)?);
    for (package, bin) in BINARIES {
        build.args(["-p", package, "--bin", bin]);
    }
    run(&mut build)?;
    // 3. Import tables.
    let out_dir = target_dir.join(TARGET).join("debug");
    let mut failures = Vec::new();
    for (_, bin) in BINARIES {
        let exe = out_dir.join(format!("{bin}.exe"));
        let dump = Command::new(OBJDUMP).arg("-p").arg(&exe).output().with_context(|| format!("objdump {exe:?}"))?;
        if !dump.status.success() {
            bail!("objdump -p {} failed: {}", exe.display(), String::from_utf8_lossy(&dump.stderr));
        }
        let mut imports = load_time_imports(&String::from_utf8_lossy(&dump.stdout));
        imports.sort_by_key(|d| d.to_ascii_lowercase());
        imports.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        let linked: Vec<&String> =
            imports.iter().filter(|d| CAPTURE_DLLS.iter().any(|c| d.eq_ignore_ascii_case(c))).collect();
        let bytes = std::fs::read(&exe).with_context(|| format!("reading {exe:?}"))?;
        let names_wpcap = bytes.windows(9).any(|w| w == b"wpcap.dll");
        let size = bytes.len() as f64 / (1 << 20) as f64;
        println!(
            "windows: {bin}.exe ({size:.1} MiB) imports at load time: {}; wpcap.dll loaded at run time: {}",
            imports.join(", "),
            if names_wpcap { "yes" } else { "NO" }
        );
        if imports.is_empty() {
            failures.push(format!("{bin}.exe: objdump listed no imports (unexpected output)"));
        }
        if !linked.is_empty() {
            failures.push(format!("{bin}.exe imports {linked:?} at load time: it would not start without Npcap"));
        }
        if !names_wpcap {
            failures.push(format!("{bin}.exe does not name wpcap.dll: the run-time loader is missing"));
        }
    }
    // Control: a program that does link wpcap.dll at load time is caught by the same reading.
    match linked_control(&target_dir) {
        Ok(imports) if imports.iter().any(|d| d.eq_ignore_ascii_case("wpcap.dll")) => {
            println!("windows: control program linked against wpcap.dll is flagged (imports {})", imports.join(", "))
        }
        Ok(imports) => failures.push(format!("control program linked against wpcap.dll not flagged: {imports:?}")),
        Err(e) => failures.push(format!("control program: {e:#}")),
    }
    if !failures.is_empty() {
        bail!("Windows import check failed:\n  {}", failures.join("\n  "));
    }
    println!(
        "windows: workspace checked, {} programs linked, none imports {} at load time",
        BINARIES.len(),
        CAPTURE_DLLS.join("/")
    );
    // 4. The programs run: under Wine, against real eCAL and our Linux programs.
    match wine_rows(&toolchain, &target_dir, &args.iter().filter(|a| *a != "--require").cloned().collect::<Vec<_>>()) {
        Ok(()) => Ok(()),
        Err(e) if !required && e.downcast_ref::<WineMissing>().is_some() => {
            eprintln!("NOTE: Windows programs NOT run under Wine: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Wine or the toolchain for the Wine build is missing (a NOTE without `--require`).
#[derive(Debug)]
struct WineMissing(String);

impl std::fmt::Display for WineMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WineMissing {}

/// Builds the programs for [`WINE_TARGET`] and runs the Windows rows of the interop matrix
/// (`interop::wine_cases`) with them under Wine in the two-namespace lab. `args`: `--filter TEXT`.
fn wine_rows(toolchain: &Toolchain, target_dir: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut filter: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => filter = it.next().cloned(),
            other => bail!("windows: unknown argument {other}"),
        }
    }
    if !matches!(toolchain, Toolchain::Debian { .. }) {
        return Err(WineMissing(format!(
            "building for {WINE_TARGET} (tier 3) needs std from source: install {APT_PACKAGES}"
        ))
        .into());
    }
    if !Path::new(WINE64).exists() {
        return Err(WineMissing(format!("{WINE64} not found: apt-get install wine64")).into());
    }
    // Release: Wine's start-up and the 1 MiB rows are slow enough in a debug build.
    let mut build = toolchain.cargo(target_dir);
    build
        .args(["build", "--release", "--locked", "--target", WINE_TARGET, "-Zbuild-std=std,panic_abort"])
        .env("CARGO_TARGET_X86_64_WIN7_WINDOWS_GNU_LINKER", toolchain.linker(target_dir, WINE_TARGET)?);
    for bin in WINE_BINARIES {
        build.args(["-p", "examples", "--bin", bin]);
    }
    run(&mut build)?;
    let wine = crate::interop::Wine {
        wine64: PathBuf::from(WINE64),
        bin_dir: target_dir.join(WINE_TARGET).join("release"),
        prefixes: target_dir.join("wine-prefixes"),
    };
    let env = crate::interop::Env {
        bin_dir: project_root().join("target").join("release"),
        python: crate::ecal::venv()?,
        logs: project_root().join("target").join("xtask").join("logs-windows"),
        wine: Some(wine),
        native: None,
    };
    run(crate::cargo().args(["build", "--release", "-p", "examples", "--bins"]))?;
    let cases: Vec<_> = crate::interop::wine_cases()
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| c.label().contains(f.as_str())))
        .collect();
    let lab = crate::netns::Lab::new("mww")?;
    let wine = env.wine.as_ref().expect("set above");
    for host in [&lab.a, &lab.b] {
        prepare_prefix(wine, host)?;
    }
    let result = crate::interop::run_matrix(&env, &lab, &cases, "windows-wine");
    // Wine's server (one per prefix) owns the programs' sockets in the lab's namespaces: stop it
    // before the namespaces go.
    for host in [&lab.a, &lab.b] {
        stop_wineserver(wine, host);
    }
    result
}

/// Creates (once) the host's Wine prefix, inside the host's namespace, and leaves no Wine
/// server running (a server left from an earlier lab would own sockets in a deleted namespace).
fn prepare_prefix(wine: &crate::interop::Wine, host: &crate::netns::Host) -> anyhow::Result<()> {
    let prefix = wine.prefix(host);
    stop_wineserver(wine, host);
    if !prefix.join("system.reg").exists() {
        std::fs::create_dir_all(&wine.prefixes)?;
        eprintln!("windows: creating the Wine prefix {}", prefix.display());
        // No Mono / Gecko installers (they would ask, or fetch from the network).
        let child = host
            .command(&wine.wine64.display().to_string(), &["wineboot".into(), "--init".into()])
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("running wineboot")?;
        let (code, _) = crate::interop::wait_output(child, std::time::Duration::from_secs(120));
        if code != Some(0) {
            bail!("wineboot --init for {} failed or took over 120 s (exit {code:?})", prefix.display());
        }
        stop_wineserver(wine, host);
    }
    Ok(())
}

fn stop_wineserver(wine: &crate::interop::Wine, host: &crate::netns::Host) {
    let server = wine.wine64.with_file_name("wineserver");
    let _ = Command::new(server)
        .arg("-k")
        .env("WINEPREFIX", wine.prefix(host))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Builds a C program that calls `pcap_lib_version` through an import library for `wpcap.dll`
/// (made with dlltool, as the Npcap SDK's would be) and returns its load-time imports.
fn linked_control(target_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = target_dir.join("control");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("wpcap.def"), "LIBRARY wpcap.dll\nEXPORTS\n  pcap_lib_version\n")?;
    std::fs::write(
        dir.join("linked.c"),
        "const char *pcap_lib_version(void);\nint main(void) { return pcap_lib_version() != 0; }\n",
    )?;
    run(Command::new("x86_64-w64-mingw32-dlltool").current_dir(&dir).args(["-d", "wpcap.def", "-l", "libwpcap.a"]))?;
    run(Command::new(LINKER).current_dir(&dir).args(["linked.c", "-o", "linked.exe", "-L.", "-lwpcap"]))?;
    let dump = Command::new(OBJDUMP).arg("-p").arg(dir.join("linked.exe")).output()?;
    Ok(load_time_imports(&String::from_utf8_lossy(&dump.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of `objdump -p` on a PE file (binutils 2.40), trimmed.
    const DUMP: &str = "
There is an import table in .idata at 0x140a5e000

The Import Tables (interpreted .idata section contents)
 vma:            Hint    Time      Forward  DLL       First
                 Table   Stamp     Chain    Name      Thunk
 000a5e000	000a5e0b4 00000000 00000000 000a5fb28 000a5e5d4

\tDLL Name: KERNEL32.dll
\tvma:  Hint/Ord Member-Name Bound-To
\ta5f000\t  123  CreateFileW

\tDLL Name: WS2_32.dll
\tvma:  Hint/Ord Member-Name Bound-To

The Delay Import Tables
\tDLL Name: wpcap.dll

There is an export table in .edata
";

    #[test]
    fn only_load_time_imports_are_listed() {
        assert_eq!(load_time_imports(DUMP), vec!["KERNEL32.dll", "WS2_32.dll"]);
        assert!(load_time_imports("no tables here").is_empty());
        let linked = DUMP.replace("WS2_32.dll", "wpcap.dll");
        assert!(load_time_imports(&linked).contains(&"wpcap.dll".to_string()));
    }
}
