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

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// A received message, parsed for tests. Line breaks in the decoded fields are `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The message as stored. aiosmtpd adds `X-Peer`, `X-MailFrom` and `X-RcptTo`
    /// headers; the last two hold the SMTP envelope (see [`header`](Self::header)).
    pub raw: String,
    /// The addresses of the `To` header (display names dropped).
    pub to: Vec<String>,
    /// The address of the `From` header (display name dropped); empty when missing.
    pub from: String,
    /// The `Subject` header, unfolded and with encoded words decoded.
    pub subject: String,
    /// The first `text/plain` part (or the body of a non-multipart plain message),
    /// decoded; empty when there is none.
    pub text: String,
    /// The first `text/html` part, decoded.
    pub html: Option<String>,
}

impl Mail {
    /// Parses a message (CRLF or LF line endings). Never fails: what cannot be parsed is
    /// left empty or undecoded.
    pub fn parse(raw: &str) -> Mail {
        let normalized = raw.replace("\r\n", "\n");
        let (headers, body) = split_message(&normalized);
        let mut text = None;
        let mut html = None;
        collect_bodies(&headers, body, &mut text, &mut html);
        Mail {
            raw: raw.to_owned(),
            to: find_header(&headers, "to")
                .map(addresses)
                .unwrap_or_default(),
            from: find_header(&headers, "from")
                .and_then(|from| addresses(from).into_iter().next())
                .unwrap_or_default(),
            subject: find_header(&headers, "subject")
                .map(decode_encoded_words)
                .unwrap_or_default(),
            text: text.unwrap_or_default(),
            html,
        }
    }

    /// The first top-level header called `name` (any case), unfolded and with encoded
    /// words decoded; e.g. `header("x-rcptto")` for the envelope recipients.
    pub fn header(&self, name: &str) -> Option<String> {
        let normalized = self.raw.replace("\r\n", "\n");
        let (headers, _) = split_message(&normalized);
        find_header(&headers, name).map(decode_encoded_words)
    }
}

/// Header fields (lower-case names, unfolded values) and the body after the blank line.
fn split_message(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut offset = 0;
    let mut body = "";
    for line in text.split_inclusive('\n') {
        offset += line.len();
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            body = &text[offset..];
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Unfolding removes the line break only, keeping the whitespace.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((
                name.trim().to_ascii_lowercase(),
                value.trim_start().to_owned(),
            ));
        }
    }
    for (_, value) in &mut headers {
        value.truncate(value.trim_end().len());
    }
    (headers, body)
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Fills `text` and `html` with the first plain and HTML bodies, descending into
/// `multipart/*` parts; attachments are skipped.
fn collect_bodies(
    headers: &[(String, String)],
    body: &str,
    text: &mut Option<String>,
    html: &mut Option<String>,
) {
    let content_type = find_header(headers, "content-type").unwrap_or("text/plain");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("multipart/") {
        if let Some(boundary) = param(content_type, "boundary") {
            for part in split_multipart(body, &boundary) {
                let (part_headers, part_body) = split_message(part);
                collect_bodies(&part_headers, part_body, text, html);
            }
        }
        return;
    }
    let attachment = find_header(headers, "content-disposition").is_some_and(|disposition| {
        disposition
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("attachment")
    });
    let slot = match mime.as_str() {
        _ if attachment => return,
        "text/plain" | "" => text,
        "text/html" => html,
        _ => return,
    };
    if slot.is_none() {
        *slot = Some(decode_body(headers, body));
    }
}

/// The parts of a multipart body: the text between `--boundary` lines, up to the
/// closing `--boundary--`. The line break before a delimiter belongs to the delimiter.
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let rest = line.trim_end().strip_prefix(delimiter.as_str());
        if let Some(rest @ ("" | "--")) = rest {
            if let Some(start) = start {
                let part: &str = &body[start..offset];
                parts.push(part.strip_suffix('\n').unwrap_or(part));
            }
            if rest == "--" {
                return parts;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    // Not closed: keep what there is.
    if let Some(start) = start {
        parts.push(&body[start..]);
    }
    parts
}

/// A body undone of its `Content-Transfer-Encoding` and charset.
fn decode_body(headers: &[(String, String)], body: &str) -> String {
    let encoding = find_header(headers, "content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => decode_base64(body).unwrap_or_else(|| body.as_bytes().to_vec()),
        _ => body.as_bytes().to_vec(),
    };
    let charset = find_header(headers, "content-type").and_then(|value| param(value, "charset"));
    decode_charset(&bytes, charset.as_deref())
}

/// Quoted-printable (RFC 2045): `=XX` escapes, `=` at a line end is a soft break, and
/// trailing whitespace (added in transport) is dropped. Invalid escapes stay as they are.
fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.trim_end_matches([' ', '\t', '\r']);
        let (line, soft_break) = match line.strip_suffix('=') {
            Some(line) => (line, true),
            None => (line, false),
        };
        decode_hex_escapes(line, false, &mut out);
        if !soft_break && lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    out
}

