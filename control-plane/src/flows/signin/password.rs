//! Signing in with a password, and the two ways a user comes to exist by asking:
//! registration and guests.
//!
//! A password sign-in counts every attempt against the account (and, with a CAPTCHA
//! provider, failures against the address) before the hash is checked, hashes the same
//! for unknown accounts, and records every failure (the account it named, never the
//! identifier or the password tried).

use portcullis_common::token::Amr;

use super::session::{self, Subject};
use super::{Deps, SignIn, SignInError, after_first_factor};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::mailings::Mailing;
use crate::domain::passwords;
use crate::domain::tokens::Tokens;
use crate::domain::users::{self, Changes, NewUser, User, canonical, check_device};
use crate::infra::crypto::random_token;
use crate::infra::limits::Scope;

/// A registration, as asked for.
#[derive(Debug, Default)]
pub struct Registration<'a> {
    pub email: &'a str,
    /// None: a random password is set (and `send_reset_email` lets the user choose one).
    pub password: Option<&'a str>,
    pub username: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub device_id: Option<&'a str>,
    /// Mail a link that confirms the address.
    pub verify_email: bool,
    pub send_reset_email: bool,
    pub captcha_token: Option<&'a str>,
}

/// A new user and their first session.
pub async fn register(
    deps: Deps<'_>,
    app: &App,
    r: &Registration<'_>,
    ctx: &Ctx,
) -> Result<(User, Tokens), SignInError> {
    deps.captcha
        .check(
            app.id,
            app.settings.captcha.as_ref(),
            r.captcha_token,
            ctx.ip,
        )
        .await?;
    let profile = Changes::profile(Some(r.email), r.username, r.phone)?;
    let device = check_device(r.device_id)?;
    let password = match r.password {
        Some(p) => {
            passwords::check_new(
                p,
                &app.settings.password_policy,
                &[
                    profile.email.as_deref().unwrap_or(""),
                    profile.username.as_deref().unwrap_or(""),
                ],
            )?;
            p.to_owned()
        }
        None => random_token(32),
    };
    let mut mailings = Vec::new();
    if r.verify_email {
        mailings.push(Mailing::EmailVerification);
    }
    if r.password.is_none() && r.send_reset_email {
        mailings.push(Mailing::SetPassword);
    }
    let new = NewUser {
        email: profile.email,
        username: profile.username,
        phone: profile.phone,
        password_hash: deps.hasher.hash(&password).await?,
        active: true,
        ..NewUser::default()
    };
    session::start(
        deps,
        app,
        Subject::New(&new, &mailings),
        device.as_deref(),
        ctx,
        vec![Amr::Pwd],
    )
    .await
}

/// What a password sign-in presents.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// An email address, or a username.
    pub login: &'a str,
    pub password: &'a str,
    pub device_id: Option<&'a str>,
    pub captcha_token: Option<&'a str>,
}

/// Sign in with email or username and password: tokens, or a step-up.
pub async fn login(
    deps: Deps<'_>,
    app: &App,
    attempt: &Attempt<'_>,
    ctx: &Ctx,
) -> Result<SignIn, SignInError> {
    let device = check_device(attempt.device_id)?;
    let user = check(deps, app, attempt, ctx).await?;
    let signed_in =
        after_first_factor(deps, app, &user, vec![Amr::Pwd], device.as_deref(), ctx).await?;
    let outcome = match signed_in {
        SignIn::Tokens(_) => "ok",
        SignIn::Mfa(_) => "mfa_required",
    };
    metrics::counter!("portcullis_logins_total", "outcome" => outcome).increment(1);
    Ok(signed_in)
}

/// The password check of a sign-in (here, and on the OpenID Provider's page): the user
/// the email or username names, if the password is theirs.
pub async fn check(
    deps: Deps<'_>,
    app: &App,
    attempt: &Attempt<'_>,
    ctx: &Ctx,
) -> Result<User, SignInError> {
    let (login, password) = (attempt.login, attempt.password);
    // Oversized or NUL-bearing passwords are refused like wrong ones, before any hashing.
    if passwords::check_shape(password).is_err() || login.len() > 320 {
        return Err(SignInError::InvalidCredentials);
    }
    let client = deps.pool.get().await?;
    let user = users::find_by_login(&client, app.id, login).await?;
    drop(client);
    // Failures count against the account, whichever identifier named it (email or
    // username); an unknown identifier is counted as itself.
    let app_id = app.id.to_string();
    let account = user
        .as_ref()
        .map_or_else(|| canonical(login), |u| u.id.to_string());
    let failures = Scope::AccountFailures {
        app: &app_id,
        account: &account,
    };
    let ip_failures = Scope::LoginFailuresIp {
        app: &app_id,
        ip: ctx.ip,
    };
    if let Some(captcha) = &app.settings.captcha {
        // Unknown counts (Redis down) ask for the CAPTCHA rather than skip it.
        let due = |n: Option<u64>| n.is_none_or(|n| n >= u64::from(captcha.login_after_failures));
        if due(deps.limiter.count(failures).await) || due(deps.limiter.count(ip_failures).await) {
            deps.captcha
                .check(app.id, Some(captcha), attempt.captcha_token, ctx.ip)
                .await?;
        }
    }
    deps.limiter
        .hit(
            failures,
            app.settings.rate_limits.per_account_failures_per_hour,
        )
        .await?;
    let hash = user
        .as_ref()
        .filter(|u| !u.guest)
        .map(|u| u.password_hash.as_str());
    let verified = deps.hasher.verify(hash, password).await?;
    let named = user.as_ref().map(|u| u.id);
    let (Some(user), true) = (user, verified) else {
        metrics::counter!("portcullis_logins_total", "outcome" => "failed").increment(1);
        if app.settings.captcha.is_some() {
            deps.limiter.hit(ip_failures, u32::MAX).await?;
        }
        let client = deps.pool.get().await?;
        let failed = Event {
            app: Some(app.id),
            user: named,
            actor: Actor::Anonymous,
            event: "login.failed",
            details: serde_json::Value::Null,
            ctx,
        };
        audit::record(&client, failed).await?;
        return Err(SignInError::InvalidCredentials);
    };
    deps.limiter.forgive(failures).await;
    Ok(user)
}

/// A new guest user (no email, no password) and its session.
pub async fn guest(
    deps: Deps<'_>,
    app: &App,
    name: Option<&str>,
    device_id: Option<&str>,
    ctx: &Ctx,
) -> Result<Tokens, SignInError> {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 100 || n.chars().any(char::is_control)) {
        return Err(SignInError::Invalid(
            "name must be at most 100 characters".into(),
        ));
    }
    let device = check_device(device_id)?;
    let new = NewUser {
        // "!" is no Argon2 hash: no password ever matches a guest.
        password_hash: "!".to_owned(),
        active: true,
        guest: true,
        display_name: name.map(str::to_owned),
        ..NewUser::default()
    };
    let (_, tokens) = session::start(
        deps,
        app,
        Subject::New(&new, &[]),
        device.as_deref(),
        ctx,
        vec![Amr::Guest],
    )
    .await?;
    Ok(tokens)
}
