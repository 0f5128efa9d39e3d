//! Mails that carry a link with a fresh single-use token (reset, first password,
//! verification, magic link): the token, the sealed message in the outbox and the audit
//! event, all in the caller's transaction, so a mail goes out exactly when its change
//! commits (and is delivered even if SMTP is down at that moment).

use deadpool_postgres::GenericClient;
use serde_json::{Value, json};

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::messages;
use crate::domain::one_time::{self, Purpose};
use crate::domain::users::{User, canonical};
use crate::infra::crypto::Secrets;
use crate::infra::outbox;
use crate::infra::store::DbError;

/// What a mailed link is made with: the public base URL and the key sealing the message.
#[derive(Clone, Copy, Debug)]
pub struct Links<'a> {
    pub public_url: &'a str,
    pub secrets: &'a Secrets,
}

/// Why a mail was not queued.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the account has no email address")]
    NoAddress,
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(MailError);

/// A mail that carries a link with a fresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mailing {
    /// `/password/forgot`.
    PasswordReset,
    /// Registration without a password (`send_reset_email`): a reset token, worded as a
    /// first password.
    SetPassword,
    /// `verify_email` at registration, or `/email/verify/send`.
    EmailVerification,
    /// `/magic-link`, with the checked `redirect_uri` the sign-in returns to.
    MagicLink { redirect_uri: Option<String> },
}

/// Makes the token and queues its mail in the caller's transaction; records the event.
/// The user must have an email address. Wake the outbox after the commit.
pub async fn mail_in(
    tx: &impl GenericClient,
    links: &Links<'_>,
    app: &App,
    user: &User,
    mailing: &Mailing,
    ctx: &Ctx,
) -> Result<(), MailError> {
    let Some(email) = user.email.as_deref() else {
        return Err(MailError::NoAddress);
    };
    let (purpose, data, page, event) = match mailing {
        Mailing::PasswordReset | Mailing::SetPassword => (
            Purpose::PasswordReset,
            json!({}),
            "password/reset",
            "password.reset_requested",
        ),
        Mailing::EmailVerification => (
            Purpose::EmailVerification,
            // Bound to the address: a token mailed to an old address confirms nothing new.
            json!({ "email": canonical(email) }),
            "email/verify",
            "email.verification_sent",
        ),
        Mailing::MagicLink { redirect_uri } => (
            Purpose::MagicLink,
            json!({ "redirect_uri": redirect_uri, "email": canonical(email) }),
            "magic-link/verify",
            "magic_link.sent",
        ),
    };
    let token = one_time::issue_in(tx, app.id, user.id, purpose, data, ctx.now).await?;
    let link = messages::link(links.public_url, app, page, &token);
    let (kind, message) = match mailing {
        Mailing::PasswordReset => ("password_reset", messages::password_reset(app, &link)),
        Mailing::SetPassword => ("set_password", messages::set_password(app, &link)),
        Mailing::EmailVerification => (
            "email_verification",
            messages::email_verification(app, &link),
        ),
        Mailing::MagicLink { .. } => ("magic_link", messages::magic_link(app, &link)),
    };
    outbox::enqueue(tx, links.secrets, app.id, kind, email, &message).await?;
    audit::record(
        tx,
        Event {
            app: Some(app.id),
            user: Some(user.id),
            // Asked for by address, with no credential; a verification by the signed-in
            // user (or at their registration).
            actor: match mailing {
                Mailing::PasswordReset | Mailing::MagicLink { .. } => Actor::Anonymous,
                Mailing::SetPassword | Mailing::EmailVerification => Actor::User,
            },
            event,
            details: Value::Null,
            ctx,
        },
    )
    .await
    .map_err(Into::into)
}
