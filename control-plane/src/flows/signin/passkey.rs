//! Signing in with a passkey: discoverable (no account named: the authenticator offers
//! its passkeys for this site, as in autofill) or for a named account; and a passkey as
//! the second step of a password sign-in.
//!
//! A sign-in counts against the account like a password attempt, is audited like one
//! (`login.failed` / `login.succeeded`), and a signature counter that went backwards (a
//! cloned authenticator) is refused and audited as `passkey.counter_regression`. An
//! account without passkeys gets decoy credential ids, the same each time, so the answer
//! does not tell whether it exists or has passkeys.

use deadpool_postgres::GenericClient;
use portcullis_common::token::Amr;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::fake::{FakePasskeyDistribution, WebauthnFakeCredentialGenerator};
use webauthn_rs::prelude::{
    AuthenticationResult, DiscoverableAuthentication, PasskeyAuthentication, PublicKeyCredential,
    Webauthn, WebauthnError,
};
use webauthn_rs_proto::AllowCredentials;

use super::session::{self, Subject};
use super::{Deps, SignInError};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::passkeys::{self, CEREMONY_SECS, Ceremony, Stored};
use crate::domain::tokens::Tokens;
use crate::domain::users::{self, User, check_device};
use crate::flows::passkeys::{Options, PasskeyError, relying_party, to_json};
use crate::infra::crypto::digest;
use crate::infra::limits::Scope;

/// What a sign-in ceremony remembers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    /// No account named: any passkey of the application, found by its user handle.
    Discoverable(DiscoverableAuthentication),
    /// An account named: its passkeys only.
    Named(PasskeyAuthentication),
    /// An account named that has no passkeys (or does not exist): nothing can pass.
    Decoy,
}

/// Opens a passkey sign-in; `login` (an email or username) limits it to that account's
/// passkeys.
pub async fn begin(
    deps: Deps<'_>,
    app: &App,
    login: Option<&str>,
    ctx: &Ctx,
) -> Result<Options, SignInError> {
    let (rp, _) = relying_party(app)?;
    let client = deps.pool.get().await?;
    let (mut options, state, user) = match login {
        None => {
            let (options, state) = rp
                .start_discoverable_authentication()
                .map_err(|e| refused_to_begin(&e))?;
            (options, State::Discoverable(state), None)
        }
        Some(login) => {
            let user = match users::find_by_login(&client, app.id, login).await? {
                Some(u) if !u.guest => Some(u.id),
                _ => None,
            };
            let keys = match user {
                Some(u) => passkeys::of_user(&client, u).await?,
                None => Vec::new(),
            };
            if keys.is_empty() {
                decoy(&rp, deps, login)?
            } else {
                let keys: Vec<_> = keys.into_iter().map(|k| k.passkey).collect();
                let (options, state) = rp
                    .start_passkey_authentication(&keys)
                    .map_err(|e| refused_to_begin(&e))?;
                (options, State::Named(state), user)
            }
        }
    };
    // The page chooses how to ask (a button, or `mediation: "conditional"` for autofill).
    options.mediation = None;
    let id = passkeys::begin(
        &client,
        app.id,
        user,
        Ceremony::SignIn,
        &to_json(&state)?,
        ctx.now,
    )
    .await?;
    Ok(Options {
        ceremony_id: id,
        options: to_json(&options)?,
        expires_in: CEREMONY_SECS,
    })
}

type Begun = (
    webauthn_rs::prelude::RequestChallengeResponse,
    State,
    Option<Uuid>,
);

/// Request options for an account without passkeys that look like those of one with
/// passkeys: a real challenge, and credential ids derived from the name under a server key.
fn decoy(rp: &Webauthn, deps: Deps<'_>, login: &str) -> Result<Begun, SignInError> {
    let (mut options, _) = rp
        .start_discoverable_authentication()
        .map_err(|e| refused_to_begin(&e))?;
    let generator =
        WebauthnFakeCredentialGenerator::<FakePasskeyDistribution>::new(&deps.secrets.decoy_key())
            .map_err(|e| refused_to_begin(&e))?;
    let ids = generator
        .generate(users::canonical(login).as_bytes())
        .map_err(|e| refused_to_begin(&e))?;
    options.public_key.allow_credentials = ids
        .into_iter()
        .map(|id| AllowCredentials {
            type_: "public-key".to_owned(),
            id,
            transports: None,
        })
        .collect();
    Ok((options, State::Decoy, None))
}

fn refused_to_begin(e: &WebauthnError) -> SignInError {
    PasskeyError::Invalid(format!("a passkey sign-in cannot begin: {e}")).into()
}

