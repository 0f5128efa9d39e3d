//! The real `portcullis-verifier` binary as a child process for the topology and TLS
//! tests: its own environment only, free loopback ports, and its log kept in a file so a
//! failing test can quote it. Killed (and its directory removed) on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::support::{ISS, new_id};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-verifier");

/// A directory under the system temp dir, removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(kind: &str) -> Self {
        let path = std::env::temp_dir().join(format!("portcullis-{kind}-{}", new_id()));
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running verifier binary.
pub struct Sidecar {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    log: PathBuf,
    _dir: Scratch,
}

impl Sidecar {
    /// Starts the binary with `vars` on top of the listen addresses, the test issuer and
    /// debug logging of the verifier's own modules.
    pub fn spawn(vars: &[(&str, String)]) -> Self {
        let dir = Scratch::new("sidecar");
        let log = dir.join("verifier.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", portcullis_tests::free_port())
            .parse()
            .unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", portcullis_tests::free_port())
            .parse()
            .unwrap();
        let child = Command::new(BIN)
            .env_clear()
            .env("PORTCULLIS_VERIFIER_LISTEN", http.to_string())
            .env("PORTCULLIS_VERIFIER_GRPC_LISTEN", grpc.to_string())
            .env("PORTCULLIS_VERIFIER_ISSUER", ISS)
            .env("PORTCULLIS_LOG", "info,portcullis_verifier=debug")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        Self {
            child,
            http,
            grpc,
            log,
            _dir: dir,
        }
    }

    /// What the verifier logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- verifier log ---\n{}", self.log());
        }
    }
}

/// The value of the Prometheus sample `series` (name plus labels exactly as rendered,
/// e.g. `portcullis_verifier_resyncs_total`) in an exposition text; 0 when absent.
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
