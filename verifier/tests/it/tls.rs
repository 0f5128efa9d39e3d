//! TLS on the real verifier binary's two ports, seen from rustls clients: HTTPS and gRPC
//! over TLS, mutual TLS (the HTTP port lets probes in without a client certificate and
//! refuses checks with 403; the gRPC port refuses such callers in the handshake), and
//! certificate files replaced under a running verifier (a good set is picked up, a broken
//! one keeps the last good certificate).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis_tests::http::Reply;
use portcullis_tests::tls::{Issued, TestCa};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::grpc::check_request;
use crate::server::eventually;
use crate::sidecar::{Scratch, Sidecar, sample};
use crate::support::*;

const SECOND: Duration = Duration::from_secs(1);
/// Every exchange of these tests is bounded (a broken server must fail, not hang, a test).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
const CERT_VAR: &str = "PORTCULLIS_VERIFIER_TLS_CERT_FILE";
const KEY_VAR: &str = "PORTCULLIS_VERIFIER_TLS_KEY_FILE";
const CLIENT_CA_VAR: &str = "PORTCULLIS_VERIFIER_TLS_CLIENT_CA_FILE";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";

/// A client trusting `ca` only, presenting `client` when given, offering `alpn`.
fn client_config(ca: &TestCa, client: Option<&Issued>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

fn http_client(ca: &TestCa, client: Option<&Issued>) -> Arc<ClientConfig> {
    client_config(ca, client, b"http/1.1")
}

fn grpc_client(ca: &TestCa, client: Option<&Issued>) -> Arc<ClientConfig> {
    client_config(ca, client, b"h2")
}

/// The client's side of the handshake with `addr` as `localhost`. Under TLS 1.3 this
/// succeeds before the server has judged a client certificate; see [`exchange`].
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    })
    .await
    .map_err(|_| io::Error::other("TLS handshake timed out"))?
}

/// Sends `probe` over TLS and reads until the server closes: the bytes, or the error
/// text when TLS failed (a refused client certificate shows here, as the server's alert).
async fn exchange(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    probe: &[u8],
) -> Result<Vec<u8>, String> {
    let mut tls = connect(addr, config).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let io = async {
        tls.write_all(probe).await?;
        tls.flush().await?;
        tls.read_to_end(&mut answer).await
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, io).await {
        Ok(Ok(_)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("TLS exchange timed out".into()),
    }
}

/// One HTTPS request (HTTP/1.1) on a fresh connection.
async fn https(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let request = async {
        let tls = connect(addr, config).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .uri(path)
            .header("host", format!("localhost:{}", addr.port()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = sender
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err("HTTPS request timed out".into()))
}

async fn https_verify(addr: SocketAddr, config: Arc<ClientConfig>, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    https(addr, config, "/v1/verify", &[("authorization", &auth)])
        .await
        .unwrap()
}

async fn https_ready(addr: SocketAddr, config: Arc<ClientConfig>) -> bool {
    https(addr, config, "/readyz", &[])
        .await
        .is_ok_and(|r| r.status == 200)
}

/// Connects tonic through [`connect`] (tonic itself is built without TLS here).
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move { connect(addr, config).await.map(TokioIo::new) })
    }
}

/// One ext_authz `Check` of `token` on `/orders` over gRPC on TLS.
async fn grpc_check(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    token: &str,
) -> Result<CheckResponse, String> {
    let call = async {
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(Connector { addr, config })
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        AuthorizationClient::new(channel)
            .check(check_request(
                "/orders",
                &[("authorization", format!("Bearer {token}"))],
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("check: {e:?}"))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err("gRPC check timed out".into()))
}

/// The status code of an allowed check (0) and its `x-auth-session-id` header.
fn allowed_session(resp: &CheckResponse) -> (i32, Option<String>) {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let code = resp.status.as_ref().map_or(-1, |s| s.code);
    let sid = match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-auth-session-id")
            .map(|h| h.value.clone()),
        _ => None,
    };
    (code, sid)
}

