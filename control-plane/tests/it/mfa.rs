//! Second factors through HTTP (API.md §3 `/mfa/*`, `/login/mfa`): TOTP with codes from
//! Debian's `oathtool`, recovery codes, SMS codes to a local provider endpoint, email codes
//! to a real SMTP server, and the application's MFA policy.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    HttpSink, PASSWORD, Stack, claims_of, code_in, link_in, oathtool, unix_now, with_smtp,
};

/// Enrols TOTP for the user of `access`; returns the base32 secret, the recovery codes and
/// the time step the confirming code used.
pub(crate) async fn enrol_totp(s: &Stack, app: &str, access: &str) -> (String, Vec<String>, i64) {
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/setup"),
            Some(access),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let uri = r.json()["otpauth_uri"].as_str().unwrap().to_owned();
    assert!(
        uri.starts_with("otpauth://totp/shop:") && uri.contains(&format!("secret={secret}")),
        "{uri}"
    );
    let now = unix_now();
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/verify"),
            Some(access),
            json!({"code": oathtool(&secret, now)}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["enabled"], true);
    let codes: Vec<String> = serde_json::from_value(r.json()["recovery_codes"].clone()).unwrap();
    assert_eq!(codes.len(), 10);
    (secret, codes, now / 30)
}

async fn password_login(s: &Stack, app: &str, email: &str) -> Value {
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": email, "password": PASSWORD, "device_id": "phone"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn second_step(
    s: &Stack,
    app: &str,
    mfa_token: &str,
    method: &str,
    code: &str,
) -> crate::support::Reply {
    s.post(
        &format!("/v1/apps/{app}/login/mfa"),
        None,
        json!({"mfa_token": mfa_token, "method": method, "code": code}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_step_up_and_replay() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let r = s.get(&format!("/v1/apps/{app}/mfa"), Some(access)).await;
    assert_eq!(r.json()["factors"], json!([]));

    // A wrong first code confirms nothing.
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/setup"),
            Some(access),
            json!({}),
        )
        .await;
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/verify"),
            Some(access),
            json!({"code": "000000"}),
        )
        .await;
    if oathtool(&secret, unix_now()) != "000000" {
        assert_eq!(r.code(), "invalid_code");
    }
    let (secret, _, enrolled_step) = enrol_totp(&s, &app, access).await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/setup"),
            Some(access),
            json!({}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (409, "mfa_already_enabled"));
    let r = s.get(&format!("/v1/apps/{app}/mfa"), Some(access)).await;
    assert_eq!(r.json()["factors"][0]["kind"], "totp");
    assert_eq!(r.json()["recovery_codes_left"], 10);

    // The password alone no longer signs in.
    let challenge = password_login(&s, &app, "ann@example.com").await;
    assert_eq!(challenge["mfa_required"], true);
    assert!(challenge.get("access_token").is_none());
    assert_eq!(challenge["methods"], json!(["totp", "recovery_code"]));
    let mfa_token = challenge["mfa_token"].as_str().unwrap();

    // The code that confirmed enrolment is spent: its step (and older ones) are replays.
    let replay = oathtool(&secret, enrolled_step * 30);
    let r = second_step(&s, &app, mfa_token, "totp", &replay).await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_code"));
    // Outside the ±1 window (three steps ahead of now, so a step boundary passing while
    // the test runs still leaves it two ahead).
    let far = oathtool(&secret, (unix_now() / 30 + 3) * 30);
    assert_eq!(
        second_step(&s, &app, mfa_token, "totp", &far).await.code(),
        "invalid_code"
    );
    // One step ahead is inside it, once.
    let next = oathtool(&secret, (enrolled_step + 1) * 30);
    let r = second_step(&s, &app, mfa_token, "totp", &next).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let claims = claims_of(r.json()["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]));
    let r = second_step(&s, &app, mfa_token, "totp", &next).await;
    assert_eq!(r.code(), "invalid_mfa_token", "an mfa_token is single use");
    let again = password_login(&s, &app, "ann@example.com").await;
    let r = second_step(
        &s,
        &app,
        again["mfa_token"].as_str().unwrap(),
        "totp",
        &next,
    )
    .await;
    assert_eq!(r.code(), "invalid_code", "a code is accepted once");
    // The secret never appears in the audit log.
    let audit = s
        .sql_value("SELECT string_agg(details::text, ',') FROM audit_events")
        .await;
    assert!(!audit.as_str().unwrap_or("").contains(&secret));
    let sealed = s
        .sql_value("SELECT encode(secret_enc, 'escape') FROM mfa_factors")
        .await;
    assert!(
        !sealed.as_str().unwrap().contains(&secret),
        "sealed at rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_burn_the_mfa_token_and_then_the_account_limit() {
    let s = Stack::start().await;
    let (owner, app, _) = s.owner_with_app().await;
    s.call(
        "PUT",
        &format!("/v1/apps/{app}/settings"),
        Some(&owner),
        Some(json!({"rate_limits": {"mfa_failures_per_hour": 8}})),
    )
    .await;
    let tokens = s.register(&app, "ann@example.com").await;
    let (secret, _, _) = enrol_totp(&s, &app, tokens["access_token"].as_str().unwrap()).await;
    let wrong = |n: u32| {
        let right = oathtool(&secret, unix_now());
        let guess = format!(
            "{:06}",
            (right.parse::<u32>().unwrap() + 500_000 + n) % 1_000_000
        );
        guess
    };
    let first = password_login(&s, &app, "ann@example.com").await;
    let token = first["mfa_token"].as_str().unwrap();
    for n in 0..5 {
        let r = second_step(&s, &app, token, "totp", &wrong(n)).await;
        assert_eq!(r.code(), "invalid_code");
    }
    let r = second_step(&s, &app, token, "totp", &oathtool(&secret, unix_now() + 30)).await;
    assert_eq!(
        r.code(),
        "invalid_mfa_token",
        "five wrong codes end the step-up"
    );
    // A fresh mfa_token does not reset the account's count.
    let second = password_login(&s, &app, "ann@example.com").await;
    let token = second["mfa_token"].as_str().unwrap();
    for n in 0..3 {
        assert_eq!(
            second_step(&s, &app, token, "totp", &wrong(n)).await.code(),
            "invalid_code"
        );
    }
    let r = second_step(&s, &app, token, "totp", &oathtool(&secret, unix_now() + 30)).await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    let r = second_step(&s, &app, "not-a-token", "totp", "123456").await;
    assert_eq!(r.code(), "invalid_mfa_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_are_single_use_and_regenerable() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let (_, codes, _) = enrol_totp(&s, &app, access).await;
    let stored = s
        .sql_value("SELECT string_agg(encode(hash, 'hex'), ',') FROM recovery_codes")
        .await;
    assert!(
        codes.iter().all(|c| !stored.as_str().unwrap().contains(c)),
        "stored hashed"
    );

    let challenge = password_login(&s, &app, "ann@example.com").await;
    let r = second_step(
        &s,
        &app,
        challenge["mfa_token"].as_str().unwrap(),
        "recovery_code",
        &codes[0].to_uppercase(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        claims_of(r.json()["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "mfa"])
    );
    let fresh = r.json()["access_token"].as_str().unwrap().to_owned();
    let challenge = password_login(&s, &app, "ann@example.com").await;
    let token = challenge["mfa_token"].as_str().unwrap();
    assert_eq!(
        second_step(&s, &app, token, "recovery_code", &codes[0])
            .await
            .code(),
        "invalid_code"
    );
    assert_eq!(
        s.get(&format!("/v1/apps/{app}/mfa"), Some(&fresh))
            .await
            .json()["recovery_codes_left"],
        9
    );

    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/recovery-codes"),
            Some(&fresh),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed: Vec<String> = serde_json::from_value(r.json()["recovery_codes"].clone()).unwrap();
    assert_eq!(renewed.len(), 10);
    assert_eq!(
        second_step(&s, &app, token, "recovery_code", &codes[1])
            .await
            .code(),
        "invalid_code",
        "old codes are void"
    );
    assert_eq!(
        second_step(&s, &app, token, "recovery_code", &renewed[0])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_totp_needs_a_code_older_than_the_session_or_the_password() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let first = tokens["access_token"].as_str().unwrap();
    let (secret, codes, step) = enrol_totp(&s, &app, first).await;
    let totp = format!("/v1/apps/{app}/mfa/totp");
    let delete = |access: String, body: Option<Value>| {
        let s = &s;
        let totp = totp.clone();
        async move { s.call("DELETE", &totp, Some(&access), body).await }
    };
    let r = delete(first.to_owned(), None).await;
    assert_eq!(r.code(), "invalid_credentials");
    let r = delete(
        first.to_owned(),
        Some(json!({"current_password": "wrong guess here"})),
    )
    .await;
    assert_eq!(r.code(), "invalid_credentials");
    // Whoever holds this session's token could have made the factor and its codes: they
    // prove nothing here.
    let next = oathtool(&secret, (step + 1) * 30);
    let r = delete(first.to_owned(), Some(json!({"code": next}))).await;
    assert_eq!(r.code(), "invalid_code");
    let r = delete(first.to_owned(), Some(json!({"code": codes[0]}))).await;
    assert_eq!(r.code(), "invalid_code");

    // A later sign-in (password and TOTP) can use them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let challenge = password_login(&s, &app, "ann@example.com").await;
    let r = second_step(
        &s,
        &app,
        challenge["mfa_token"].as_str().unwrap(),
        "totp",
        &next,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let later = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = delete(later.clone(), Some(json!({"code": next}))).await;
    assert_eq!(r.code(), "invalid_code", "a replayed code proves nothing");
    // A factor that does not exist: 404, and the recovery code is not spent on it.
    let r = s
        .call(
            "DELETE",
            &format!("/v1/apps/{app}/mfa/sms"),
            Some(&later),
            Some(json!({"code": codes[0]})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = delete(later.clone(), Some(json!({"code": codes[0]}))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = delete(later.clone(), Some(json!({"current_password": PASSWORD}))).await;
    assert_eq!(r.status, 404);
    let signed_in = password_login(&s, &app, "ann@example.com").await;
    assert!(
        signed_in["access_token"].is_string(),
        "no second step without a factor"
    );
    assert_eq!(
        s.sql_value("SELECT count(*) FROM recovery_codes").await,
        json!(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_access_token_cannot_take_the_account_over() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let stolen = tokens["access_token"].as_str().unwrap();
    let sid = tokens["session_id"].as_str().unwrap();
    // The session is old: no "recent sign-in" window left.
    s.sql(&format!(
        "UPDATE sessions SET created_at = now() - interval '1 hour' WHERE id = '{sid}'"
    ))
    .await;
    let setup = format!("/v1/apps/{app}/mfa/totp/setup");
    let r = s.post(&setup, Some(stolen), json!({})).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "invalid_credentials"),
        "no thief's authenticator"
    );
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/recovery-codes"),
            Some(stolen),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 401);
    // The owner, with the password, still can.
    let r = s
        .post(&setup, Some(stolen), json!({"current_password": PASSWORD}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Codes made with this session's token do not unlock an email change.
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/verify"),
            Some(stolen),
            json!({"code": oathtool(&secret, unix_now())}),
        )
        .await;
    let codes: Vec<String> = serde_json::from_value(r.json()["recovery_codes"].clone()).unwrap();
    let r = s
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/me"),
            Some(stolen),
            Some(json!({"email": "thief@example.com", "code": codes[0]})),
        )
        .await;
    assert_eq!(r.code(), "invalid_code");
    let me = s.get(&format!("/v1/apps/{app}/me"), Some(stolen)).await;
    assert_eq!(me.json()["email"], "ann@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_with_a_factor_is_refused_at_the_password() {
    let s = Stack::start().await;
    let (_, app, key) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    enrol_totp(&s, &app, tokens["access_token"].as_str().unwrap()).await;
    let user = tokens["user_id"].as_str().unwrap();
    let r = s
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/users/{user}"),
            Some(&key),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "user_disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_does_not_bypass_mfa() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    enrol_totp(&s, &app, tokens["access_token"].as_str().unwrap()).await;
    s.post(
        &format!("/v1/apps/{app}/password/forgot"),
        None,
        json!({"email": "ann@example.com"}),
    )
    .await;
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    let (_, token) = link_in(&mail.text);
    let r = s
        .post(
            &format!("/v1/apps/{app}/password/reset"),
            None,
            json!({"token": token, "new_password": "an entirely new passphrase"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json().get("access_token").is_none(),
        "a reset signs no one in"
    );
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": "an entirely new passphrase"}),
        )
        .await;
    assert_eq!(r.json()["mfa_required"], true, "{}", r.body);
    // A magic link is a first factor too.
    s.post(
        &format!("/v1/apps/{app}/magic-link"),
        None,
        json!({"email": "ann@example.com"}),
    )
    .await;
    let mail = smtp.wait_for(2, Duration::from_secs(15)).await.remove(1);
    let (_, token) = link_in(&mail.text);
    let r = s
        .post(
            &format!("/v1/apps/{app}/magic-link/verify"),
            None,
            json!({"token": token}),
        )
        .await;
    assert_eq!(r.json()["mfa_required"], true, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_codes_reach_the_provider_and_are_bound_to_their_request() {
    let sink = HttpSink::start().await.unwrap();
    let url = sink.url("/sms");
    let s = Stack::start_with(&[
        ("PORTCULLIS_SMS_WEBHOOK_URL", &url),
        ("PORTCULLIS_SMS_WEBHOOK_TOKEN", "provider-secret"),
    ])
    .await;
    let (_, app, _) = s.owner_with_app().await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "phone": "+15551234567"}),
        )
        .await;
    let access = r.json()["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Enrolment: a code to this session's phone, then verified.
    let send = format!("/v1/apps/{app}/mfa/otp/send");
    let r = s
        .post(&send, Some(&access), json!({"channel": "sms"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let sms = sink.wait_for(1, Duration::from_secs(15)).await.remove(0);
    assert_eq!(sms.method, "POST");
    assert_eq!(sms.header("authorization"), Some("Bearer provider-secret"));
    assert_eq!(sms.json()["to"], "+15551234567");
    let code = code_in(sms.json()["body"].as_str().unwrap());
    let verify = format!("/v1/apps/{app}/mfa/otp/verify");
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    assert_eq!(
        s.post(&verify, Some(&access), json!({"code": wrong}))
            .await
            .code(),
        "invalid_code"
    );
    let r = s.post(&verify, Some(&access), json!({"code": code})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["recovery_codes"].as_array().unwrap().len(), 10);

    // Sign-in: the code goes with one mfa_token and opens no other.
    let first = password_login(&s, &app, "ann@example.com").await;
    assert_eq!(first["methods"], json!(["sms", "recovery_code"]));
    let one = first["mfa_token"].as_str().unwrap().to_owned();
    let other = password_login(&s, &app, "ann@example.com").await["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .post(&send, None, json!({"channel": "sms", "mfa_token": one}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = s
        .post(&send, None, json!({"channel": "email", "mfa_token": one}))
        .await;
    assert_eq!(
        r.code(),
        "invalid_request",
        "a channel the step-up does not offer"
    );
    let sms = sink.wait_for(2, Duration::from_secs(15)).await.remove(1);
    let code = code_in(sms.json()["body"].as_str().unwrap());
    assert_eq!(
        second_step(&s, &app, &other, "sms", &code).await.code(),
        "invalid_code"
    );
    let r = second_step(&s, &app, &one, "sms", &code).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        claims_of(r.json()["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "otp", "mfa"])
    );

    // An expired code is refused.
    s.post(&send, None, json!({"channel": "sms", "mfa_token": other}))
        .await;
    let sms = sink.wait_for(3, Duration::from_secs(15)).await.remove(2);
    let code = code_in(sms.json()["body"].as_str().unwrap());
    s.sql("UPDATE otp_codes SET expires_at = now() - interval '1 second'")
        .await;
    assert_eq!(
        second_step(&s, &app, &other, "sms", &code).await.code(),
        "invalid_code"
    );
    // The code never reached the database in clear.
    let stored = s
        .sql_value("SELECT string_agg(encode(hash, 'hex'), ',') FROM otp_codes")
        .await;
    assert!(!stored.as_str().unwrap().contains(&code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_policy_mails_a_code_to_users_without_a_factor() {
    let (s, smtp) = with_smtp(&[]).await;
    let (owner, app, _) = s.owner_with_app().await;
    let settings = format!("/v1/apps/{app}/settings");
    let r = s
        .call(
            "PUT",
            &settings,
            Some(&owner),
            Some(json!({"mfa": {"policy": "required"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Registration itself signs in (the account is new); later sign-ins need a second step.
    s.register(&app, "ann@example.com").await;
    let challenge = password_login(&s, &app, "ann@example.com").await;
    assert_eq!(challenge["methods"], json!(["email"]));
    let token = challenge["mfa_token"].as_str().unwrap();
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/otp/send"),
            None,
            json!({"channel": "email", "mfa_token": token}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    let code = code_in(&mail.text);
    let r = second_step(&s, &app, token, "email", &code).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Off: no step-up, and nothing can be enrolled.
    let r = s
        .call(
            "PUT",
            &settings,
            Some(&owner),
            Some(json!({"mfa": {"policy": "off"}})),
        )
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await; // the application cache
    let signed_in = password_login(&s, &app, "ann@example.com").await;
    assert!(signed_in["access_token"].is_string(), "{signed_in}");
    let access = signed_in["access_token"].as_str().unwrap();
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/totp/setup"),
            Some(access),
            json!({}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_provider_outage_delays_codes_and_loses_none() {
    let mut sink = HttpSink::start().await.unwrap();
    let url = sink.url("/sms");
    let s = Stack::start_with(&[("PORTCULLIS_SMS_WEBHOOK_URL", &url)]).await;
    let (_, app, _) = s.owner_with_app().await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "phone": "+15551234567"}),
        )
        .await;
    let access = r.json()["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // First the provider fails (503, retried), then it is gone (connection refused).
    sink.set_status(503);
    let send = format!("/v1/apps/{app}/mfa/otp/send");
    assert_eq!(
        s.post(&send, Some(&access), json!({"channel": "sms"}))
            .await
            .status,
        202
    );
    sink.wait_for(1, Duration::from_secs(15)).await;
    sink.stop();
    crate::support::eventually(Duration::from_secs(15), || async {
        s.sql_value("SELECT attempts FROM outbox").await.as_i64() >= Some(2)
    })
    .await;
    assert_eq!(
        s.sql_value("SELECT state FROM outbox").await,
        json!("pending")
    );
    sink.set_status(200);
    sink.restart().unwrap();
    crate::support::eventually(Duration::from_secs(30), || async {
        s.sql_value("SELECT state FROM outbox").await == json!("sent")
    })
    .await;
    let last = sink.requests().pop().unwrap();
    let code = code_in(last.json()["body"].as_str().unwrap());
    let r = s
        .post(
            &format!("/v1/apps/{app}/mfa/otp/verify"),
            Some(&access),
            json!({"code": code}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
