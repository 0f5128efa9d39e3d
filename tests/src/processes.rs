//! Running the servers' processes: finding binaries (and naming the Debian package when
//! one is missing), running as the `postgres` user when root, signals and timeouts, the
//! temporary directories and log files every server has.

use std::env;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

/// How many times a server start is attempted, each time on a new port.
const START_ATTEMPTS: usize = 3;
/// Poll interval while waiting for a server.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Lines of a server log quoted in a start error.
const LOG_TAIL_LINES: usize = 25;
/// Start of the line written to a server log before each (re)start.
pub(crate) const LOG_BANNER: &str = "===== portcullis-tests:";
/// Hint appended to every missing-binary error.
pub(crate) const ENSURE_DEPS_HINT: &str = "(or run scripts/ensure-deps)";

/// Looks for an executable named `name`.
///
/// Searches, in order: `PATH`; the `bin` directories of the PostgreSQL versions under
/// `/usr/lib/postgresql` (newest version first; Debian installs `initdb` and `postgres`
/// there, off `PATH`); then `/usr/local/sbin`, `/usr/sbin` and `/sbin` (not on a
/// non-root user's `PATH` on Debian). A `name` containing `/` is checked as a path.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path_dirs = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback_dirs = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    path_dirs
        .into_iter()
        .filter(|dir| !dir.as_os_str().is_empty())
        .chain(postgres_bin_dirs())
        .chain(fallback_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// `/usr/lib/postgresql/<version>/bin` directories, newest version first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.is_dir().then_some((version, bin))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, bin)| bin).collect()
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// [`find_binary`], or an error telling which Debian package provides `name`.
/// Runs `attempt` (given its number) up to [`START_ATTEMPTS`] times until it succeeds;
/// the error lists every attempt's failure.
pub(crate) fn retry(what: &str, mut attempt: impl FnMut(usize) -> Result<()>) -> Result<()> {
    let mut errors = Vec::new();
    for n in 0..START_ATTEMPTS {
        match attempt(n) {
            Ok(()) => return Ok(()),
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    bail!(
        "{what} after {START_ATTEMPTS} attempts:\n{}",
        errors.join("\n")
    )
}

pub(crate) fn require_binary(name: &str, package: &str) -> Result<PathBuf> {
    find_binary(name).ok_or_else(|| {
        anyhow!(
            "{name} not found on PATH: install it with 'apt-get install {package}' \
             {ENSURE_DEPS_HINT}"
        )
    })
}

/// Whether this process runs with effective uid 0.
pub(crate) fn running_as_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
        if let Some(euid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
        {
            return euid == "0";
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Uid and gid of the local user `user`, via `id`.
pub(crate) fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .with_context(|| format!("running 'id {flag} {user}'"))?;
        if !out.status.success() {
            bail!(
                "'id {flag} {user}' failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("parsing the output of 'id {flag} {user}'"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// Sends `signal` (a name such as `INT`) to `pid` with the `kill` command.
pub(crate) fn send_signal(pid: u32, signal: &str) -> bool {
    let kill = find_binary("kill").unwrap_or_else(|| PathBuf::from("kill"));
    Command::new(kill)
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Waits up to `timeout` for `child` to exit.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A uniquely named directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(kind: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // Only a uniqueness salt for the directory name, not a time check.
        #[allow(clippy::disallowed_methods)]
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.subsec_nanos())
            .unwrap_or(0);
        let path = env::temp_dir().join(format!(
            "portcullis-{kind}-{}-{}-{nanos}",
            process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        ));
        fs::create_dir_all(env::temp_dir())
            .with_context(|| format!("creating {}", env::temp_dir().display()))?;
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Opens `path` for appending, writes `banner` and returns it as (stdout, stderr).
pub(crate) fn open_log(path: &Path, banner: &str) -> Result<(Stdio, Stdio)> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    writeln!(file, "{LOG_BANNER} {banner} =====")
        .with_context(|| format!("writing to {}", path.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("duplicating log file handle {}", path.display()))?;
    Ok((Stdio::from(file), Stdio::from(stderr)))
}

/// The last lines of a log file, formatted for an error message.
pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            // Only this run's output: from the last banner written by `open_log`.
            let run_start = lines
                .iter()
                .rposition(|line| line.starts_with(LOG_BANNER))
                .unwrap_or(0);
            let start = lines.len().saturating_sub(LOG_TAIL_LINES).max(run_start);
            let mut out = format!("last lines of {}:", path.display());
            for line in &lines[start..] {
                let _ = write!(out, "\n    {line}");
            }
            out
        }
        Err(err) => format!("(could not read log {}: {err})", path.display()),
    }
}

/// Asserts nothing listens on 127.0.0.1:`port` any more.
/// `${XDG_CACHE_HOME:-$HOME/.cache}/<name>` (below the temp dir without a home): where
/// installed test tools are kept between runs.
pub(crate) fn cache_dir(name: &str) -> PathBuf {
    let absolute = |var: &str| {
        env::var_os(var)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(env::temp_dir)
        .join(name)
}

/// 64-bit FNV-1a: names a cache directory after what it was built from (not a security
/// check).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn assert_refused(port: u16) {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let err = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_package() {
        assert_eq!(find_binary("portcullis-no-such-binary"), None);
        let err = require_binary("portcullis-no-such-binary", "some-package").unwrap_err();
        assert_eq!(
            err.to_string(),
            "portcullis-no-such-binary not found on PATH: install it with \
             'apt-get install some-package' (or run scripts/ensure-deps)"
        );
    }

    #[test]
    fn finds_binaries() {
        assert!(find_binary("sh").unwrap().is_absolute());
        assert_eq!(find_binary("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert!(find_binary("initdb").is_some(), "postgresql is installed");
    }
}
