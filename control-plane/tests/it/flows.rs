//! The sign-in flows driven directly, without HTTP: the decisions a password sign-in
//! makes, refresh-token rotation, and the step-up, on a real PostgreSQL and Redis, with
//! the clock (`Ctx::now`) in the test's hands.

use std::sync::Arc;

use portcullis_control_plane::config::Config;
use portcullis_control_plane::domain::Ctx;
use portcullis_control_plane::domain::apps::App;
use portcullis_control_plane::domain::factors::Method;
use portcullis_control_plane::domain::tokens::Tokens;
use portcullis_control_plane::domain::users::{self, Changes, User};
use portcullis_control_plane::flows::admin::{self, apps, owners};
use portcullis_control_plane::flows::mfa::Proof;
use portcullis_control_plane::flows::mfa::enrol;
use portcullis_control_plane::flows::signin::password::{self, Attempt, Registration};
use portcullis_control_plane::flows::signin::{SignIn, SignInError, session, stepup};
use portcullis_control_plane::state::AppState;
use portcullis_tests::{PostgresServer, RedisServer};
use serde_json::{Value, json};

use crate::support::{self, PASSWORD, oathtool, unix_now};

/// A control plane without its HTTP surface, and one application with `settings`.
struct World {
    state: AppState,
    app: Arc<App>,
    _servers: (PostgresServer, RedisServer),
}

fn ctx(now: i64) -> Ctx {
    Ctx {
        ip: "192.0.2.7".parse().unwrap(),
        user_agent: None,
        request_id: None,
        now,
        dpop: None,
    }
}

async fn world(settings: Value) -> World {
    let (pg, redis) = tokio::task::spawn_blocking(|| {
        (
            PostgresServer::start().unwrap(),
            RedisServer::start().unwrap(),
        )
    })
    .await
    .unwrap();
    let db = pg.create_database("flows").unwrap();
    let env = support::env(&db, &redis.url(), "https://issuer.test", &[]);
    let state = portcullis_control_plane::assemble(Config::from_env(&env).unwrap())
        .await
        .unwrap();
    let now = ctx(unix_now());
    let owner = owners::Registration {
        email: "owner@example.com",
        password: PASSWORD,
        first_name: "",
        last_name: "",
    };
    let owner = owners::register(state.admin(), &owner, &now).await.unwrap();
    let named = apps::Changes {
        name: Some("flows"),
        ..apps::Changes::default()
    };
    let (app, _) = apps::create(state.admin(), owner.id, &named).await.unwrap();
    apps::merge_settings(state.admin(), &app, &settings, &now)
        .await
        .unwrap();
    let app = state
        .apps
        .live(&state.pool, &app.id.to_string(), now.now)
        .await
        .unwrap();
    World {
        state,
        app,
        _servers: (pg, redis),
    }
}

impl World {
    async fn register(&self, email: &str) -> Tokens {
        let r = Registration {
            email,
            password: Some(PASSWORD),
            ..Registration::default()
        };
        let ctx = ctx(unix_now());
        password::register(self.state.signin(), &self.app, &r, &ctx)
            .await
            .unwrap()
            .1
    }

    async fn user(&self, id: uuid::Uuid) -> User {
        let client = self.state.pool.get().await.unwrap();
        users::find(&client, self.app.id, id)
            .await
            .unwrap()
            .unwrap()
    }

