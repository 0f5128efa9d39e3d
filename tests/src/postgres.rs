//! A throwaway PostgreSQL cluster (`initdb` + `postgres`), optionally TLS-only.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::tls::TestCa;
use crate::*;

/// How long a `postgres` may take to accept connections.
const POSTGRES_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop()` waits for a clean PostgreSQL shutdown before killing it.
const POSTGRES_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A throwaway PostgreSQL cluster on a free 127.0.0.1 port, in its own temporary
/// directory: superuser `postgres`, trust authentication, `fsync=off`.
///
/// Dropping it shuts the server down and removes the directory (and all data).
#[derive(Debug)]
pub struct PostgresServer {
    postgres: PathBuf,
    port: u16,
    dir: TempDir,
    /// Uid and gid to run `initdb`/`postgres` as, when this process is root.
    run_as: Option<(u32, u32)>,
    /// `ssl=on` with the files in the directory, and only `hostssl` connections.
    tls: bool,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a cluster with `initdb` and starts `postgres` on a free port, waiting
    /// (up to ~30 s) until it accepts connections; if it does not come up, tries again
    /// on a new port (3 attempts in all).
    ///
    /// `initdb` and `postgres` are looked up with [`find_binary`] (so Debian's
    /// `/usr/lib/postgresql/<version>/bin` is found). When this process runs as root,
    /// both run as the `postgres` system user, which then owns the directory.
    ///
    /// # Errors
    ///
    /// Fails when PostgreSQL is not installed (naming the package to install), when
    /// `initdb` fails, or when the server does not come up; the error then quotes the
    /// end of the server log.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), but with `ssl=on`, a certificate from `ca` for
    /// `localhost` and `127.0.0.1`, and a `pg_hba.conf` that rejects every TCP
    /// connection without TLS (`hostnossl ... reject`), so a client that connects
    /// at all has proved it speaks TLS. [`url`](Self::url) and the URLs of
    /// [`create_database`](Self::create_database) carry `?sslmode=require` (understood
    /// by libpq and tokio-postgres); [`ca_file`](Self::ca_file) is the CA to trust for
    /// `verify-full`.
    ///
    /// When this process is root, the key file is owned by `postgres` with mode 0600:
    /// PostgreSQL refuses a key that others can read.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when the certificate files cannot be written.
    pub fn start_tls(ca: &TestCa) -> Result<Self> {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&TestCa>) -> Result<Self> {
        let kind = if ca.is_some() {
            "postgres-tls"
        } else {
            "postgres"
        };
        let initdb = require_binary("initdb", "postgresql")?;
        // Use the `postgres` next to `initdb` (same installation) when there is one.
        let postgres = fs::canonicalize(&initdb)
            .ok()
            .and_then(|real| real.parent().map(|dir| dir.join("postgres")))
            .filter(|candidate| is_executable(candidate))
            .map_or_else(|| require_binary("postgres", "postgresql"), Ok)?;
        let run_as = if running_as_root() {
            Some(user_ids("postgres").context(
                "running as root, so PostgreSQL must run as the 'postgres' user, which \
                 was not found: install it with 'apt-get install postgresql' \
                 (or run scripts/ensure-deps)",
            )?)
        } else {
            None
        };

        let mut server = Self {
            postgres,
            port: 0,
            dir: TempDir::new(kind)?,
            run_as,
            tls: ca.is_some(),
            child: None,
        };
        server.init_cluster(&initdb)?;
        if let Some(ca) = ca {
            server.set_up_tls(ca)?;
        }

        retry("postgres did not start", |_| {
            server.port = free_port();
            server.spawn()
        })?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, with `?sslmode=require` for a
    /// [`start_tls`](Self::start_tls) server.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The CA certificate (PEM) that a [`start_tls`](Self::start_tls) server's
    /// certificate chains to; the file does not exist for a plain server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path.join(TLS_CA_FILE)
    }

    /// The TCP port on 127.0.0.1; it stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file that receives the output of `initdb` and `postgres`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("postgres.log")
    }

    /// Creates a new, empty database named `name` (any name PostgreSQL accepts, at
    /// most 63 bytes) with `psql`, and returns its URL
    /// (`postgres://postgres@127.0.0.1:PORT/<name>`, plus `?sslmode=require` for a
    /// [`start_tls`](Self::start_tls) server, which `psql` then connects with).
    ///
    /// # Errors
    ///
    /// Fails when the server is stopped, the name is invalid or already taken, or
    /// `psql` is not installed.
    pub fn create_database(&self, name: &str) -> Result<String> {
        if self.child.is_none() {
            bail!("cannot create database {name:?}: the PostgreSQL server is stopped");
        }
        if name.is_empty() || name.len() > 63 || name.contains('\0') {
            bail!("invalid database name {name:?}: must be 1 to 63 bytes, without NUL");
        }
        let psql = require_binary("psql", "postgresql")?;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        let out = Command::new(&psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .arg("-c")
            .arg(&sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", psql.display()))?;
        if !out.status.success() {
            bail!(
                "creating database {name:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(self.database_url(name))
    }

    /// Shuts the server down cleanly ("fast" shutdown: open sessions are cut) and waits
    /// for it, killing it if it takes more than ~10 s. The data directory is kept.
    /// Does nothing when already stopped.
    pub fn stop(&mut self) {
        self.shutdown("INT", POSTGRES_STOP_TIMEOUT);
    }

    /// Stops the server if it runs, then starts it again on the same port with the
    /// same data directory (databases and data are kept); waits until it accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// Fails when the server does not come up again (for instance if another process
    /// took the port meanwhile); the error quotes the end of the server log.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let what = format!("postgres did not restart on port {}", self.port);
        retry(&what, |attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            self.spawn()
        })
    }

    fn database_url(&self, database: &str) -> String {
        let query = if self.tls { "?sslmode=require" } else { "" };
        format!(
            "postgres://postgres@127.0.0.1:{}/{}{query}",
            self.port,
            percent_encode(database)
        )
    }

    /// Writes the CA, certificate and key next to the data directory and lets only TLS
    /// connections in over TCP.
    fn set_up_tls(&self, ca: &TestCa) -> Result<()> {
        let dir = &self.dir.path;
        ca.write_ca(&dir.join(TLS_CA_FILE))?;
        let (cert, key) = ca
            .issue_server(&["localhost", "127.0.0.1"])?
            .write(dir, TLS_SERVER_STEM)?;
        if let Some((uid, gid)) = self.run_as {
            // The server runs as `postgres`: a root-owned 0600 key would be unreadable
            // to it, and a more open one is refused ("has group or world access").
            for path in [&cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
        }
        // Replaces initdb's file (whose owner and mode stay). The local socket stays
        // trusted for the harness's own tools; TCP needs TLS.
        let hba = self.data_dir().join("pg_hba.conf");
        fs::write(
            &hba,
            "# portcullis-tests: TLS only over TCP\n\
             local     all all              trust\n\
             hostnossl all all 0.0.0.0/0    reject\n\
             hostnossl all all ::/0         reject\n\
             hostssl   all all 127.0.0.1/32 trust\n\
             hostssl   all all ::1/128      trust\n",
        )
        .with_context(|| format!("writing {}", hba.display()))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path.join("sock")
    }

    /// A command running `program`, as the `postgres` user when this process is root.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            // Not `runuser`: it forks a PAM session parent that does not pass SIGINT
            // on, so a clean shutdown of the server would be impossible.
            command.uid(uid).gid(gid);
        }
        command.stdin(Stdio::null());
        command
    }

    /// Prepares the directory and runs `initdb`.
    fn init_cluster(&self, initdb: &Path) -> Result<()> {
        let socket_dir = self.socket_dir();
        fs::create_dir(&socket_dir)
            .with_context(|| format!("creating {}", socket_dir.display()))?;
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, "initdb")?;
        if let Some((uid, gid)) = self.run_as {
            for path in [&self.dir.path, &socket_dir, &log] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
        }
        let status = self
            .command(initdb)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .with_context(|| format!("running {}", initdb.display()))?;
        if !status.success() {
            let hint = if self.run_as.is_some() {
                "\n(initdb runs as user 'postgres': every parent directory of the temp \
                 dir must be searchable by it; set TMPDIR=/tmp if not)"
            } else {
                ""
            };
            bail!("initdb failed ({status}); {}{hint}", log_tail(&log));
        }
        Ok(())
    }

    /// Spawns `postgres` on `self.port` and waits until it accepts connections.
    fn spawn(&mut self) -> Result<()> {
        self.stop();
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, &format!("postgres on port {}", self.port))?;
        let child = self
            .command(&self.postgres)
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .args(self.tls_settings())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.postgres.display()))?;
        let pid = child.id();
        self.child = Some(child);

        let pg_isready = find_binary("pg_isready");
        let deadline = Instant::now() + POSTGRES_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "postgres on port {} exited ({status}) before accepting connections; {}",
                    self.port,
                    log_tail(&log)
                );
            }
            // The postmaster writes "ready" into postmaster.pid once it accepts
            // connections: that proves the server on the port is this one.
            if self.postmaster_ready(pid) && self.accepts_connections(pg_isready.as_deref()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.shutdown("QUIT", Duration::from_secs(5));
                bail!(
                    "postgres on port {} did not accept connections within {:?}; {}",
                    self.port,
                    POSTGRES_READY_TIMEOUT,
                    log_tail(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The `-c` settings turning TLS on, for a [`start_tls`](Self::start_tls) server.
    fn tls_settings(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let file = |name: &str| self.dir.path.join(name).display().to_string();
        vec![
            "-c".to_owned(),
            "ssl=on".to_owned(),
            "-c".to_owned(),
            format!("ssl_cert_file={}", file(&format!("{TLS_SERVER_STEM}.crt"))),
            "-c".to_owned(),
            format!("ssl_key_file={}", file(&format!("{TLS_SERVER_STEM}.key"))),
        ]
    }

    /// Whether `data/postmaster.pid` names `pid`, our port, and status "ready".
    fn postmaster_ready(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        lines.first().and_then(|line| line.parse::<u32>().ok()) == Some(pid)
            && lines.get(3).and_then(|line| line.parse::<u16>().ok()) == Some(self.port)
            && lines.get(7) == Some(&"ready")
    }

    /// TCP connect to the port, then `pg_isready` when it is installed.
    fn accepts_connections(&self, pg_isready: Option<&Path>) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            return false;
        }
        let Some(pg_isready) = pg_isready else {
            return true;
        };
        Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-t", "2", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    }

    /// Sends `signal` to the postmaster and waits up to `timeout` for it to exit, then
    /// kills it.
    fn shutdown(&mut self, signal: &str, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None))
            && send_signal(child.id(), signal)
            && wait_timeout(&mut child, timeout).is_some()
        {
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // The data is thrown away: an "immediate" shutdown is enough.
        self.shutdown("QUIT", Duration::from_secs(5));
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn psql(url: &str, sql: &str) -> String {
        let psql = find_binary("psql").unwrap();
        let out = Command::new(psql)
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {url} -c {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("app_test-1.x~"), "app_test-1.x~");
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }

    /// `psql` with a libpq connection string: (success, stdout + stderr).
    fn psql_conninfo(conninfo: &str, sql: &str) -> (bool, String) {
        let out = Command::new(find_binary("psql").unwrap())
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_owned())
    }

    #[test]
    fn postgres_tls_refuses_connections_without_tls() {
        let started = Instant::now();
        let ca = TestCa::new().unwrap();
        let mut server = PostgresServer::start_tls(&ca).unwrap();
        eprintln!("TLS postgres up in {:?}", started.elapsed());
        let port = server.port();
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require")
        );
        let ssl_used = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        assert_eq!(psql(&server.url(), ssl_used), "t");

        let db = server.create_database("tls db").unwrap();
        assert_eq!(
            db,
            format!("postgres://postgres@127.0.0.1:{port}/tls%20db?sslmode=require")
        );
        assert_eq!(psql(&db, "select current_database()"), "tls db");

        let base = format!("port={port} user=postgres dbname=postgres");
        let (ok, out) = psql_conninfo(
            &format!("host=127.0.0.1 {base} sslmode=disable"),
            "select 1",
        );
        assert!(!ok, "{out}");
        assert!(out.contains("no encryption"), "rejected by pg_hba: {out}");

        // The certificate names both the IP address and localhost.
        let ca_file = server.ca_file().display().to_string();
        for host in ["127.0.0.1", "localhost"] {
            let conninfo = format!("host={host} {base} sslmode=verify-full sslrootcert={ca_file}");
            let (ok, out) = psql_conninfo(&conninfo, ssl_used);
            assert!(ok && out == "t", "{host}: {out}");
        }
        let other = TestCa::new().unwrap();
        let other_file = server.dir.path.join("other-ca.crt");
        other.write_ca(&other_file).unwrap();
        let conninfo = format!(
            "host=127.0.0.1 {base} sslmode=verify-full sslrootcert={}",
            other_file.display()
        );
        let (ok, out) = psql_conninfo(&conninfo, "select 1");
        assert!(!ok, "{out}");
        assert!(out.contains("certificate verify failed"), "{out}");

        server.restart().unwrap();
        assert_eq!(psql(&db, ssl_used), "t", "TLS again after a restart");
    }

    #[test]
    fn postgres_databases_stop_restart() {
        let mut server = PostgresServer::start().unwrap();
        let port = server.port();
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );
        assert_eq!(psql(&server.url(), "select 1"), "1");

        let alpha = server.create_database("alpha").unwrap();
        let beta = server.create_database("beta db").unwrap();
        assert_eq!(alpha, format!("postgres://postgres@127.0.0.1:{port}/alpha"));
        assert_eq!(
            beta,
            format!("postgres://postgres@127.0.0.1:{port}/beta%20db")
        );
        for url in [&alpha, &beta] {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
            assert_eq!(psql(url, "select 1"), "1");
        }
        assert_eq!(psql(&alpha, "select current_database()"), "alpha");
        assert_eq!(psql(&beta, "select current_database()"), "beta db");
        assert!(server.create_database("alpha").is_err(), "already exists");
        psql(
            &alpha,
            "create table t (v text); insert into t values ('kept')",
        );

        server.stop();
        assert_refused(port);
        assert!(server.create_database("gamma").is_err());

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(
            psql(&alpha, "select v from t"),
            "kept",
            "restart keeps data"
        );

        let dir = server.dir.path.clone();
        drop(server);
        assert!(!dir.exists(), "drop removes the temp dir");
        assert_refused(port);
    }
}
