//! The real eCAL peer: eclipse-ecal 6.1.1 from PyPI in a cached virtual environment, driven by
//! this project's own script `xtask/peers/ecal_peer.py`.

use crate::{project_root, run};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;

pub const ECAL_VERSION: &str = "6.1.1";
/// The official MCAP readers, for checking recordings as other tools read them.
pub const PYTHON_EXTRAS: [&str; 2] = ["mcap==1.6.0", "mcap-protobuf-support==0.6.0"];

/// Creates (once) `target/ecal-venv` with eclipse-ecal and the MCAP readers installed; returns
/// its python.
pub fn venv() -> anyhow::Result<PathBuf> {
    let dir = project_root().join("target").join("ecal-venv");
    let python = dir.join("bin").join("python");
    let check = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import mcap, mcap_protobuf, ecal.nanobind_core as e; print(e.get_version_string())"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(v) = check(&python) {
        if v.contains(ECAL_VERSION) {
            return Ok(python);
        }
    }
    let host_python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
        .context("no python3 found: install Python 3 (e.g. `apt-get install python3 python3-venv`)")?;
    if !python.exists() {
        run(Command::new(host_python).args(["-m", "venv"]).arg(&dir)).context(
            "creating the eCAL virtual environment failed; on Debian install python3-venv (`apt-get install python3-venv`)",
        )?;
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", &format!("eclipse-ecal=={ECAL_VERSION}")])
        .args(PYTHON_EXTRAS))
    .context("pip install eclipse-ecal and the MCAP readers failed (needs access to PyPI)")?;
    match check(&python) {
        Some(v) if v.contains(ECAL_VERSION) => Ok(python),
        other => bail!("eclipse-ecal import check failed after install: {other:?}"),
    }
}

/// eCAL configuration directory (`$ECAL_DATA`) with an `ecal.yaml` for `mode`:
/// UDP only (SHM and TCP off), as the captures were made (SPEC §8.4).
pub fn config_dir(mode: &str) -> anyhow::Result<PathBuf> {
    let dir = project_root().join("target").join("xtask").join(format!("ecal-{mode}"));
    std::fs::create_dir_all(&dir)?;
    let yaml = format!(
        "communication_mode: \"{mode}\"\n\
         publisher:\n  layer:\n    shm: {{ enable: false }}\n    udp: {{ enable: true }}\n    tcp: {{ enable: false }}\n  \
         priority_local: [\"udp\"]\n  priority_network: [\"udp\"]\n\
         subscriber:\n  layer:\n    shm: {{ enable: false }}\n    udp: {{ enable: true }}\n    tcp: {{ enable: false }}\n\
         logging:\n  provider:\n    udp: {{ enable: false }}\n"
    );
    std::fs::write(dir.join("ecal.yaml"), yaml)?;
    Ok(dir)
}

pub fn peer_script() -> PathBuf {
    project_root().join("xtask").join("peers").join("ecal_peer.py")
}

/// Builds (when missing or older than its source) the native eCAL peer
/// `xtask/peers/ecal_native.cpp` against the `libecal_core.so.6` of the wheel in the virtual
/// environment `python` belongs to; returns the program. Needs a C++ compiler (`g++`).
pub fn native_peer(python: &std::path::Path) -> anyhow::Result<PathBuf> {
    let src = project_root().join("xtask").join("peers").join("ecal_native.cpp");
    let out_dir = project_root().join("target").join("xtask");
    std::fs::create_dir_all(&out_dir)?;
    let exe = out_dir.join("ecal_native");
    let o = Command::new(python)
        .args(["-c", "import ecal, os; print(os.path.dirname(ecal.__file__))"])
        .output()
        .context("asking the eCAL virtual environment where the wheel is")?;
    anyhow::ensure!(o.status.success(), "cannot locate the eclipse-ecal wheel: {}", String::from_utf8_lossy(&o.stderr));
    let lib_dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    anyhow::ensure!(
        lib_dir.join("libecal_core.so.6").exists(),
        "the eclipse-ecal wheel in {} has no libecal_core.so.6",
        lib_dir.display()
    );
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&exe).is_some() && modified(&exe) >= modified(&src) {
        return Ok(exe);
    }
    let mut c = Command::new("g++");
    c.args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-l:libecal_core.so.6")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-pthread");
    run(&mut c).context("building the native eCAL peer failed (needs g++: `apt-get install g++`)")?;
    Ok(exe)
}