/// Appends `text` to `out` with `=XX` escapes decoded (and `_` as a space when
/// `underscore_is_space`, as in RFC 2047 "Q" encoded words).
fn decode_hex_escapes(text: &str, underscore_is_space: bool, out: &mut Vec<u8>) {
    let hex = |byte: u8| {
        char::from(byte)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                if let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'=');
            }
            b'_' if underscore_is_space => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
}

/// Base64 with the whitespace of line wrapping ignored and padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).ok()
}

/// Text from bytes in `charset`: Latin-1 is mapped byte for byte, anything else is read
/// as UTF-8 (invalid sequences replaced).
fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    let latin1 = charset.is_some_and(|charset| {
        ["iso-8859-1", "iso_8859-1", "latin1", "latin-1", "l1"]
            .iter()
            .any(|name| charset.eq_ignore_ascii_case(name))
    });
    if latin1 {
        bytes.iter().copied().map(char::from).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`) in a header value; the
/// whitespace between two adjacent encoded words is dropped, as the RFC says.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        if let Some((decoded, len)) = encoded_word(candidate) {
            if !(after_word && before.trim().is_empty()) {
                out.push_str(before);
            }
            out.push_str(&decoded);
            rest = &candidate[len..];
            after_word = true;
        } else {
            out.push_str(before);
            out.push_str("=?");
            rest = &candidate[2..];
            after_word = false;
        }
    }
    out.push_str(rest);
    out
}

/// The encoded word at the start of `text`: its decoded text and its length.
fn encoded_word(text: &str) -> Option<(String, usize)> {
    let inner = text.strip_prefix("=?")?;
    let (charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let payload = &inner[..end];
    if [charset, encoding, payload]
        .iter()
        .any(|part| part.contains(char::is_whitespace))
    {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => decode_base64(payload)?,
        "Q" | "q" => {
            let mut bytes = Vec::with_capacity(payload.len());
            decode_hex_escapes(payload, true, &mut bytes);
            bytes
        }
        _ => return None,
    };
    // RFC 2231 lets a language follow the charset: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or_default();
    // `inner` is a suffix of `text`; the word ends after the "?=".
    let len = text.len() - inner.len() + end + 2;
    Some((decode_charset(&bytes, Some(charset)), len))
}

/// The value of parameter `name` (any case) in a header such as `Content-Type`.
fn param(value: &str, name: &str) -> Option<String> {
    split_top_level(value, ';')
        .into_iter()
        .skip(1)
        .find_map(|item| {
            let (key, val) = item.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| unquote(val.trim()))
        })
}

/// The addresses in an address-list header: `"Name" <a@b>, c@d` gives `a@b` and `c@d`.
fn addresses(value: &str) -> Vec<String> {
    split_top_level(value, ',')
        .into_iter()
        .filter_map(|item| {
            let item = item.trim();
            let address = match (item.rfind('<'), item.rfind('>')) {
                (Some(open), Some(close)) if open < close => &item[open + 1..close],
                _ => item,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_owned())
        })
        .collect()
}

/// Splits `text` at `separator`s outside double quotes and angle brackets.
fn split_top_level(text: &str, separator: char) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            _ if c == separator && !quoted && !angle => {
                items.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// A parameter value without its surrounding quotes and backslash escapes.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            out
        }
        None => value.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    /// Reads one SMTP reply (all its lines) and checks its code.
    fn expect_reply(reader: &mut impl BufRead, code: &str) {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }

    /// A raw SMTP conversation: EHLO, MAIL FROM, RCPT TO (each), DATA, QUIT.
    fn send(port: u16, from: &str, to: &[&str], message: &str) {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        expect_reply(&mut reader, "220");
        let mut command = |line: &str, code: &str| {
            stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
            expect_reply(&mut reader, code);
        };
        command("EHLO client.test", "250");
        command(&format!("MAIL FROM:<{from}>"), "250");
        for rcpt in to {
            command(&format!("RCPT TO:<{rcpt}>"), "250");
        }
        command("DATA", "354");
        let mut data = String::new();
        for line in message.lines() {
            // Dot-stuffing (RFC 5321 4.5.2).
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push('.');
        command(&data, "250");
        command("QUIT", "221");
    }

    fn assert_refused(port: u16) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    fn wrap(text: &str, width: usize) -> String {
        text.as_bytes()
            .chunks(width)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn receives_parses_stops_and_restarts() {
        let mut server = SmtpServer::start().unwrap();
        let port = server.port();
        assert_eq!(server.url(), format!("smtp://127.0.0.1:{port}"));
        let dir = server.dir.path.clone();
        assert!(server.messages().is_empty());

        let html = "<p>Your code is <b>123456</b> — café</p>";
        let message = format!(
            "From: \"Portcullis\" <noreply@portcullis.test>\n\
             To: \"Lovelace, Ada\" <ada@example.test>, bob@example.test\n\
             Subject: Your sign-in\n code =?utf-8?q?=E2=80=94_123456?=\n\
             MIME-Version: 1.0\n\
             Content-Type: multipart/alternative;\n boundary=\"=_b1\"\n\
             \n\
             This is a multi-part message.\n\
             --=_b1\n\
             Content-Type: text/plain; charset=utf-8\n\
             Content-Transfer-Encoding: quoted-printable\n\
             \n\
             Your code is 123456.\n\
             Caf=C3=A9 =E2=80=94 this line is long enough to be soft-wrapped by the =\n\
             encoder.\n\
             .leading dot\n\
             --=_b1\n\
             Content-Type: text/html; charset=utf-8\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             {}\n\
             --=_b1--\n",
            wrap(&base64::engine::general_purpose::STANDARD.encode(html), 20)
        );
        send(
            port,
            "noreply@portcullis.test",
            &["ada@example.test", "bob@example.test"],
            &message,
        );

        let mails = server.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(mails.len(), 1);
        let mail = &mails[0];
        assert_eq!(mail.from, "noreply@portcullis.test");
        assert_eq!(mail.to, ["ada@example.test", "bob@example.test"]);
        assert_eq!(mail.subject, "Your sign-in code — 123456");
        assert_eq!(
            mail.text,
            "Your code is 123456.\n\
             Café — this line is long enough to be soft-wrapped by the encoder.\n\
             .leading dot"
        );
        assert_eq!(mail.html.as_deref(), Some(html));
        assert_eq!(
            mail.header("X-MailFrom").as_deref(),
            Some("noreply@portcullis.test")
        );
        assert!(mail.raw.contains("Subject: Your sign-in"));

        server.stop();
        server.stop(); // idempotent
        assert_refused(port);
        assert_eq!(
            server.messages().len(),
            1,
            "stored mail outlives the process"
        );

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        send(
            port,
            "a@portcullis.test",
            &["c@example.test"],
            "Subject: second\n\nplain body\n",
        );
        let mails = server.wait_for(2, Duration::from_secs(10)).await;
        assert_eq!(mails.len(), 2);
        assert_eq!(
            mails[0].subject, "Your sign-in code — 123456",
            "oldest first"
        );
        assert_eq!(mails[1].subject, "second");
        assert_eq!(mails[1].text, "plain body\n");
        assert_eq!(mails[1].html, None);
        assert_eq!(mails[1].to, Vec::<String>::new());

        drop(server);
        assert!(!dir.exists(), "drop removes the temp dir");
        assert_refused(port);
    }

    #[test]
    fn parses_nested_multipart_and_encodings() {
        let raw = "From: =?iso-8859-1?q?Ren=E9?= <rene@example.test>\r\n\
                   To: undisclosed <>, \"x, y\" <xy@example.test>\r\n\
                   Subject: =?utf-8?b?Q2Fmw6k=?= =?utf-8?q?_ok?= tail\r\n\
                   Content-Type: multipart/mixed; boundary=outer\r\n\
                   \r\n\
                   --outer\r\n\
                   Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
                   \r\n\
                   --inner\r\n\
                   Content-Type: text/plain; charset=\"ISO-8859-1\"\r\n\
                   Content-Transfer-Encoding: quoted-printable\r\n\
                   \r\n\
                   caf=E9 =3D 1  \r\n\
                   --inner\r\n\
                   Content-Type: text/html\r\n\
                   \r\n\
                   <p>hi</p>\r\n\
                   --inner--\r\n\
                   --outer\r\n\
                   Content-Type: text/plain\r\n\
                   Content-Disposition: attachment; filename=a.txt\r\n\
                   \r\n\
                   not the body\r\n\
                   --outer--\r\n";
        let mail = Mail::parse(raw);
        assert_eq!(mail.from, "rene@example.test");
        assert_eq!(
            mail.header("from").as_deref(),
            Some("René <rene@example.test>")
        );
        assert_eq!(mail.to, ["xy@example.test"]);
        assert_eq!(mail.subject, "Café ok tail");
        assert_eq!(mail.text, "café = 1");
        assert_eq!(mail.html.as_deref(), Some("<p>hi</p>"));
        assert_eq!(mail.header("x-missing"), None);
        assert_eq!(mail.raw, raw);

        assert_eq!(decode_quoted_printable("a=\nb=ZZ=4"), b"ab=ZZ=4");
        assert_eq!(decode_base64("aGk\n").unwrap(), b"hi");
        assert_eq!(
            decode_encoded_words("=?bogus =?x?y?z?="),
            "=?bogus =?x?y?z?="
        );
    }

    #[test]
    fn missing_aiosmtpd_names_the_package() {
        assert_eq!(
            first_importing_aiosmtpd([PathBuf::from("/bin/false")]),
            None
        );
        assert_eq!(
            missing_aiosmtpd().to_string(),
            "aiosmtpd not found: install it with 'apt-get install python3-aiosmtpd' \
             (or run scripts/ensure-deps)"
        );
        let python = aiosmtpd_python().unwrap();
        assert!(python.is_absolute());
    }

    #[test]
    fn servers_are_independent() {
        let a = SmtpServer::start().unwrap();
        let b = SmtpServer::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(a.log_path().is_file());
        assert_ne!(a.dir.path, b.dir.path);
    }
}
