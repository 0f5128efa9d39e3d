//! The SMTP server and the parser, checked.
#![allow(clippy::unwrap_used)]

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

// One scenario (~90 lines): an outage and its recovery, read in order.
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
