//! The texts of what Portcullis sends: mail (a plain-text and an HTML body) and SMS.
//!
//! Every mail that carries a token links to `{PUBLIC_URL}/v1/apps/{app}/...?token=<token>`
//! (built by [`link`] from configuration, never from a request's Host header). An OTP
//! message carries the code as the only run of six digits in its text. Values from owners
//! (the application's name) are escaped in HTML.

use crate::domain::apps::App;
use crate::infra::outbox::Message;

/// `{public_url}/v1/apps/{app}/{page}?token={token}`; the token is base64url, so it needs no
/// escaping in a URL.
pub fn link(public_url: &str, app: &App, page: &str, token: &str) -> String {
    format!("{public_url}/v1/apps/{}/{page}?token={token}", app.id)
}

/// The sender name: the application's setting, or its name.
fn from_name(app: &App) -> String {
    if app.settings.mail_from_name.is_empty() {
        app.name.clone()
    } else {
        app.settings.mail_from_name.clone()
    }
}

/// A mail with one call to action: the same words in text and HTML.
fn mail(app: &App, subject: String, lead: &str, action: &str, link: &str, after: &str) -> Message {
    let name = from_name(app);
    let text = format!("{lead}\n\n{action}:\n{link}\n\n{after}\n\n-- {name}\n");
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <p>{lead}</p><p><a href=\"{href}\">{action}</a></p>\
         <p style=\"color:#555\">{after}</p><p style=\"color:#555\">{name}</p></body></html>",
        lead = escape(lead),
        href = escape(link),
        action = escape(action),
        after = escape(after),
        name = escape(&name),
    );
    Message::Email {
        from_name: name,
        subject,
        text,
        html,
    }
}

const IGNORE: &str = "If you did not ask for this, you can ignore this message.";

pub fn password_reset(app: &App, link: &str) -> Message {
    mail(
        app,
        format!("Reset your {} password", app.name),
        "Someone asked to reset the password of your account.",
        "Choose a new password",
        link,
        &format!("The link works once, for 30 minutes. {IGNORE}"),
    )
}

/// Sent at registration without a password (`send_reset_email`).
pub fn set_password(app: &App, link: &str) -> Message {
    mail(
        app,
        format!("Set your {} password", app.name),
        "An account was created for you.",
        "Choose your password",
        link,
        &format!(
            "The link works once, for 30 minutes; after that, ask for a password reset. {IGNORE}"
        ),
    )
}

pub fn email_verification(app: &App, link: &str) -> Message {
    mail(
        app,
        format!("Confirm your email address for {}", app.name),
        "Please confirm that this address is yours.",
        "Confirm my email address",
        link,
        &format!("The link works for 24 hours. {IGNORE}"),
    )
}

pub fn magic_link(app: &App, link: &str) -> Message {
    mail(
        app,
        format!("Your {} sign-in link", app.name),
        "Here is the sign-in link you asked for.",
        "Sign in",
        link,
        &format!("The link works once, for 15 minutes. {IGNORE}"),
    )
}

/// The sender name without runs of six or more digits, for texts whose only such run must
/// be the code.
fn name_beside_code(app: &App) -> String {
    let name = from_name(app);
    let mut out = String::with_capacity(name.len());
    let mut run = String::new();
    for c in name.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if run.len() < 6 {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// A one-time code by mail: the code is the only run of six digits in the text.
pub fn otp_email(app: &App, code: &str) -> Message {
    let name = name_beside_code(app);
    let lead = format!("Your verification code is {code}.");
    let after = format!("It expires in ten minutes. Never share it. {IGNORE}");
    Message::Email {
        from_name: name.clone(),
        subject: format!("Your {name} verification code"),
        text: format!("{lead}\n\n{after}\n\n-- {name}\n"),
        html: format!(
            "<!doctype html><html><body style=\"font-family:sans-serif\"><p>{}</p>\
             <p style=\"color:#555\">{}</p><p style=\"color:#555\">{}</p></body></html>",
            escape(&lead),
            escape(&after),
            escape(&name)
        ),
    }
}

pub fn otp_sms(app: &App, code: &str) -> Message {
    Message::Sms {
        body: format!(
            "{code} is your {} verification code. It expires in ten minutes.",
            name_beside_code(app)
        ),
    }
}

/// HTML text and attribute escaping.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::settings::AppSettings;

    fn app(name: &str) -> App {
        App {
            id: uuid::Uuid::nil(),
            owner_id: uuid::Uuid::nil(),
            name: name.to_owned(),
            settings: AppSettings::default(),
            expires_at: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn owner_text_is_escaped_in_html() {
        let Message::Email { html, text, .. } =
            password_reset(&app("<b>Shop</b>"), "https://x/?token=abc")
        else {
            unreachable!()
        };
        assert!(html.contains("&lt;b&gt;Shop&lt;/b&gt;") && !html.contains("<b>Shop"));
        assert!(text.contains("https://x/?token=abc"));
    }

    #[test]
    fn an_otp_text_holds_exactly_one_run_of_six_or_more_digits() {
        for message in [
            otp_email(&app("Shop"), "012345"),
            otp_sms(&app("Shop 1234567"), "012345"),
            otp_email(&app("99999999 Shop 12"), "012345"),
        ] {
            let text = match message {
                Message::Email { text, .. } => text,
                Message::Sms { body } => body,
            };
            let runs: Vec<&str> = text
                .split(|c: char| !c.is_ascii_digit())
                .filter(|r| r.len() >= 6)
                .collect();
            assert_eq!(runs, ["012345"], "{text}");
        }
    }
}
