//! End users of an application (API.md §3): registration, login, guests, profile, password
//! change, sessions and administration.

use std::time::Instant;

use base64::Engine as _;
use serde_json::json;

use crate::support::{PASSWORD, Stack, claims_of, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_login() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let register = format!("/v1/apps/{app}/register");
    let r = s
        .post(&register, None, json!({"email": "Ann@Example.com", "password": PASSWORD, "username": "ann", "phone": "+15551234567", "device_id": "laptop"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let body = r.json();
    let user = &body["user"];
    let tokens = &body["tokens"];
    assert_eq!(user["email"], "Ann@Example.com");
    assert_eq!(
        (user["active"].as_bool(), user["email_verified"].as_bool()),
        (Some(true), Some(false))
    );
    for field in [
        "access_token",
        "refresh_token",
        "expires_at",
        "session_id",
        "user_id",
    ] {
        assert!(tokens[field].is_string(), "{field}");
    }
    assert_eq!(
        (tokens["token_type"].as_str(), tokens["expires_in"].as_i64()),
        (Some("Bearer"), Some(900))
    );
    assert!(tokens["refresh_token"].as_str().unwrap().len() >= 43);
    let claims = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], app.as_str());
    assert_eq!(claims["client_id"], app.as_str());
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["sid"], tokens["session_id"]);
    assert_eq!(claims["iss"], s.issuer.as_str());
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    for (body, status, code) in [
        (
            json!({"email": " ANN@example.com", "password": PASSWORD}),
            409,
            "user_exists",
        ),
        (
            json!({"email": "bob@example.com", "password": "12345678"}),
            422,
            "weak_password",
        ),
        (
            json!({"email": "bob@example.com", "password": "short"}),
            422,
            "weak_password",
        ),
        (
            json!({"email": "bob@example.com", "password": "x".repeat(129)}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": "not an email", "password": PASSWORD}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": 7, "password": PASSWORD}),
            400,
            "invalid_request",
        ),
        (json!({"password": PASSWORD}), 400, "invalid_request"),
    ] {
        let r = s.post(&register, None, body.clone()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{body}: {}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }

    // No password: a random one is set, so no password logs in.
    let r = s
        .post(&register, None, json!({"email": "nopw@example.com"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let login = format!("/v1/apps/{app}/login");
    for body in [
        json!({"email": "ann@EXAMPLE.com", "password": PASSWORD}),
        json!({"username": "ANN", "password": PASSWORD}),
    ] {
        let r = s.post(&login, None, body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["user_id"], user["id"]);
    }
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ann@example.com:{PASSWORD}"))
    );
    let r = request(s.addr, "POST", &login, &[("authorization", &basic)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = s
        .post(
            &login,
            None,
            json!({"email": "nopw@example.com", "password": ""}),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_answer_alike() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let login = format!("/v1/apps/{app}/login");
    let mut times = Vec::new();
    let mut answers = Vec::new();
    for email in [
        "ann@example.com",
        "nobody@example.com",
        "ann@example.com",
        "nobody@example.com",
    ] {
        let started = Instant::now();
        let r = s
            .post(
                &login,
                None,
                json!({"email": email, "password": "wrong password here"}),
            )
            .await;
        times.push(started.elapsed());
        answers.push((r.status, r.json()));
    }
    assert_eq!(answers[0].0, 401);
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    // Both paths run one Argon2id verification; the times are reported, not asserted.
    eprintln!("login failure times (known, unknown, known, unknown): {times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_registrations_of_one_email_make_one_user() {
    let s = Stack::start().await;
    let (_, app, key) = s.owner_with_app().await;
    let register = format!("/v1/apps/{app}/register");
    let attempts = (0..8).map(|i| {
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com "
        };
        s.post(
            &register,
            None,
            json!({"email": email, "password": PASSWORD}),
        )
    });
    let replies = futures_util::future::join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let conflicts = replies.iter().filter(|r| r.code() == "user_exists").count();
    assert_eq!((created, conflicts), (1, 7), "{replies:?}");
    let page = s
        .get(
            &format!("/v1/apps/{app}/users?email=race@example.com"),
            Some(&key),
        )
        .await;
    assert_eq!(page.json()["users"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_profiles_and_password_change() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/guest"),
            None,
            json!({"name": "Visitor"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let guest = r.json();
    let claims = claims_of(guest["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["guest"].as_bool(), claims["amr"].clone()),
        (Some(true), json!(["guest"]))
    );
    let me = s
        .get(
            &format!("/v1/apps/{app}/me"),
            guest["access_token"].as_str(),
        )
        .await;
    assert_eq!((me.status, me.json()["guest"].as_bool()), (200, Some(true)));

    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let me = format!("/v1/apps/{app}/me");
    let r = s.get(&me, Some(access)).await;
    assert_eq!(r.status, 200);
    for field in [
        "id",
        "email",
        "username",
        "phone",
        "email_verified",
        "roles",
        "created_at",
        "expires_at",
        "active",
    ] {
        assert!(r.json().get(field).is_some(), "{field} in {}", r.body);
    }
    // A new phone (or email) needs the current password; a username does not.
    let r = s
        .call(
            "PATCH",
            &me,
            Some(access),
            Some(json!({"username": "annie", "phone": "+441234567890"})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_credentials"));
    let r = s
        .call(
            "PATCH",
            &me,
            Some(access),
            Some(json!({"username": "annie", "phone": "+441234567890", "current_password": "wrong password!"})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_credentials"));
    let r = s
        .call(
            "PATCH",
            &me,
            Some(access),
            Some(json!({"username": "ann2"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["phone"].as_str()),
        (200, None),
        "nothing half-applied"
    );
    let r = s
        .call(
            "PATCH",
            &me,
            Some(access),
            Some(json!({"username": "annie", "phone": "+441234567890", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["username"].as_str()),
        (200, Some("annie"))
    );
    s.register(&app, "bob@example.com").await;
    let r = s
        .call(
            "PATCH",
            &me,
            Some(access),
            Some(json!({"email": "BOB@example.com", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(r.code(), "user_exists");

    // Another session to be killed by the password change.
    let second = s.login(&app, "ann@example.com").await;
    let change = format!("/v1/apps/{app}/password/change");
    let r = s
        .post(
            &change,
            Some(access),
            json!({"current_password": "wrong one!", "new_password": "another good passphrase"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
    let r = s
        .post(
            &change,
            Some(access),
            json!({"current_password": PASSWORD, "new_password": "password"}),
        )
        .await;
    assert_eq!(r.code(), "weak_password");
    let r = s
        .post(&change, Some(access), json!({"current_password": PASSWORD, "new_password": "another good passphrase", "kill_sessions": true}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"changed_password": true, "killed_sessions": 1})
    );
    assert_eq!(
        s.get(&me, second["access_token"].as_str()).await.code(),
        "token_revoked"
    );
    assert_eq!(
        s.get(&me, Some(access)).await.status,
        200,
        "the current session stays"
    );
    let old = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.status, 401);

    let r = s.call("DELETE", &me, Some(access), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(s.get(&me, Some(access)).await.code(), "token_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ids_may_be_integers_or_strings_and_come_back_as_text() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let at = |route: &str| format!("/v1/apps/{app}/{route}");
    let r = s
        .post(
            &at("register"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "device_id": 7}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let first = r.json()["tokens"].clone();
    // The same device, as a string this time: one device, so the session is replaced.
    let login = json!({"email": "ann@example.com", "password": PASSWORD, "device_id": "7"});
    let r = s.post(&at("login"), None, login).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.json();
    let r = s
        .get(&at("sessions"), second["access_token"].as_str())
        .await;
    let sessions = r.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["device_id"], "7");
    assert_eq!(
        s.get(&at("me"), first["access_token"].as_str())
            .await
            .code(),
        "token_revoked"
    );
    let r = s.post(&at("guest"), None, json!({"device_id": 12})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Anything else is refused, and says what it takes.
    for bad in [json!(1.5), json!(true), json!([7]), json!({"id": 7})] {
        let r = s
            .post(&at("guest"), None, json!({ "device_id": bad }))
            .await;
        assert_eq!(r.code(), "invalid_request", "{bad}");
        assert!(r.body.contains("an integer or a string"), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_revoked_and_bound_to_devices() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let login = |device: &'static str| {
        let path = format!("/v1/apps/{app}/login");
        let s = &s;
        async move {
            let r = s
                .post(
                    &path,
                    None,
                    json!({"email": "ann@example.com", "password": PASSWORD, "device_id": device}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }
    };
    let phone1 = login("phone").await;
    let laptop = login("laptop").await;
    let phone2 = login("phone").await;
    let sessions = format!("/v1/apps/{app}/sessions");
    let me = format!("/v1/apps/{app}/me");
    // The second phone login replaced the first phone session.
    assert_eq!(
        s.get(&me, phone1["access_token"].as_str()).await.code(),
        "token_revoked"
    );
    let refresh = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": phone1["refresh_token"]}),
        )
        .await;
    assert_eq!(refresh.code(), "invalid_refresh_token");

    let r = s.get(&sessions, laptop["access_token"].as_str()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json()["sessions"].as_array().unwrap().clone();
    // The registration session (no device) plus laptop and phone.
    assert_eq!(list.len(), 3, "{list:?}");
    let current: Vec<_> = list.iter().filter(|x| x["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], laptop["session_id"]);
    assert_eq!(current[0]["device_id"], "laptop");
    assert_eq!(current[0]["ip"], "127.0.0.1");

    let phone_sid = phone2["session_id"].as_str().unwrap();
    let r = s
        .call(
            "DELETE",
            &format!("{sessions}/{phone_sid}"),
            laptop["access_token"].as_str(),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.get(&me, phone2["access_token"].as_str()).await.code(),
        "token_revoked"
    );
    let r = s
        .call(
            "DELETE",
            &format!("{sessions}/{phone_sid}"),
            laptop["access_token"].as_str(),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    let r = s
        .call("DELETE", &sessions, laptop["access_token"].as_str(), None)
        .await;
    assert_eq!(r.json()["revoked_sessions"], 2);
    assert_eq!(
        s.get(&me, laptop["access_token"].as_str()).await.code(),
        "token_revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administration_by_api_key() {
    let s = Stack::start().await;
    let (owner, app, key) = s.owner_with_app().await;
    let users = format!("/v1/apps/{app}/users");
    for i in 0..5 {
        let r = s
            .post(
                &users,
                Some(&key),
                json!({"email": format!("u{i}@example.com"), "roles": ["reader"]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let page1 = s.get(&format!("{users}?limit=2"), Some(&key)).await.json();
    assert_eq!(page1["users"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = s
        .get(&format!("{users}?limit=2&cursor={cursor}"), Some(&owner))
        .await
        .json();
    let page3 = s
        .get(
            &format!(
                "{users}?limit=2&cursor={}",
                page2["next_cursor"].as_str().unwrap()
            ),
            Some(&key),
        )
        .await
        .json();
    assert_eq!(page3["users"].as_array().unwrap().len(), 1);
    assert!(page3["next_cursor"].is_null());
    let emails: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["email"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        emails,
        [
            "u0@example.com",
            "u1@example.com",
            "u2@example.com",
            "u3@example.com",
            "u4@example.com"
        ]
    );
    assert_eq!(
        s.get(&format!("{users}?limit=0"), Some(&key)).await.status,
        400
    );
    assert_eq!(
        s.get(&format!("{users}?cursor=zzz"), Some(&key))
            .await
            .status,
        400
    );
    assert_eq!(s.get(&users, None).await.code(), "missing_token");

    // Roles reach tokens; disabling refuses login and revokes; expiry likewise.
    let tokens = s.register(&app, "ann@example.com").await;
    let id = tokens["user_id"].as_str().unwrap();
    let user = format!("{users}/{id}");
    let r = s
        .call(
            "PATCH",
            &user,
            Some(&key),
            Some(json!({"roles": ["admin", "ops"]})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["roles"].clone()),
        (200, json!(["admin", "ops"]))
    );
    let refreshed = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(
        claims_of(refreshed.json()["access_token"].as_str().unwrap())["roles"],
        json!(["admin", "ops"])
    );
    assert_eq!(refreshed.json()["roles"], json!(["admin", "ops"]));

    let r = s
        .call("PATCH", &user, Some(&key), Some(json!({"active": false})))
        .await;
    assert_eq!(r.json()["active"], false);
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "user_disabled"));
    // A wrong password on a disabled account is still just wrong: nothing is revealed.
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": "wrong password"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
    let me = s
        .get(
            &format!("/v1/apps/{app}/me"),
            refreshed.json()["access_token"].as_str(),
        )
        .await;
    assert_eq!(me.code(), "token_revoked");

    let r = s
        .call(
            "PATCH",
            &user,
            Some(&key),
            Some(json!({"active": true, "expires_at": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.code(), "user_disabled");
    s.call(
        "PATCH",
        &user,
        Some(&key),
        Some(json!({"expires_at": null})),
    )
    .await;
    // Re-enabled: a login right after the cutoff (often the same second) works.
    let again = s.login(&app, "ann@example.com").await;
    let me = s
        .get(
            &format!("/v1/apps/{app}/me"),
            again["access_token"].as_str(),
        )
        .await;
    assert_eq!(me.status, 200, "{}", me.body);

    assert_eq!(
        s.get(&user, Some(&key)).await.json()["email"],
        "ann@example.com"
    );
    assert_eq!(s.call("DELETE", &user, Some(&key), None).await.status, 204);
    assert_eq!(s.get(&user, Some(&key)).await.status, 404);
    assert_eq!(
        s.get(&format!("{users}/not-a-uuid"), Some(&key))
            .await
            .status,
        404
    );
}
