//! TLS on the listeners of both binaries (rustls with ring): a certificate chain and key
//! from PEM files, reloaded when the files change, and optionally client certificates
//! checked against a CA (the verifier's ext_authz ports).
//!
//! [`TlsListener`] accepts TCP connections and runs each handshake in its own task (a slow
//! or silent client never holds up the next one); finished connections come out of
//! [`TlsListener::accept`] as [`Conn`], the one stream type every server here serves.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);
/// A client silent for this long loses its handshake slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections between accept and the server taking them (handshaking, or waiting).
const HANDSHAKES_IN_FLIGHT: usize = 1024;

/// The process's rustls provider (ring). Called by both binaries before any TLS is set up,
/// so libraries that ask rustls for the default provider (redis) find the same one.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// A root store from a PEM file of CA certificates.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// What a listener asks of clients when a client CA is configured (without one, anyone
/// connects). `Optional`: a client without a certificate still connects, and
/// [`Conn::client_verified`] tells the server which kind it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    Optional,
    Required,
}

/// The files a TLS listener serves from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to these roots (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The server configurations one set of files makes, one per [`ClientCert`] (the same one
/// twice without a client CA).
#[derive(Debug)]
struct Configs {
    optional: Arc<rustls::ServerConfig>,
    required: Arc<rustls::ServerConfig>,
}

impl TlsFiles {
    /// Reads the files once and builds what they make now.
    fn load(&self) -> Result<Configs, TlsError> {
        let chain = read_certificates(&self.cert)?;
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Empty {
            path: self.key.clone(),
            what: "private key",
        })?;
        let roots = match &self.client_ca {
            Some(ca) => Some(Arc::new(read_roots(ca)?)),
            None => None,
        };
        let build = |mode: ClientCert| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?;
            let builder = match &roots {
                None => builder.with_no_client_auth(),
                Some(roots) => {
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                    let verifier = match mode {
                        ClientCert::Required => verifier,
                        ClientCert::Optional => verifier.allow_unauthenticated(),
                    };
                    let verifier = verifier
                        .build()
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config = builder.with_single_cert(chain.clone(), key.clone_key())?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        };
        let optional = build(ClientCert::Optional)?;
        let required = match roots {
            Some(_) => build(ClientCert::Required)?,
            None => optional.clone(),
        };
        Ok(Configs { optional, required })
    }

    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// Server configurations that follow their files: [`watch`](Self::watch) swaps in new
/// ones when the files change; a broken new set keeps the last good ones. One per
/// process, shared by every listener (each picks its [`ClientCert`]).
#[derive(Debug)]
pub struct ReloadingConfig {
    files: TlsFiles,
    current: ArcSwap<Configs>,
    /// The files' stamps taken just before the first load: a change written between that
    /// load and the first poll is still seen.
    loaded_from: Vec<Option<(SystemTime, u64)>>,
}

impl ReloadingConfig {
    /// Loads the files now (a start-up with unusable files fails here).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let loaded_from = files.stamp();
        let configs = files.load()?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(configs),
            loaded_from,
        }))
    }

    /// Whether client certificates are checked (a client CA is configured).
    pub fn checks_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    pub fn acceptor(&self, mode: ClientCert) -> tokio_rustls::TlsAcceptor {
        let configs = self.current.load();
        tokio_rustls::TlsAcceptor::from(match mode {
            ClientCert::Optional => configs.optional.clone(),
            ClientCert::Required => configs.required.clone(),
        })
    }

    /// Polls the files every [`RELOAD_POLL`] and reloads when they change. Runs forever.
    pub async fn watch(self: Arc<Self>) {
        let mut seen = self.loaded_from.clone();
        loop {
            tokio::time::sleep(RELOAD_POLL).await;
            let now = self.files.stamp();
            if now == seen {
                continue;
            }
            seen = now;
            match self.files.load() {
                Ok(configs) => {
                    self.current.store(Arc::new(configs));
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    metrics::counter!("portcullis_tls_reloads_total", "outcome" => "ok")
                        .increment(1);
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS files refused; serving the last good certificate");
                    metrics::counter!("portcullis_tls_reloads_total", "outcome" => "refused")
                        .increment(1);
                }
            }
        }
    }
}