/// Finishes sign-in `ceremony_id` with the authenticator's answer: the session and its
/// tokens.
pub async fn finish(
    deps: Deps<'_>,
    app: &App,
    ceremony_id: &str,
    credential: &PublicKeyCredential,
    device_id: Option<&str>,
    ctx: &Ctx,
) -> Result<Tokens, SignInError> {
    let device = check_device(device_id)?;
    let (user, amr) = verify(deps, app, ceremony_id, credential, ctx).await?;
    let (_, tokens) = session::start(
        deps,
        app,
        Subject::Existing(&user),
        device.as_deref(),
        ctx,
        amr,
    )
    .await?;
    metrics::counter!("portcullis_logins_total", "outcome" => "ok").increment(1);
    Ok(tokens)
}

/// Checks the answer to sign-in `ceremony_id` (here, and on the OpenID Provider's page):
/// the user it signs in, and the `amr` of the passkey.
pub async fn verify(
    deps: Deps<'_>,
    app: &App,
    ceremony_id: &str,
    credential: &PublicKeyCredential,
    ctx: &Ctx,
) -> Result<(User, Vec<Amr>), SignInError> {
    let (rp, _) = relying_party(app)?;
    let mut client = deps.pool.get().await?;
    let begun = passkeys::finish(
        &client,
        &digest(ceremony_id),
        app.id,
        Ceremony::SignIn,
        ctx.now,
    )
    .await?
    .ok_or(PasskeyError::Ceremony)?;
    let state: State = serde_json::from_value(begun.state).map_err(|_| PasskeyError::Ceremony)?;
    let tx = client.transaction().await?;
    let stored = passkeys::by_credential_in(&tx, app.id, credential.get_credential_id()).await?;
    // The passkey must be the named account's, or (discoverable) carry its user's handle.
    let stored = match (&state, stored) {
        (State::Named(_), Some(s)) if begun.user == Some(s.user) => Some(s),
        (State::Discoverable(_), Some(s))
            if handle_matches(&tx, &rp, app.id, &s, credential).await? =>
        {
            Some(s)
        }
        _ => None,
    };
    let Some(mut stored) = stored else {
        fail(&tx, app, begun.user, ctx).await?;
        tx.commit().await?;
        return Err(SignInError::InvalidCredentials);
    };
    count_failure(deps, app, stored.user).await?;
    let checked = match state {
        State::Named(state) => rp.finish_passkey_authentication(credential, &state),
        State::Discoverable(state) => {
            rp.finish_discoverable_authentication_v2(credential, state, &stored.passkey)
        }
        State::Decoy => Err(WebauthnError::CredentialNotFound),
    };
    let result = match used(&tx, app, &mut stored, checked, ctx).await? {
        Some(result) => result,
        None => {
            fail(&tx, app, Some(stored.user), ctx).await?;
            tx.commit().await?;
            return Err(SignInError::InvalidCredentials);
        }
    };
    tx.commit().await?;
    drop(client);
    forgive(deps, app, stored.user).await;
    let client = deps.pool.get().await?;
    let user = users::find(&client, app.id, stored.user)
        .await?
        .ok_or(SignInError::InvalidCredentials)?;
    drop(client);
    Ok((user, amr(&stored, &result)))
}

/// `amr` of a passkey: the key (`hwk` in hardware, `swk` when it may be synced) and, user
/// verification being required, `mfa`.
fn amr(stored: &Stored, result: &AuthenticationResult) -> Vec<Amr> {
    let synced = stored.backup_eligible() || result.backup_eligible();
    vec![if synced { Amr::Swk } else { Amr::Hwk }, Amr::Mfa]
}

/// Whether the answer's user handle is the one of the passkey's user.
async fn handle_matches(
    tx: &impl GenericClient,
    rp: &Webauthn,
    app: Uuid,
    stored: &Stored,
    credential: &PublicKeyCredential,
) -> Result<bool, SignInError> {
    let Ok((handle, _)) = rp.identify_discoverable_authentication(credential) else {
        return Ok(false);
    };
    Ok(passkeys::user_by_handle(tx, app, handle).await? == Some(stored.user))
}

