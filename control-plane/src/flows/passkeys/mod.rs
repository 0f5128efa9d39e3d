//! Passkeys (WebAuthn, through `webauthn-rs`): a signed-in user adds one ([`register`]),
//! and lists, renames and deletes them ([`manage`]). Signing in with one, or passing the
//! second step of a password sign-in with one, is a way of signing in:
//! `flows::signin::passkey`, on the relying party made here.
//!
//! Every ceremony's state stays in PostgreSQL (`domain::passkeys`), single use, five
//! minutes, bound to the application and, for a registration, to the signed-in user. User
//! verification is always required, so a passkey counts as two factors (`amr`:
//! `hwk` or `swk`, and `mfa`).

pub mod manage;
pub mod register;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use webauthn_rs::prelude::{Webauthn, WebauthnBuilder};

use crate::domain::apps::App;
use crate::domain::settings::passkeys::PasskeySettings;
use crate::flows::mfa::MfaError;
use crate::infra::store::DbError;

/// Why a passkey ceremony or change did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("passkeys are not enabled for this application (settings: passkeys)")]
    Off,
    /// The ceremony id is unknown, expired, already finished, or another user's.
    #[error("the passkey ceremony is unknown, expired or already finished: begin again")]
    Ceremony,
    #[error("passkey not found")]
    NotFound,
    #[error("this is the last way to sign in: set a password or add another passkey first")]
    LastWayIn,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Mfa(#[from] MfaError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(PasskeyError);

/// What the browser is given to run a ceremony: `options` goes to
/// `navigator.credentials.create()` or `.get()` (its binary fields base64url), and
/// `ceremony_id` comes back with the answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Options {
    pub ceremony_id: String,
    /// `{"publicKey": {...}}`: PublicKeyCredentialCreationOptions or
    /// PublicKeyCredentialRequestOptions, as JSON.
    #[schema(value_type = Object)]
    pub options: Value,
    /// Seconds the ceremony stays open.
    pub expires_in: i64,
}

/// The application's relying party, from its `passkeys` setting.
pub(crate) fn relying_party(app: &App) -> Result<(Webauthn, &PasskeySettings), PasskeyError> {
    let settings = app.settings.passkeys.as_ref().ok_or(PasskeyError::Off)?;
    let origins = settings.origin_urls();
    let (first, more) = origins.split_first().ok_or(PasskeyError::Off)?;
    let name = if settings.rp_name.is_empty() {
        &app.name
    } else {
        &settings.rp_name
    };
    // Settings are validated when stored; a refusal here is a row written otherwise.
    let refused = |e| PasskeyError::Invalid(format!("the passkeys setting is not usable: {e}"));
    let mut builder = WebauthnBuilder::new(&settings.rp_id, first)
        .map_err(refused)?
        .rp_name(name);
    for origin in more {
        builder = builder.append_allowed_origin(origin);
    }
    Ok((builder.build().map_err(refused)?, settings))
}

pub(crate) fn to_json(value: &impl Serialize) -> Result<Value, PasskeyError> {
    serde_json::to_value(value).map_err(|e| DbError::Failed(format!("passkey state: {e}")).into())
}
