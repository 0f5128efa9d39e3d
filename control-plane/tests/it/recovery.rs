//! Password reset, email verification and magic links (API.md §3) against a real SMTP
//! server (aiosmtpd), with the real verifier for the revocations a reset makes.

use std::time::Duration;

use serde_json::json;

use crate::support::{PASSWORD, Stack, claims_of, link_in, path_of, with_smtp};

const NEW_PASSWORD: &str = "an entirely new passphrase";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mail_arrives_its_link_works_once_and_every_session_ends() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let verifier = s.verifier().await;
    assert_eq!(verifier.status(access).await, 200);

    let r = s
        .post(
            &format!("/v1/apps/{app}/password/forgot"),
            None,
            json!({"email": "ANN@example.com"}),
        )
        .await;
    assert_eq!((r.status, r.json()), (202, json!({"accepted": true})));
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    assert_eq!(mail.to, ["ann@example.com"]);
    assert_eq!(mail.from, "auth@example.com");
    assert!(mail.raw.contains("shop"), "sender name is the app's name");
    let (link, token) = link_in(&mail.text);
    assert!(
        link.starts_with(&format!("{}/v1/apps/{app}/password/reset?token=", s.issuer)),
        "{link}"
    );
    assert!(mail.html.as_deref().unwrap().contains(&token));
    assert!(token.len() >= 43, "256 bits");

    // The page shows a form and uses nothing up; the check route neither.
    for _ in 0..2 {
        let page = s.get(&path_of(&link), None).await;
        assert_eq!(page.status, 200);
        assert!(
            page.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
        assert!(page.body.contains("method=\"post\"") && page.body.contains(&token));
        let check = s
            .get(&format!("/v1/apps/{app}/password/reset/{token}"), None)
            .await;
        assert_eq!(
            (check.status, check.json()["valid"].as_bool()),
            (200, Some(true))
        );
    }

    let reset = format!("/v1/apps/{app}/password/reset");
    let r = s
        .post(
            &reset,
            None,
            json!({"token": token, "new_password": "12345678"}),
        )
        .await;
    assert_eq!(
        r.code(),
        "weak_password",
        "checked before the token is used"
    );
    let r = s
        .post(
            &reset,
            None,
            json!({"token": token, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"password_reset": true})),
        "{}",
        r.body
    );
    let r = s
        .post(
            &reset,
            None,
            json!({"token": token, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (410, "token_expired_or_used")
    );
    let check = s
        .get(&format!("/v1/apps/{app}/password/reset/{token}"), None)
        .await;
    assert_eq!(check.code(), "token_expired_or_used");

    // Every session is gone: the refresh token, and the access token at the real verifier.
    let r = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(r.status, 401);
    crate::support::eventually(Duration::from_secs(10), || async {
        verifier.status(access).await == 401
    })
    .await;
    let login = format!("/v1/apps/{app}/login");
    let old = s
        .post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.code(), "invalid_credentials");
    let new = s
        .post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(new.status, 200, "{}", new.body);
    assert_eq!(
        verifier
            .status(new.json()["access_token"].as_str().unwrap())
            .await,
        200
    );

    // Delivered: the stored message is erased; nothing secret was logged in the audit.
    let left = s
        .sql_value("SELECT count(*) FROM outbox WHERE payload IS NOT NULL OR state <> 'sent'")
        .await;
    assert_eq!(left, json!(0));
    let audit = s
        .sql_value("SELECT string_agg(event || ' ' || details::text, ',') FROM audit_events")
        .await;
    let audit = audit.as_str().unwrap();
    assert!(audit.contains("password.reset_requested") && audit.contains("password.reset"));
    assert!(
        !audit.contains(&token) && !audit.contains(NEW_PASSWORD),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_and_unknown_addresses_are_answered_alike() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let forgot = format!("/v1/apps/{app}/password/forgot");
    let magic = format!("/v1/apps/{app}/magic-link");
    for path in [&forgot, &magic] {
        let known = s
            .post(path, None, json!({"email": "ann@example.com"}))
            .await;
        let unknown = s
            .post(path, None, json!({"email": "nobody@example.com"}))
            .await;
        assert_eq!((known.status, &known.body), (unknown.status, &unknown.body));
        assert_eq!(known.status, 202);
    }
    let mails = smtp.wait_for(2, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 2, "no mail for the unknown address");
    assert!(mails.iter().all(|m| m.to == ["ann@example.com"]));

    // Malformed input is refused the same way whoever it names, and changes nothing.
    let r = s
        .post(&forgot, None, json!({"email": "not an address"}))
        .await;
    assert_eq!(r.code(), "invalid_request");
    let r = s.post(&forgot, None, json!({})).await;
    assert_eq!(r.code(), "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_requested_while_smtp_is_down_is_delivered_when_it_returns() {
    let (s, mut smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    smtp.stop();
    let r = s
        .post(
            &format!("/v1/apps/{app}/password/forgot"),
            None,
            json!({"email": "ann@example.com"}),
        )
        .await;
    assert_eq!(r.status, 202);
    // At least two attempts fail while the server is away.
    crate::support::eventually(Duration::from_secs(15), || async {
        s.sql_value("SELECT max(attempts) FROM outbox")
            .await
            .as_i64()
            >= Some(2)
    })
    .await;
    let pending = s.sql_value("SELECT state FROM outbox").await;
    assert_eq!(pending, json!("pending"));
    let error = s.sql_value("SELECT last_error FROM outbox").await;
    assert!(error.as_str().unwrap().contains("SMTP"), "{error}");
    smtp.restart().unwrap();
    let mail = smtp.wait_for(1, Duration::from_secs(30)).await.remove(0);
    let (_, token) = link_in(&mail.text);
    let r = s
        .post(
            &format!("/v1/apps/{app}/password/reset"),
            None,
            json!({"token": token, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.sql_value("SELECT state FROM outbox").await, json!("sent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_messages_are_logged_never_dropped() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/password/forgot"),
            None,
            json!({"email": "ann@example.com"}),
        )
        .await;
    assert_eq!(r.status, 202);
    crate::support::eventually(Duration::from_secs(10), || async {
        s.sql_value("SELECT state FROM outbox").await == json!("logged")
    })
    .await;
    assert_eq!(
        s.sql_value("SELECT payload IS NULL FROM outbox").await,
        json!(true),
        "the token does not stay in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_verification_at_registration_and_on_request() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "options": {"verify_email": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["user"]["email_verified"], false);
    let access = r.json()["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    let (link, token) = link_in(&mail.text);
    assert!(
        link.contains(&format!("/v1/apps/{app}/email/verify?token=")),
        "{link}"
    );

    // The page's form posts the token; a GET (a mail scanner) confirms nothing.
    let page = s.get(&path_of(&link), None).await;
    assert_eq!(page.status, 200);
    let me = format!("/v1/apps/{app}/me");
    assert_eq!(
        s.get(&me, Some(&access)).await.json()["email_verified"],
        false
    );
    let r = s
        .form(
            &format!("/v1/apps/{app}/email/verify"),
            &format!("token={token}"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(
        s.get(&me, Some(&access)).await.json()["email_verified"],
        true
    );
    let again = s
        .post(
            &format!("/v1/apps/{app}/email/verify"),
            None,
            json!({"token": token}),
        )
        .await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (410, "token_expired_or_used")
    );

    // On request; a link mailed before an address change confirms nothing.
    let send = format!("/v1/apps/{app}/email/verify/send");
    assert_eq!(s.post(&send, None, json!({})).await.code(), "missing_token");
    assert_eq!(s.post(&send, Some(&access), json!({})).await.status, 202);
    let mail = smtp.wait_for(2, Duration::from_secs(15)).await.remove(1);
    let (_, token) = link_in(&mail.text);
    let r = s
        .call(
            "PATCH",
            &me,
            Some(&access),
            Some(json!({"email": "ann.new@example.com", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["email_verified"].as_bool()),
        (200, Some(false))
    );
    let r = s
        .post(
            &format!("/v1/apps/{app}/email/verify"),
            None,
            json!({"token": token}),
        )
        .await;
    assert_eq!(r.code(), "token_expired_or_used");
    assert_eq!(
        s.get(&me, Some(&access)).await.json()["email_verified"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magic_links_sign_in_once_and_only_by_post() {
    let (s, smtp) = with_smtp(&[]).await;
    let (owner, app, _) = s.owner_with_app().await;
    let back = "https://shop.example/signed-in";
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({"allowed_redirect_uris": [back]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let registered = s.register(&app, "ann@example.com").await;
    let magic = format!("/v1/apps/{app}/magic-link");
    let r = s
        .post(
            &magic,
            None,
            json!({"email": "ann@example.com", "redirect_uri": "https://evil.example/"}),
        )
        .await;
    assert_eq!(
        r.code(),
        "invalid_request",
        "redirect_uri outside the allowlist"
    );

    // JSON: tokens with amr magic; the token works once.
    assert_eq!(
        s.post(&magic, None, json!({"email": "ann@example.com"}))
            .await
            .status,
        202
    );
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    let (link, token) = link_in(&mail.text);
    assert!(link.contains("/magic-link/verify?token="), "{link}");
    let page = s.get(&path_of(&link), None).await;
    assert!(page.status == 200 && page.body.contains("method=\"post\""));
    let verify = format!("/v1/apps/{app}/magic-link/verify");
    // A device id may be an integer, as in the seed API.
    let r = s
        .post(&verify, None, json!({"token": token, "device_id": 9}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&access)["amr"], json!(["magic"]));
    let listed = s
        .get(&format!("/v1/apps/{app}/sessions"), Some(&access))
        .await;
    let current = listed.json()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["current"] == true)
        .cloned()
        .unwrap();
    assert_eq!(current["device_id"], "9");
    let r = s.post(&verify, None, json!({"token": token})).await;
    assert_eq!(r.code(), "token_expired_or_used");
    // The first proof of the address claims the account: what whoever registered it set up
    // before (password, sessions) is gone.
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
    let r = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": registered["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 401);

    // The page's form: the browser goes back to redirect_uri with the tokens in the fragment.
    let r = s
        .post(
            &magic,
            None,
            json!({"email": "ann@example.com", "redirect_uri": back}),
        )
        .await;
    assert_eq!(r.status, 202);
    let mail = smtp.wait_for(2, Duration::from_secs(15)).await.remove(1);
    let (_, token) = link_in(&mail.text);
    let r = s.form(&verify, &format!("token={token}")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{back}#access_token=")),
        "{location}"
    );
    assert!(location.contains("&refresh_token="));
    let r = s.form(&verify, &format!("token={token}")).await;
    assert_eq!(r.status, 410);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_one_purpose_is_refused_by_every_other_flow() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "options": {"verify_email": true}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let tokens_of = |n| {
        let smtp = &smtp;
        async move {
            let mails = smtp.wait_for(n, Duration::from_secs(15)).await;
            link_in(&mails[n - 1].text).1
        }
    };
    let verification = tokens_of(1).await;
    s.post(
        &format!("/v1/apps/{app}/password/forgot"),
        None,
        json!({"email": "ann@example.com"}),
    )
    .await;
    let reset = tokens_of(2).await;
    s.post(
        &format!("/v1/apps/{app}/magic-link"),
        None,
        json!({"email": "ann@example.com"}),
    )
    .await;
    let magic = tokens_of(3).await;
    let login = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    let refresh = login.json()["refresh_token"].as_str().unwrap().to_owned();

    let use_as = |purpose: &'static str, token: String| {
        let s = &s;
        let app = app.clone();
        async move {
            match purpose {
                "reset" => {
                    s.post(
                        &format!("/v1/apps/{app}/password/reset"),
                        None,
                        json!({"token": token, "new_password": NEW_PASSWORD}),
                    )
                    .await
                }
                "verify" => {
                    s.post(
                        &format!("/v1/apps/{app}/email/verify"),
                        None,
                        json!({"token": token}),
                    )
                    .await
                }
                _ => {
                    s.post(
                        &format!("/v1/apps/{app}/magic-link/verify"),
                        None,
                        json!({"token": token}),
                    )
                    .await
                }
            }
        }
    };
    for (token, wrong) in [
        (&verification, ["reset", "magic"]),
        (&reset, ["verify", "magic"]),
        (&magic, ["reset", "verify"]),
        (&refresh, ["reset", "magic"]),
    ] {
        for purpose in wrong {
            let r = use_as(purpose, token.clone()).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (410, "token_expired_or_used"),
                "{purpose}"
            );
        }
    }
    // Each still works for its own purpose afterwards: the refusals used nothing up.
    assert_eq!(use_as("verify", verification).await.status, 200);
    assert_eq!(use_as("magic", magic).await.status, 200);
    assert_eq!(use_as("reset", reset).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_without_a_password_mails_a_link_to_choose_one() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, _) = s.owner_with_app().await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "ann@example.com", "options": {"send_reset_email": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    assert!(mail.subject.contains("Set your"), "{}", mail.subject);
    let (_, token) = link_in(&mail.text);
    // The form post of the page, as a browser sends it.
    let r = s
        .form(
            &format!("/v1/apps/{app}/password/reset"),
            &format!("token={token}&new_password=an+entirely+new+passphrase"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Password changed"));
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_address_are_limited() {
    let (s, smtp) = with_smtp(&[]).await;
    let (owner, app, _) = s.owner_with_app().await;
    s.call(
        "PUT",
        &format!("/v1/apps/{app}/settings"),
        Some(&owner),
        Some(json!({"rate_limits": {"messages_per_account_per_hour": 2}})),
    )
    .await;
    s.register(&app, "ann@example.com").await;
    let forgot = format!("/v1/apps/{app}/password/forgot");
    for address in ["ann@example.com", "nobody@example.com"] {
        for _ in 0..2 {
            assert_eq!(
                s.post(&forgot, None, json!({"email": address}))
                    .await
                    .status,
                202
            );
        }
        let r = s.post(&forgot, None, json!({"email": address})).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (429, "rate_limited"),
            "{address}"
        );
    }
    smtp.wait_for(2, Duration::from_secs(15)).await;
}