    async fn login(&self, login: &str, pass: &str, now: i64) -> Result<SignIn, SignInError> {
        let attempt = Attempt {
            login,
            password: pass,
            device_id: None,
            captcha_token: None,
        };
        password::login(self.state.signin(), &self.app, &attempt, &ctx(now)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_sign_in_decides_between_tokens_a_step_up_and_a_refusal() {
    let w = world(json!({})).await;
    let now = unix_now();
    let tokens = w.register("ann@example.com").await;

    // Right password, no factor, policy `optional`: tokens for the same user.
    match w.login("ANN@example.com ", PASSWORD, now).await.unwrap() {
        SignIn::Tokens(t) => assert_eq!(t.user_id, tokens.user_id),
        SignIn::Mfa(_) => panic!("no factor is enrolled"),
    }
    // A wrong password, an unknown account, an oversized password: the same refusal.
    for (login, pass) in [
        ("ann@example.com", "wrong password entirely"),
        ("nobody@example.com", PASSWORD),
        ("ann@example.com", &"x".repeat(10_000)),
    ] {
        let refused = w.login(login, pass, now).await.unwrap_err();
        assert!(
            matches!(refused, SignInError::InvalidCredentials),
            "{login}: {refused:?}"
        );
    }

    // A disabled user is refused even with the right password.
    let user = w.user(tokens.user_id).await;
    let off = Changes {
        active: Some(false),
        ..Changes::default()
    };
    admin::users::update(
        w.state.admin(),
        &w.app,
        &user,
        &off,
        false,
        &["active"],
        &ctx(now),
    )
    .await
    .unwrap();
    let refused = w.login("ann@example.com", PASSWORD, now).await.unwrap_err();
    assert!(matches!(refused, SignInError::UserDisabled), "{refused:?}");
    // And their refresh token no longer rotates (disabling revoked the session).
    let refused = session::refresh(
        w.state.signin(),
        &w.app,
        &tokens.refresh_token,
        None,
        &ctx(now),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, SignInError::InvalidRefreshToken),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_policy_steps_up_even_without_an_enrolled_factor() {
    let w = world(json!({ "mfa": { "policy": "required" } })).await;
    w.register("bob@example.com").await;
    match w
        .login("bob@example.com", PASSWORD, unix_now())
        .await
        .unwrap()
    {
        SignIn::Mfa(c) => {
            assert!(c.mfa_required);
            assert_eq!(c.methods, [Method::Email], "a code mailed to the account");
        }
        SignIn::Tokens(_) => panic!("the application requires a second factor"),
    }
    // A guest has no factor and no address: it is never stepped up.
    let guest = password::guest(w.state.signin(), &w.app, None, None, &ctx(unix_now())).await;
    assert!(guest.is_ok(), "{guest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_once_forgives_a_retry_in_the_grace_window_and_kills_the_session_on_reuse()
{
    let w = &world(json!({ "refresh_token_reuse_grace_secs": 10 })).await;
    let first = w.register("cy@example.com").await;
    let t0 = unix_now();
    let refresh = |token: String, at: i64| {
        let (deps, app) = (w.state.signin(), w.app.clone());
        async move { session::refresh(deps, &app, &token, None, &ctx(at)).await }
    };

    let second = refresh(first.refresh_token.clone(), t0).await.unwrap();
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    // The same token again within the grace window: the same successor (a client retrying
    // after a lost answer), not a second one.
    let retry = refresh(first.refresh_token.clone(), t0 + 5).await.unwrap();
    assert_eq!(retry.refresh_token, second.refresh_token);
    // Past the window, reuse means theft: refused, and the whole session ends.
    let reused = refresh(first.refresh_token.clone(), t0 + 60)
        .await
        .unwrap_err();
    assert!(
        matches!(reused, SignInError::RefreshTokenReused),
        "{reused:?}"
    );
    let after = refresh(second.refresh_token.clone(), t0 + 61)
        .await
        .unwrap_err();
    assert!(
        matches!(after, SignInError::InvalidRefreshToken),
        "{after:?}"
    );
    // Garbage is refused before any lookup.
    for junk in [String::new(), "x".repeat(5_000)] {
        let refused = refresh(junk, t0).await.unwrap_err();
        assert!(matches!(refused, SignInError::InvalidRefreshToken));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_step_up_takes_a_fresh_code_once_and_a_recovery_code_once() {
    let w = &world(json!({})).await;
    let tokens = w.register("dee@example.com").await;
    let t0 = unix_now();
    let user = w.user(tokens.user_id).await;
    // Enrol TOTP (the session is fresh, so no proof is needed), confirmed with a code an
    // independent implementation (oathtool) computes.
    let mfa = w.state.mfa();
    let (secret, _uri) = enrol::totp_setup(
        mfa,
        &w.app,
        &user,
        tokens.session_id,
        &Proof::default(),
        &ctx(t0),
    )
    .await
    .unwrap();
    let codes = enrol::totp_confirm(mfa, &w.app, &user, &oathtool(&secret, t0), &ctx(t0))
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);

    let challenge = |at| async move {
        match w.login("dee@example.com", PASSWORD, at).await.unwrap() {
            SignIn::Mfa(c) => c,
            SignIn::Tokens(_) => panic!("a factor is enrolled"),
        }
    };
    let c = challenge(t0).await;
    assert_eq!(c.methods, [Method::Totp, Method::RecoveryCode]);
    let finish = |token: String, method, code: String, at| {
        let (deps, app) = (w.state.signin(), w.app.clone());
        async move {
            stepup::finish(
                deps,
                &app,
                &token,
                method,
                stepup::Answer::Code(&code),
                &ctx(at),
            )
            .await
        }
    };
    // The code that confirmed the factor is spent; a wrong one is wrong.
    for code in [oathtool(&secret, t0), "000000".to_owned()] {
        let refused = finish(c.mfa_token.clone(), Method::Totp, code, t0)
            .await
            .unwrap_err();
        assert!(matches!(refused, SignInError::InvalidCode), "{refused:?}");
    }
    // The next step's code opens a session, once.
    let next = oathtool(&secret, t0 + 30);
    let signed_in = finish(c.mfa_token.clone(), Method::Totp, next.clone(), t0 + 30)
        .await
        .unwrap();
    assert_eq!(signed_in.user_id, user.id);
    let again = finish(c.mfa_token.clone(), Method::Totp, next, t0 + 30).await;
    assert!(
        matches!(again, Err(SignInError::InvalidMfaToken)),
        "{again:?}"
    );
    // A recovery code works once, on a new sign-in.
    let c = challenge(t0 + 31).await;
    finish(c.mfa_token, Method::RecoveryCode, codes[0].clone(), t0 + 31)
        .await
        .unwrap();
    let c = challenge(t0 + 32).await;
    let reused = finish(c.mfa_token, Method::RecoveryCode, codes[0].clone(), t0 + 32).await;
    assert!(
        matches!(reused, Err(SignInError::InvalidCode)),
        "{reused:?}"
    );
}
