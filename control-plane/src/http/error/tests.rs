//! The mapping of every area's error to the contract's codes, pinned.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn every_code_maps_to_its_status_and_a_problem_body() {
    for code in ErrorCode::ALL {
        let response = ApiError::new(code, "why").into_response();
        assert_eq!(response.status().as_u16(), code.status(), "{code}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    let limited = ApiError::rate_limited(7).into_response();
    assert_eq!(limited.headers()[header::RETRY_AFTER], "7");
}

/// Every variant of every area's error, and the code it answers with. The `From`
/// impls above match exhaustively, so a new variant does not compile until it is
/// mapped; this pins what each maps to. A wrapped error answers as itself.
#[test]
#[allow(clippy::too_many_lines)]
fn every_error_variant_maps_to_its_code() {
    use ErrorCode::*;
    let db = || DbError::Failed("relation \"secret\" does not exist".into());
    let down = || DbError::Unavailable("connection refused".into());
    let weak = || PasswordError::Weak("too short".into());
    let limited = || LimitError::Limited { retry_after: 9 };
    let cases: Vec<(ApiError, ErrorCode)> = vec![
        (db().into(), Internal),
        (down().into(), Unavailable),
        (limited().into(), RateLimited),
        (LimitError::Unavailable.into(), Unavailable),
        (HashError::Busy.into(), Unavailable),
        (HashError::Failed("argon2".into()).into(), Internal),
        (CaptchaError::Required.into(), CaptchaRequired),
        (CaptchaError::Refused.into(), CaptchaInvalid),
        (
            CaptchaError::Unavailable("timeout".into()).into(),
            Unavailable,
        ),
        (AppError::NotFound.into(), AppNotFound),
        (AppError::Exists.into(), AppExists),
        (AppError::Invalid("name".into()).into(), InvalidRequest),
        (
            AppError::Settings(SettingsError::Invalid("x".into())).into(),
            InvalidRequest,
        ),
        (AppError::Db(down()).into(), Unavailable),
        (RoleError::Exists.into(), RoleExists),
        (RoleError::NotFound.into(), NotFound),
        (RoleError::Invalid("x".into()).into(), InvalidRequest),
        (RoleError::Db(db()).into(), Internal),
        (weak().into(), WeakPassword),
        (PasswordError::Malformed("NUL").into(), InvalidRequest),
        (TokenError::Refused(TokenExpired).into(), TokenExpired),
        (
            TokenError::Keys(KeyError::Broken("x".into())).into(),
            Internal,
        ),
        (TokenError::Db(down()).into(), Unavailable),
        (FactorError::NoDestination("phone").into(), InvalidRequest),
        (FactorError::Sealed("x").into(), Internal),
        (FactorError::Db(db()).into(), Internal),
        (MfaError::InvalidCode.into(), InvalidCode),
        (MfaError::WrongPassword.into(), InvalidCredentials),
        (MfaError::ProofRequired.into(), InvalidCredentials),
        (MfaError::TurnedOff.into(), Forbidden),
        (MfaError::AlreadyEnabled("totp").into(), MfaAlreadyEnabled),
        (MfaError::NoSuchFactor.into(), NotFound),
        (MfaError::SessionEnded.into(), TokenRevoked),
        (MfaError::Invalid("x").into(), InvalidRequest),
        (MfaError::Factor(FactorError::Sealed("x")).into(), Internal),
        (MfaError::Limit(limited()).into(), RateLimited),
        (MfaError::Hash(HashError::Busy).into(), Unavailable),
        (MfaError::Db(db()).into(), Internal),
        (SignInError::InvalidCredentials.into(), InvalidCredentials),
        (SignInError::UserDisabled.into(), UserDisabled),
        (SignInError::InvalidRefreshToken.into(), InvalidRefreshToken),
        (SignInError::RefreshTokenReused.into(), RefreshTokenReused),
        (SignInError::InvalidMfaToken.into(), InvalidMfaToken),
        (SignInError::InvalidCode.into(), InvalidCode),
        (SignInError::NoSecondFactor.into(), Forbidden),
        (SignInError::Invalid("x".into()).into(), InvalidRequest),
        (SignInError::Password(weak()).into(), WeakPassword),
        (SignInError::User(UserError::Exists).into(), UserExists),
        (SignInError::Mfa(MfaError::InvalidCode).into(), InvalidCode),
        (
            SignInError::Factor(FactorError::NoDestination("x")).into(),
            InvalidRequest,
        ),
        (
            SignInError::Mail(MailError::NoAddress).into(),
            InvalidRequest,
        ),
        (SignInError::Keys(KeyError::TooSoon(5)).into(), RateLimited),
        (SignInError::Limit(limited()).into(), RateLimited),
        (
            SignInError::Captcha(CaptchaError::Required).into(),
            CaptchaRequired,
        ),
        (SignInError::Hash(HashError::Busy).into(), Unavailable),
        (SignInError::Db(down()).into(), Unavailable),
        (AccountError::WrongPassword.into(), InvalidCredentials),
        (AccountError::Password(weak()).into(), WeakPassword),
        (AccountError::User(UserError::NotFound).into(), NotFound),
        (
            AccountError::Mfa(MfaError::ProofRequired).into(),
            InvalidCredentials,
        ),
        (AccountError::Limit(limited()).into(), RateLimited),
        (AccountError::Hash(HashError::Busy).into(), Unavailable),
        (AccountError::Db(db()).into(), Internal),
        (OAuthError::InvalidState.into(), InvalidState),
        (OAuthError::NoProvider.into(), NotFound),
        (OAuthError::IdentityLinked("x").into(), IdentityLinked),
        (OAuthError::EmailTaken.into(), UserExists),
        (OAuthError::IdToken("nonce").into(), InvalidToken),
        (OAuthError::CodeRefused.into(), InvalidToken),
        (OAuthError::CodeUsed("x").into(), TokenExpiredOrUsed),
        (OAuthError::NotLinked.into(), NotFound),
        (OAuthError::LastWayIn.into(), Forbidden),
        (PasskeyError::Off.into(), InvalidRequest),
        (PasskeyError::Ceremony.into(), InvalidState),
        (PasskeyError::NotFound.into(), NotFound),
        (PasskeyError::LastWayIn.into(), Forbidden),
        (PasskeyError::Invalid("x".into()).into(), InvalidRequest),
        (
            PasskeyError::Mfa(MfaError::ProofRequired).into(),
            InvalidCredentials,
        ),
        (PasskeyError::Db(down()).into(), Unavailable),
        (
            SignInError::Passkey(PasskeyError::Ceremony).into(),
            InvalidState,
        ),
        (OAuthError::Invalid("x").into(), InvalidRequest),
        (OAuthError::Unavailable("x".into()).into(), Unavailable),
        (
            OAuthError::SignIn(SignInError::UserDisabled).into(),
            UserDisabled,
        ),
        (OAuthError::Mfa(MfaError::TurnedOff).into(), Forbidden),
        (
            OAuthError::Settings(SettingsError::Sealed("x")).into(),
            Internal,
        ),
        (OAuthError::User(UserError::Exists).into(), UserExists),
        (OAuthError::Db(down()).into(), Unavailable),
        (OwnerError::Exists.into(), OwnerExists),
        (OwnerError::Gone.into(), TokenRevoked),
        (OwnerError::Invalid("x".into()).into(), InvalidRequest),
        (OwnerError::Db(db()).into(), Internal),
        (AdminError::InvalidCredentials.into(), InvalidCredentials),
        (AdminError::Owner(OwnerError::Exists).into(), OwnerExists),
        (AdminError::App(AppError::Exists).into(), AppExists),
        (AdminError::User(UserError::Exists).into(), UserExists),
        (AdminError::Role(RoleError::Exists).into(), RoleExists),
        (
            AdminError::Webhook(WebhookError::NotFound("webhook")).into(),
            NotFound,
        ),
        (AdminError::Password(weak()).into(), WeakPassword),
        (
            AdminError::Keys(KeyError::Sealed("k".into())).into(),
            Internal,
        ),
        (AdminError::Limit(limited()).into(), RateLimited),
        (AdminError::Hash(HashError::Busy).into(), Unavailable),
        (AdminError::Db(down()).into(), Unavailable),
        (RecoveryError::ExpiredOrUsed.into(), TokenExpiredOrUsed),
        (RecoveryError::RedirectNotAllowed.into(), InvalidRequest),
        (
            RecoveryError::User(UserError::Invalid("x".into())).into(),
            InvalidRequest,
        ),
        (RecoveryError::Password(weak()).into(), WeakPassword),
        (RecoveryError::Mail(MailError::Db(db())).into(), Internal),
        (
            RecoveryError::SignIn(SignInError::UserDisabled).into(),
            UserDisabled,
        ),
        (RecoveryError::Limit(limited()).into(), RateLimited),
        (
            RecoveryError::Hash(HashError::Failed("x".into())).into(),
            Internal,
        ),
        (RecoveryError::Db(down()).into(), Unavailable),
        (KeyError::Sealed("k".into()).into(), Internal),
        (KeyError::TooSoon(30).into(), RateLimited),
        (KeyError::Broken("x".into()).into(), Internal),
        (KeyError::Db(db()).into(), Internal),
        (SettingsError::Invalid("x".into()).into(), InvalidRequest),
        (SettingsError::Sealed("x").into(), Internal),
        (UserError::Exists.into(), UserExists),
        (UserError::NotFound.into(), NotFound),
        (UserError::Invalid("x".into()).into(), InvalidRequest),
        (UserError::Db(db()).into(), Internal),
        (MailError::NoAddress.into(), InvalidRequest),
        (MailError::Db(down()).into(), Unavailable),
        (WebhookError::Invalid("x".into()).into(), InvalidRequest),
        (WebhookError::NotFound("webhook").into(), NotFound),
        (WebhookError::Db(db()).into(), Internal),
        (
            DpopError::Invalid("proof is too old").into(),
            InvalidDpopProof,
        ),
        (DpopError::UseNonce.into(), UseDpopNonce),
        (DpopError::NotBound.into(), InvalidToken),
        (DpopError::Db(down()).into(), Unavailable),
        (SignInError::WrongDpopKey.into(), InvalidDpopProof),
        (
            ProviderError::OAuth(OAuthCode::InvalidDpopProof, "x".into()).into(),
            InvalidDpopProof,
        ),
        (
            ProviderError::OAuth(OAuthCode::UseDpopNonce, "x".into()).into(),
            UseDpopNonce,
        ),
    ];
    for (i, (e, code)) in cases.into_iter().enumerate() {
        assert_eq!(e.code, code, "case {i}: {e}");
        // A cause inside the service never reaches the client.
        assert!(!e.detail.contains("secret"), "case {i}: {}", e.detail);
        assert!(!e.detail.contains("connection refused"), "case {i}");
    }
    let limited: ApiError = KeyError::TooSoon(30).into();
    assert_eq!(limited.retry_after, Some(30));
    let busy: ApiError = HashError::Busy.into();
    assert_eq!(busy.retry_after, Some(1));
}

#[test]
fn refused_proofs_carry_the_dpop_challenge() {
    let refused = ApiError::new(ErrorCode::InvalidDpopProof, "x").into_response();
    assert_eq!(
        refused.headers()[header::WWW_AUTHENTICATE],
        "DPoP error=\"invalid_dpop_proof\", algs=\"EdDSA Ed25519 ES256\""
    );
    let nonce = ApiError::new(ErrorCode::UseDpopNonce, "x").into_response();
    assert_eq!(
        nonce.headers()[header::WWW_AUTHENTICATE],
        "DPoP error=\"use_dpop_nonce\""
    );
}

#[test]
fn internal_detail_stays_in_the_log() {
    let e = ApiError::internal(&"connection string postgres://secret@db");
    assert_eq!(e.detail, "internal error");
}
