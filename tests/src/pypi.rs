//! Independent checkers from PyPI (`tests/pypi/requirements.txt`, pinned), installed once
//! into a virtual environment under `${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-pypi`,
//! named by what it was built from. Needs `python3` with `venv` (Debian: `python3-venv`)
//! and the package index on first use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::{ENSURE_DEPS_HINT, cache_dir, find_binary, fnv1a, log_tail, open_log, wait_timeout};

/// How long creating the environment and installing into it may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The environment's `python`, with every package of the requirements installed.
///
/// # Errors
///
/// When `python3` or its `venv` module is missing, or the installation fails (the error
/// carries the end of pip's log).
pub fn python() -> Result<PathBuf> {
    static READY: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut ready = READY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(python) = ready.as_ref() {
        return Ok(python.clone());
    }
    let python = install()?;
    *ready = Some(python.clone());
    Ok(python)
}

fn requirements() -> PathBuf {
    crate::crate_dir().join("pypi/requirements.txt")
}

fn install() -> Result<PathBuf> {
    let system = find_binary("python3")
        .ok_or_else(|| anyhow!("python3 not found: install it with 'apt-get install python3 python3-venv' {ENSURE_DEPS_HINT}"))?;
    let pins = fs::read(requirements()).context("reading tests/pypi/requirements.txt")?;
    let version = Command::new(&system).arg("--version").output()?.stdout;
    let name = format!("{:016x}", fnv1a(&[pins.as_slice(), &version].concat()));
    let cache = cache_dir("portcullis-pypi");
    let done = cache.join(&name);
    let python = done.join("bin/python");
    if python.is_file() {
        return Ok(python);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = cache.join(format!(
        ".install-{}-{}",
        process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&tmp);
    let result = build(&system, &tmp).and_then(|()| match fs::rename(&tmp, &done) {
        Ok(()) => Ok(()),
        // Another process finished first: its environment is as good as ours.
        Err(_) if python.is_file() => Ok(()),
        Err(e) => Err(anyhow!(
            "renaming {} to {}: {e}",
            tmp.display(),
            done.display()
        )),
    });
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| python)
}

/// Creates a venv in `dir` and installs the pinned requirements (wheels only).
fn build(system: &Path, dir: &Path) -> Result<()> {
    let venv = Command::new(system)
        .args(["-m", "venv"])
        .arg(dir)
        .output()
        .context("running python3 -m venv")?;
    if !venv.status.success() {
        bail!(
            "python3 -m venv failed: install python3-venv {ENSURE_DEPS_HINT}: {}",
            String::from_utf8_lossy(&venv.stderr).trim()
        );
    }
    let log = dir.join("pip.log");
    let (stdout, stderr) = open_log(&log, "pip install")?;
    let mut child = Command::new(dir.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-input", "--only-binary=:all:", "--requirement"])
        .arg(requirements())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .context("spawning pip")?;
    match wait_timeout(&mut child, INSTALL_TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("pip install failed ({status}); {}", log_tail(&log)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "pip install took over {INSTALL_TIMEOUT:?}; {}",
                log_tail(&log)
            )
        }
    }
}