/// After the library's check: on success the counter and flags are stored and the result
/// returned; on a failure `None` (a counter that went backwards is audited).
async fn used(
    tx: &impl GenericClient,
    app: &App,
    stored: &mut Stored,
    checked: Result<AuthenticationResult, WebauthnError>,
    ctx: &Ctx,
) -> Result<Option<AuthenticationResult>, SignInError> {
    // The library compares the counter with the one stored when the ceremony began; the
    // row (locked) may have moved on since (another ceremony finished first): compare
    // again with it, as WebAuthn §7.2 step 21 asks.
    let known = stored.credential().counter;
    let checked = checked.and_then(|result| {
        let counter = result.counter();
        if (counter > 0 || known > 0) && counter <= known {
            Err(WebauthnError::CredentialPossibleCompromise)
        } else {
            Ok(result)
        }
    });
    match checked {
        Ok(result) if result.user_verified() => {
            stored.passkey.update_credential(&result);
            passkeys::used_in(tx, stored.id, &stored.passkey, ctx.now).await?;
            Ok(Some(result))
        }
        Ok(_) => Ok(None),
        Err(WebauthnError::CredentialPossibleCompromise) => {
            let details = json!({ "passkey_id": stored.id });
            let event = "passkey.counter_regression";
            audit::record(tx, Event::by_user(app.id, stored.user, event, details, ctx)).await?;
            tracing::warn!(passkey = %stored.id, "a passkey's signature counter went backwards: refused");
            Ok(None)
        }
        Err(e) => {
            tracing::debug!(error = %e, "a passkey answer was refused");
            Ok(None)
        }
    }
}

async fn fail(
    tx: &impl GenericClient,
    app: &App,
    user: Option<Uuid>,
    ctx: &Ctx,
) -> Result<(), SignInError> {
    metrics::counter!("portcullis_logins_total", "outcome" => "failed").increment(1);
    let failed = Event {
        app: Some(app.id),
        user,
        actor: Actor::Anonymous,
        event: "login.failed",
        details: json!({ "method": "passkey" }),
        ctx,
    };
    audit::record(tx, failed).await?;
    Ok(())
}

fn failures<'a>(app: &'a str, account: &'a str) -> Scope<'a> {
    Scope::AccountFailures { app, account }
}

/// Counts an attempt on the account (as a password attempt); refused past the limit.
async fn count_failure(deps: Deps<'_>, app: &App, user: Uuid) -> Result<(), SignInError> {
    let (app_id, account) = (app.id.to_string(), user.to_string());
    let limit = app.settings.rate_limits.per_account_failures_per_hour;
    deps.limiter.hit(failures(&app_id, &account), limit).await?;
    Ok(())
}

async fn forgive(deps: Deps<'_>, app: &App, user: Uuid) {
    let (app_id, account) = (app.id.to_string(), user.to_string());
    deps.limiter.forgive(failures(&app_id, &account)).await;
}

/// The options of a passkey step-up for the sign-in whose `mfa_token` hashes to
/// `token_hash`, for `user`'s passkeys.
pub async fn step_up_options(
    client: &impl GenericClient,
    app: &App,
    user: Uuid,
    token_hash: &[u8],
    now: i64,
) -> Result<Value, SignInError> {
    let (rp, _) = relying_party(app)?;
    let keys: Vec<_> = passkeys::of_user(client, user)
        .await?
        .into_iter()
        .map(|k| k.passkey)
        .collect();
    if keys.is_empty() {
        return Err(SignInError::Invalid("this account has no passkey".into()));
    }
    let (mut options, state) = rp
        .start_passkey_authentication(&keys)
        .map_err(|e| refused_to_begin(&e))?;
    options.mediation = None;
    let state = to_json(&state)?;
    passkeys::begin_as(
        client,
        token_hash,
        app.id,
        Some(user),
        Ceremony::StepUp,
        &state,
        now,
    )
    .await?;
    to_json(&options).map_err(Into::into)
}

/// Checks a passkey answer for the step-up whose `mfa_token` hashes to `token_hash`;
/// `Some(amr)` of the passkey when it passed.
pub async fn check_step_up(
    tx: &impl GenericClient,
    app: &App,
    user: Uuid,
    token_hash: &[u8],
    credential: &PublicKeyCredential,
    ctx: &Ctx,
) -> Result<Option<Vec<Amr>>, SignInError> {
    let (rp, _) = relying_party(app)?;
    let Some(begun) = passkeys::finish(tx, token_hash, app.id, Ceremony::StepUp, ctx.now).await?
    else {
        return Ok(None);
    };
    let state: PasskeyAuthentication =
        serde_json::from_value(begun.state).map_err(|_| PasskeyError::Ceremony)?;
    let stored = passkeys::by_credential_in(tx, app.id, credential.get_credential_id()).await?;
    let Some(mut stored) = stored.filter(|s| s.user == user && begun.user == Some(user)) else {
        return Ok(None);
    };
    let checked = rp.finish_passkey_authentication(credential, &state);
    Ok(used(tx, app, &mut stored, checked, ctx)
        .await?
        .map(|result| amr(&stored, &result)))
}