/// A directory with a JWKS of `key` and a server certificate from `ca`.
fn files(ca: &TestCa, key: &ed25519_dalek::SigningKey) -> Scratch {
    let dir = Scratch::new("tls");
    std::fs::write(dir.join("jwks.json"), jwks_of(&[key])).unwrap();
    ca.issue_server(&["localhost", "127.0.0.1"])
        .unwrap()
        .write(&dir.path, "server")
        .unwrap();
    dir
}

fn tls_vars(dir: &Scratch) -> Vec<(&'static str, String)> {
    let path = |name: &str| dir.join(name).display().to_string();
    vec![
        ("PORTCULLIS_VERIFIER_JWKS_FILE", path("jwks.json")),
        (CERT_VAR, path("server.crt")),
        (KEY_VAR, path("server.key")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_over_tls_answer_and_plain_connections_fail() {
    let ca = TestCa::new().unwrap();
    let key = signing_key(71);
    let dir = files(&ca, &key);
    let v = Sidecar::spawn(&tls_vars(&dir));
    let client = http_client(&ca, None);
    eventually(10 * SECOND, || https_ready(v.http, client.clone())).await;

    let health = https(v.http, client.clone(), "/healthz", &[])
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let sid = new_id();
    let token = live_token(&key, &sid, &new_id());
    let ok = https_verify(v.http, client.clone(), &token).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["claims"]["sid"], sid.as_str());
    let bad = https_verify(v.http, client.clone(), "a.b.c").await;
    assert_eq!(bad.status, 401, "{}", bad.body);

    let check = grpc_check(v.grpc, grpc_client(&ca, None), &token)
        .await
        .unwrap();
    assert_eq!(allowed_session(&check), (0, Some(sid)));

    // Plain HTTP on the TLS port gets no HTTP answer (the handshake fails on it).
    let mut tcp = TcpStream::connect(v.http).await.unwrap();
    tcp.write_all(HEALTHZ).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Plain gRPC neither.
    let plain = async {
        let mut c = AuthorizationClient::connect(format!("http://{}", v.grpc)).await?;
        c.check(check_request("/orders", &[])).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        tokio::time::timeout(EXCHANGE_TIMEOUT, plain)
            .await
            .is_ok_and(|r| r.is_err()),
        "plain gRPC answered"
    );
    // A client that does not trust the CA refuses the verifier's certificate.
    let stranger = TestCa::new().unwrap();
    let err = https(v.http, http_client(&stranger, None), "/healthz", &[])
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_http_port_lets_probes_in_and_checks_need_a_client_certificate() {
    let ca = TestCa::new().unwrap();
    let key = signing_key(72);
    let dir = files(&ca, &key);
    ca.write_ca(&dir.join("clients.crt")).unwrap();
    let mut vars = tls_vars(&dir);
    vars.push((CLIENT_CA_VAR, dir.join("clients.crt").display().to_string()));
    let v = Sidecar::spawn(&vars);

    let anonymous = http_client(&ca, None);
    eventually(10 * SECOND, || https_ready(v.http, anonymous.clone())).await;
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = https(v.http, anonymous.clone(), probe, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{probe}: {}", r.body);
    }
    let sid = new_id();
    let token = live_token(&key, &sid, &new_id());
    let auth = format!("Bearer {token}");
    for path in ["/v1/verify", "/orders", "/ext_authz/orders"] {
        let r = https(v.http, anonymous.clone(), path, &[("authorization", &auth)])
            .await
            .unwrap();
        assert_eq!((r.status, r.code().as_str()), (403, "forbidden"), "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
        assert!(r.header("x-auth-user-id").is_none(), "{path}");
    }

    let envoy = ca.issue_client("envoy").unwrap();
    let trusted = http_client(&ca, Some(&envoy));
    let ok = https_verify(v.http, trusted.clone(), &token).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["claims"]["sid"], sid.as_str());
    let r = https_verify(v.http, trusted.clone(), "a.b.c").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = https(v.http, trusted, "/orders", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-auth-session-id"), Some(sid.as_str()));

    // A certificate from another CA is refused in the handshake (not let in as anonymous).
    let stranger = TestCa::new().unwrap().issue_client("envoy").unwrap();
    let err = exchange(v.http, http_client(&ca, Some(&stranger)), HEALTHZ)
        .await
        .unwrap_err();
    assert!(err.contains("alert"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_grpc_port_refuses_callers_without_a_client_certificate_in_the_handshake() {
    let ca = TestCa::new().unwrap();
    let key = signing_key(73);
    let dir = files(&ca, &key);
    ca.write_ca(&dir.join("clients.crt")).unwrap();
    let mut vars = tls_vars(&dir);
    vars.push((CLIENT_CA_VAR, dir.join("clients.crt").display().to_string()));
    let v = Sidecar::spawn(&vars);
    eventually(10 * SECOND, || https_ready(v.http, http_client(&ca, None))).await;
    let sid = new_id();
    let token = live_token(&key, &sid, &new_id());

    // No certificate: the server's alert ends the session before any HTTP/2.
    let err = exchange(
        v.grpc,
        grpc_client(&ca, None),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    .await
    .unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");
    let err = grpc_check(v.grpc, grpc_client(&ca, None), &token)
        .await
        .unwrap_err();
    assert!(!err.is_empty());

    // A certificate from another CA: refused the same way.
    let stranger = TestCa::new().unwrap().issue_client("envoy").unwrap();
    let err = exchange(
        v.grpc,
        grpc_client(&ca, Some(&stranger)),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    .await
    .unwrap_err();
    assert!(err.contains("alert"), "{err}");
    assert!(
        grpc_check(v.grpc, grpc_client(&ca, Some(&stranger)), &token)
            .await
            .is_err()
    );

    // The CA's client certificate: a normal answer.
    let envoy = ca.issue_client("envoy").unwrap();
    let check = grpc_check(v.grpc, grpc_client(&ca, Some(&envoy)), &token)
        .await
        .unwrap();
    assert_eq!(allowed_session(&check), (0, Some(sid)));
}

/// Replaces `path` in one step (a rename), so the reloader never sees half a file.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_are_served_and_a_broken_replacement_is_ignored() {
    let (first, second) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    let key = signing_key(74);
    let dir = files(&first, &key);
    let v = Sidecar::spawn(&tls_vars(&dir));
    eventually(10 * SECOND, || {
        https_ready(v.http, http_client(&first, None))
    })
    .await;
    let (http_port, grpc_port) = (v.http, v.grpc);
    let serves = |ca: &TestCa| {
        let (http, grpc) = (http_client(ca, None), grpc_client(ca, None));
        async move {
            https_ready(http_port, http).await
                // Without mutual TLS, the client's handshake completing is the whole test.
                && connect(grpc_port, grpc).await.is_ok()
        }
    };
    assert!(serves(&first).await);
    assert!(!https_ready(v.http, http_client(&second, None)).await);
    assert!(connect(v.grpc, grpc_client(&second, None)).await.is_err());

    // A certificate for a new key from another CA, written over the same paths.
    second
        .issue_server(&["localhost", "127.0.0.1"])
        .unwrap()
        .write(&dir.path, "server")
        .unwrap();
    eventually(15 * SECOND, || serves(&second)).await;
    assert!(!https_ready(v.http, http_client(&first, None)).await);
    assert!(connect(v.grpc, grpc_client(&first, None)).await.is_err());
    let token = live_token(&key, &new_id(), &new_id());
    assert_eq!(
        https_verify(v.http, http_client(&second, None), &token)
            .await
            .status,
        200
    );

    // Garbage in the certificate file: refused (one configuration serves both listeners),
    // and both keep serving.
    let refused = r#"portcullis_tls_reloads_total{outcome="refused"}"#;
    let metrics = |client| async move {
        https(http_port, client, "/metrics", &[])
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let before = sample(&metrics(http_client(&second, None)).await, refused);
    replace(
        &dir.join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
    );
    eventually(15 * SECOND, || async {
        sample(&metrics(http_client(&second, None)).await, refused) >= before + 1.0
    })
    .await;
    assert!(serves(&second).await, "{}", v.log());
    assert_eq!(
        https_verify(v.http, http_client(&second, None), &token)
            .await
            .status,
        200
    );
    assert!(!https_ready(v.http, http_client(&first, None)).await);
}
