//! A throwaway **real** SMTP server for tests of outgoing mail.
//!
//! [`SmtpServer`] runs `aiosmtpd` (the Python package, Debian `python3-aiosmtpd`) with
//! its `Mailbox` handler, which accepts any sender and recipient (no authentication, no
//! TLS) and stores every message in a Maildir in the server's temporary directory.
//! [`SmtpServer::messages`] reads them back as [`Mail`]s, parsed just enough for tests
//! to check what was sent: headers, `multipart/*` bodies, quoted-printable and base64
//! transfer encodings, RFC 2047 encoded words. It is not a general MIME parser.
//!
//! Like the other servers of this crate it listens on a free loopback port, logs to a
//! file in its directory, can be stopped and restarted on the same port (the stored
//! mail survives), and dropping it kills the process and removes the directory.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::{
    ENSURE_DEPS_HINT, POLL_INTERVAL, TempDir, find_binary, free_port, log_tail, open_log, retry,
};

pub use self::message::Mail;
#[cfg(test)]
use self::message::*;

mod message;

#[cfg(test)]
mod tests;

/// How long `aiosmtpd` may take to answer with its `220` banner (Python starts slowly).
const SMTP_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of [`SmtpServer::wait_for`].
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A throwaway `aiosmtpd` on a free 127.0.0.1 port that stores every message it accepts.
#[derive(Debug)]
pub struct SmtpServer {
    python: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl SmtpServer {
    /// Starts `aiosmtpd` and waits (up to ~10 s) until it answers with its `220` banner.
    /// If it does not come up, tries again on a new port (3 attempts in all).
    ///
    /// # Errors
    ///
    /// Fails when no Python interpreter can import `aiosmtpd` (naming the package to
    /// install), or when the server does not come up; the error then quotes the end of
    /// the server log.
    pub fn start() -> Result<Self> {
        let python = aiosmtpd_python()?;
        let mut server = Self {
            python,
            port: 0,
            dir: TempDir::new("smtp")?,
            child: None,
        };
        retry("aiosmtpd did not start", |_| {
            server.port = free_port();
            server.spawn()
        })?;
        Ok(server)
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The TCP port on 127.0.0.1; it stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file that receives the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("smtp.log")
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path.join("maildir")
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Connections to
    /// [`port`](Self::port) are refused afterwards. Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port with the same
    /// Maildir (the mail received so far stays listed); waits for its banner.
    ///
    /// # Errors
    ///
    /// Fails when the server does not come up again (for instance if another process
    /// took the port meanwhile); the error quotes the end of the server log.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let what = format!("aiosmtpd did not restart on port {}", self.port);
        retry(&what, |attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            self.spawn()
        })
    }

    /// Every message received so far, oldest first (by file modification time, then
    /// file name). A file that cannot be read is left out.
    pub fn messages(&self) -> Vec<Mail> {
        let maildir = self.maildir();
        // The Mailbox handler writes into tmp/ and moves complete messages to new/; a
        // mail client would move them on to cur/.
        let mut files: Vec<_> = ["new", "cur"]
            .into_iter()
            .filter_map(|sub| fs::read_dir(maildir.join(sub)).ok())
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let meta = entry.metadata().ok()?;
                if !meta.is_file() {
                    return None;
                }
                Some((meta.modified().ok()?, entry.file_name(), entry.path()))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, _, path)| fs::read(path).ok())
            .map(|bytes| Mail::parse(&String::from_utf8_lossy(&bytes)))
            .collect()
    }

    /// Polls [`messages`](Self::messages) every 50 ms until there are at least `count`,
    /// and returns them all.
    ///
    /// # Panics
    ///
    /// Panics when `limit` passes first, listing the subjects received so far.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Mail> {
        let start = Instant::now();
        loop {
            let mails = self.messages();
            if mails.len() >= count {
                return mails;
            }
            if start.elapsed() >= limit {
                let subjects: Vec<&str> = mails.iter().map(|mail| mail.subject.as_str()).collect();
                panic!(
                    "expected at least {count} mail(s) at {} within {limit:?}, got {}: \
                     subjects {subjects:?}",
                    self.url(),
                    mails.len()
                );
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    }

    /// Spawns `aiosmtpd` on `self.port` and waits until it answers.
    fn spawn(&mut self) -> Result<()> {
        self.stop();
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, &format!("aiosmtpd on port {}", self.port))?;
        let child = Command::new(&self.python)
            // -n: do not switch to user `nobody` (which fails unless root, and `nobody`
            // could not write the Maildir anyway).
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.maildir())
            // Unbuffered, so that the log is complete even when the process is killed.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {} -m aiosmtpd", self.python.display()))?;
        let child = self.child.insert(child);

        let deadline = Instant::now() + SMTP_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                bail!(
                    "aiosmtpd on port {} exited ({status}) before answering; {}",
                    self.port,
                    log_tail(&log)
                );
            }
            if smtp_banner(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "aiosmtpd on port {} did not send its 220 banner within {:?}; {}",
                    self.port,
                    SMTP_READY_TIMEOUT,
                    log_tail(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The interpreter to run `aiosmtpd` with: `/usr/bin/python3` first, then `python3` on
/// `PATH`. The `PATH` one may be a pyenv or virtualenv interpreter that does not see
/// Debian's dist-packages, so each must prove it can import the module.
fn aiosmtpd_python() -> Result<PathBuf> {
    // Probed once per process: every probe starts an interpreter.
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            first_importing_aiosmtpd(
                [find_binary("/usr/bin/python3"), find_binary("python3")]
                    .into_iter()
                    .flatten(),
            )
        })
        .clone()
        .ok_or_else(missing_aiosmtpd)
}

/// The first of `candidates` for which `-c "import aiosmtpd"` succeeds.
fn first_importing_aiosmtpd(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

fn missing_aiosmtpd() -> anyhow::Error {
    anyhow!(
        "aiosmtpd not found: install it with 'apt-get install python3-aiosmtpd' {ENSURE_DEPS_HINT}"
    )
}

/// Whether 127.0.0.1:`port` answers with an SMTP `220` greeting (then says `QUIT`).
fn smtp_banner(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .is_err()
    {
        return false;
    }
    let mut greeting = String::new();
    if BufReader::new(&stream).read_line(&mut greeting).is_err() {
        return false;
    }
    // Polite: without it aiosmtpd logs every probe as a lost connection.
    let _ = (&stream).write_all(b"QUIT\r\n");
    greeting.starts_with("220")
}
