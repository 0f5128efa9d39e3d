//! The HTTP port byte for byte: the HTTP/1.1 fast path (pipelining, heads in pieces,
//! `Connection: close`) and what it hands to hyper (bodies, chunked, HTTP/1.0, HTTP/2,
//! malformed heads), each on a real socket against a running verifier; and claim text
//! that would inject a header.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::*;
use crate::support::*;

/// One parsed answer: status, headers (names lower-case), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `n` answers from `conn` (bodies framed by `content-length`).
async fn read_answers(conn: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = parsed.parse(&buf) {
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            if buf.len() >= head + len {
                answers.push(Answer {
                    status: parsed.code.unwrap(),
                    headers,
                    body: buf[head..head + len].to_vec(),
                });
                buf.drain(..head + len);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed after {} answers", answers.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    answers
}

struct Setup {
    _files: FileSetup,
    verifier: Running,
    token: String,
    sub: String,
}

async fn setup() -> Setup {
    let key = signing_key(31);
    let files = FileSetup::new(&jwks_of(&[&key]), "");
    let verifier = start(&files.vars()).await;
    eventually(Duration::from_secs(5), || ready(verifier.http)).await;
    let sub = new_id();
    let token = live_token(&key, &new_id(), &sub);
    Setup {
        _files: files,
        verifier,
        token,
        sub,
    }
}

fn check(token: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: v\r\nAuthorization: Bearer {token}\r\n\r\n")
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let s = setup().await;
    let mut conn = connect(s.verifier.http).await;
    let batch = format!(
        "{}GET /healthz HTTP/1.1\r\nHost: v\r\n\r\nGET /api/b HTTP/1.1\r\nHost: v\r\nX-Request-Id: r-3\r\n\r\n{}",
        check(&s.token, "/api/a"),
        check(&s.token, "/ext_authz/api/c?q=1"),
    );
    conn.write_all(batch.as_bytes()).await.unwrap();
    let answers = read_answers(&mut conn, 4).await;
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 200, 401, 200]
    );
    assert_eq!(answers[0].header("x-auth-user-id"), Some(s.sub.as_str()));
    assert_eq!(answers[0].header("x-auth-roles"), Some("admin,ops"));
    assert!(
        answers[0]
            .header("date")
            .is_some_and(|d| d.ends_with(" GMT"))
    );
    assert_eq!(answers[1].body, br#"{"status":"ok"}"#);
    assert_eq!(answers[2].header("x-request-id"), Some("r-3"));
    assert_eq!(
        answers[2].header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_slice(&answers[2].body).unwrap();
    assert_eq!(problem["code"], "missing_token");
    assert_eq!(answers[3].header("x-auth-user-id"), Some(s.sub.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_arriving_in_pieces_is_answered_once_whole() {
    let s = setup().await;
    let mut conn = connect(s.verifier.http).await;
    for piece in check(&s.token, "/api").as_bytes().chunks(50) {
        conn.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answers = read_answers(&mut conn, 1).await;
    assert_eq!(answers[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let s = setup().await;
    let mut conn = connect(s.verifier.http).await;
    let req = format!(
        "GET /api HTTP/1.1\r\nHost: v\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        s.token
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let answers = read_answers(&mut conn, 1).await;
    assert_eq!(answers[0].header("connection"), Some("close"));
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// Requests with bodies, chunked bodies and HTTP/1.0 go to hyper, which keeps serving the
/// connection, with the same answers (after an unread chunked body it may close it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_old_versions_are_handed_to_hyper() {
    let s = setup().await;
    let mut conn = connect(s.verifier.http).await;
    let batch = format!(
        "POST /v1/verify HTTP/1.1\r\nHost: v\r\nAuthorization: Bearer {t}\r\nContent-Length: 2\r\n\r\n{{}}\
         {check}\
         POST /api HTTP/1.1\r\nHost: v\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        t = s.token,
        check = check(&s.token, "/api/after"),
    );
    conn.write_all(batch.as_bytes()).await.unwrap();
    let answers = read_answers(&mut conn, 3).await;
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 200, 200]
    );
    let verified: serde_json::Value = serde_json::from_slice(&answers[0].body).unwrap();
    assert_eq!(verified["claims"]["sub"], s.sub.as_str());
    assert_eq!(answers[1].header("x-auth-user-id"), Some(s.sub.as_str()));
    assert_eq!(answers[2].header("x-auth-user-id"), Some(s.sub.as_str()));

    let mut old = connect(s.verifier.http).await;
    let req = format!(
        "GET /api HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        s.token
    );
    old.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    old.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.0 200") || text.starts_with("http/1.1 200"),
        "{text}"
    );
    assert!(text.contains(&format!("x-auth-user-id: {}", s.sub)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_heads_get_hyper_refusals() {
    let s = setup().await;
    let mut conn = connect(s.verifier.http).await;
    conn.write_all(b"GET /api HTTP/1.1\r\nBad Header Line\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut all)).await;
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 400"));

    let mut conn = connect(s.verifier.http).await;
    let huge = format!(
        "GET /api HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "x".repeat(20_000)
    );
    conn.write_all(huge.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut all)).await;
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 431"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_gets_the_same_answer() {
    let s = setup().await;
    let io = hyper_util::rt::TokioIo::new(connect(s.verifier.http).await);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/api/h2", s.verifier.http))
        .header("authorization", format!("Bearer {}", s.token))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-auth-user-id"], s.sub.as_str());
    let _ = res.into_body().collect().await.unwrap();
}

/// A signed claim carrying CR LF (a JSON escape) never reaches the answer as a header
/// line: the value is dropped, on the first (uncached) answer and on a cache hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_text_never_injects_a_header() {
    let key = signing_key(32);
    let files = FileSetup::new(&jwks_of(&[&key]), "");
    let v = start(&files.vars()).await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    let mut claims = live_claims(&new_id(), "user\r\nx-injected: yes");
    claims["roles"] = json!(["a\r\nx-injected: yes"]);
    let token = mint(&key, &header(&key), &claims);
    for _ in 0..2 {
        let mut conn = connect(v.http).await;
        conn.write_all(check(&token, "/api").as_bytes())
            .await
            .unwrap();
        let answers = read_answers(&mut conn, 1).await;
        assert_eq!(answers[0].status, 200);
        assert!(answers[0].header("x-injected").is_none());
        assert!(answers[0].header("x-auth-user-id").is_none());
        assert!(answers[0].header("x-auth-roles").is_none());
    }
}