/// One accepted connection, plain or TLS.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether the client presented a certificate that chains to the configured client CA
    /// (rustls refuses the handshake for a certificate that does not).
    pub fn client_verified(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(tls) => tls.get_ref().1.peer_certificates().is_some(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A listener that hands out plain TCP, or TLS connections whose handshake is done.
#[derive(Debug)]
pub enum Listener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl Listener {
    pub fn new(tcp: TcpListener, tls: Option<(Arc<ReloadingConfig>, ClientCert)>) -> Self {
        match tls {
            None => Listener::Plain(tcp),
            Some((config, mode)) => Listener::Tls(TlsListener::new(tcp, config, mode)),
        }
    }

    /// The next connection; an error is one failed accept (the caller pauses and goes on).
    pub async fn accept(&mut self) -> io::Result<(Conn, std::net::SocketAddr)> {
        match self {
            Listener::Plain(l) => {
                let (s, addr) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Plain(s), addr))
            }
            Listener::Tls(l) => l.accept().await,
        }
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            Listener::Plain(l) => l.local_addr(),
            Listener::Tls(l) => Ok(l.local_addr),
        }
    }
}

/// TLS connections, handshaken in the background (see the module docs).
#[derive(Debug)]
pub struct TlsListener {
    done: mpsc::Receiver<(Conn, std::net::SocketAddr)>,
    local_addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting (and closes the socket) with the listener.
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ReloadingConfig>, mode: ClientCert) -> Self {
        let local_addr = tcp
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, done) = mpsc::channel(64);
        let task = tokio::spawn(handshakes(tcp, config, mode, tx));
        Self {
            done,
            local_addr,
            task,
        }
    }

    pub async fn accept(&mut self) -> io::Result<(Conn, std::net::SocketAddr)> {
        self.done
            .recv()
            .await
            .ok_or_else(|| io::Error::other("the TLS accept loop ended"))
    }
}

async fn handshakes(
    tcp: TcpListener,
    config: Arc<ReloadingConfig>,
    mode: ClientCert,
    done: mpsc::Sender<(Conn, std::net::SocketAddr)>,
) {
    let in_flight = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (stream, addr) = match tcp.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = config.acceptor(mode);
        let sender = done.clone();
        tokio::spawn(async move {
            // The permit is held until the server takes the connection, so handshaken
            // connections waiting for a slow accept count against the limit too.
            let _permit = permit;
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = sender.send((Conn::Tls(Box::new(tls)), addr)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("portcullis_tls_handshake_failures_total").increment(1);
                    tracing::debug!(error = %e, peer = %addr, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("portcullis_tls_handshake_failures_total").increment(1);
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                }
            }
        });
        if done.is_closed() {
            return;
        }
    }
}

/// Reads a listener's TLS variables (both files or neither, and the optional client CA)
/// and loads them: the configuration the listeners serve from, read once at start.
pub fn files_from_env(
    env: &impl crate::env::Env,
    cert_var: &'static str,
    key_var: &'static str,
    client_ca_var: Option<&'static str>,
) -> Result<Option<Arc<ReloadingConfig>>, crate::env::ConfigError> {
    use crate::env::ConfigError;
    let set = |var: &str| env.set(var).map(PathBuf::from);
    let client_ca = client_ca_var.and_then(set);
    match (set(cert_var), set(key_var)) {
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert,
                key,
                client_ca,
            };
            // Refuse unusable files at start, naming the variable most likely at fault.
            ReloadingConfig::load(files.clone()).map(Some).map_err(|e| {
                let var = match &e {
                    TlsError::Read { path, .. } | TlsError::Empty { path, .. }
                        if *path == files.key =>
                    {
                        key_var
                    }
                    TlsError::ClientCa(_) => client_ca_var.unwrap_or(cert_var),
                    TlsError::Read { path, .. } | TlsError::Empty { path, .. }
                        if Some(path) == files.client_ca.as_ref() =>
                    {
                        client_ca_var.unwrap_or(cert_var)
                    }
                    _ => cert_var,
                };
                ConfigError::new(var, e.to_string())
            })
        }
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(ConfigError::new(
            cert_var,
            "a client CA needs TLS: set the certificate and key too",
        )),
        (Some(_), None) => Err(ConfigError::new(
            key_var,
            format!("required with {cert_var}"),
        )),
        (None, Some(_)) => Err(ConfigError::new(
            cert_var,
            format!("required with {key_var}"),
        )),
    }
}
