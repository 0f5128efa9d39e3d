//! The control plane's one HTTP error type and the one place every other error becomes
//! one: each area's error (domain, flows, infrastructure) is mapped to the contract's
//! `code` by a `From` impl below, and [`IntoResponse`] turns an [`ApiError`] into an RFC
//! 9457 problem document. Internal causes are logged here, never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use serde::Serialize;

use crate::domain::apps::AppError;
use crate::domain::dpop::{self, DpopError};
use crate::domain::factors::FactorError;
use crate::domain::keys::KeyError;
use crate::domain::mailings::MailError;
use crate::domain::owners::OwnerError;
use crate::domain::passwords::PasswordError;
use crate::domain::roles::RoleError;
use crate::domain::settings::SettingsError;
use crate::domain::tokens::TokenError;
use crate::domain::users::UserError;
use crate::domain::webhooks::WebhookError;
use crate::flows::account::AccountError;
use crate::flows::admin::AdminError;
use crate::flows::mfa::MfaError;
use crate::flows::oauth::OAuthError;
use crate::flows::passkeys::PasskeyError;
use crate::flows::provider::{OAuthCode, ProviderError};
use crate::flows::recovery::RecoveryError;
use crate::flows::signin::SignInError;
use crate::infra::captcha::CaptchaError;
use crate::infra::crypto::HashError;
use crate::infra::limits::LimitError;
use crate::infra::store::DbError;

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// Safe for the client: never request data that could be a secret.
    pub detail: String,
    /// Seconds, for `429` (and `503` when known).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn app_not_found() -> Self {
        Self::new(
            ErrorCode::AppNotFound,
            "no such application, or it has expired",
        )
    }

    pub fn invalid_credentials() -> Self {
        Self::new(ErrorCode::InvalidCredentials, "invalid credentials")
    }

    pub fn unauthenticated(code: ErrorCode) -> Self {
        Self::new(code, code.title())
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(ErrorCode::RateLimited, "too many requests; retry later")
        }
    }

    /// A dependency is down: log the cause, tell the client only that it may retry.
    pub fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(%cause, "{what} unavailable");
        Self {
            retry_after: Some(1),
            ..Self::new(ErrorCode::Unavailable, format!("{what} is unavailable"))
        }
    }

    /// A bug or an unexpected state: logged in full, answered as a bare 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(cause) => Self::unavailable("database", &cause),
            DbError::Failed(cause) => Self::internal(&cause),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::Limited { retry_after } => Self::rate_limited(retry_after),
            LimitError::Unavailable => Self::unavailable("rate limiter", &"Redis unreachable"),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::unavailable("password hashing", &"queue is full"),
            HashError::Failed(cause) => Self::internal(&cause),
        }
    }
}

impl From<CaptchaError> for ApiError {
    fn from(e: CaptchaError) -> Self {
        match e {
            CaptchaError::Required => Self::new(ErrorCode::CaptchaRequired, e.to_string()),
            CaptchaError::Refused => Self::new(ErrorCode::CaptchaInvalid, e.to_string()),
            CaptchaError::Unavailable(cause) => Self::unavailable("the CAPTCHA provider", &cause),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound => Self::app_not_found(),
            AppError::Exists => Self::new(ErrorCode::AppExists, e.to_string()),
            AppError::Invalid(detail) => Self::bad_request(detail),
            AppError::Settings(e) => e.into(),
            AppError::Db(e) => e.into(),
        }
    }
}

impl From<RoleError> for ApiError {
    fn from(e: RoleError) -> Self {
        match e {
            RoleError::Exists => Self::new(ErrorCode::RoleExists, e.to_string()),
            RoleError::NotFound => Self::not_found("role"),
            RoleError::Invalid(detail) => Self::bad_request(detail),
            RoleError::Db(e) => e.into(),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Weak(detail) => Self::new(ErrorCode::WeakPassword, detail),
            PasswordError::Malformed(detail) => Self::bad_request(detail),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Refused(code) => Self::unauthenticated(code),
            TokenError::Keys(e) => e.into(),
            TokenError::Db(e) => e.into(),
        }
    }
}

impl From<DpopError> for ApiError {
    fn from(e: DpopError) -> Self {
        match e {
            DpopError::Invalid(why) => Self::new(ErrorCode::InvalidDpopProof, why),
            DpopError::UseNonce => Self::new(ErrorCode::UseDpopNonce, e.to_string()),
            DpopError::NotBound => Self::new(ErrorCode::InvalidToken, e.to_string()),
            DpopError::Db(e) => e.into(),
        }
    }
}

impl From<FactorError> for ApiError {
    fn from(e: FactorError) -> Self {
        match e {
            FactorError::NoDestination(_) => Self::bad_request(e.to_string()),
            FactorError::Sealed(_) => Self::internal(&e),
            FactorError::Db(e) => e.into(),
        }
    }
}

impl From<MfaError> for ApiError {
    fn from(e: MfaError) -> Self {
        use ErrorCode::*;
        match e {
            MfaError::InvalidCode => Self::new(InvalidCode, e.to_string()),
            MfaError::WrongPassword => Self::invalid_credentials(),
            MfaError::ProofRequired => Self::new(InvalidCredentials, e.to_string()),
            MfaError::TurnedOff => Self::new(Forbidden, e.to_string()),
            MfaError::AlreadyEnabled(detail) => Self::new(MfaAlreadyEnabled, detail),
            MfaError::NoSuchFactor => Self::not_found("factor"),
            MfaError::SessionEnded => Self::unauthenticated(TokenRevoked),
            MfaError::Invalid(detail) => Self::bad_request(detail),
            MfaError::Factor(e) => e.into(),
            MfaError::Limit(e) => e.into(),
            MfaError::Hash(e) => e.into(),
            MfaError::Db(e) => e.into(),
        }
    }
}

impl From<PasskeyError> for ApiError {
    fn from(e: PasskeyError) -> Self {
        use ErrorCode::*;
        match e {
            PasskeyError::Off | PasskeyError::Invalid(_) => Self::bad_request(e.to_string()),
            PasskeyError::Ceremony => Self::new(InvalidState, e.to_string()),
            PasskeyError::NotFound => Self::not_found("passkey"),
            PasskeyError::LastWayIn => Self::new(Forbidden, e.to_string()),
            PasskeyError::Mfa(e) => e.into(),
            PasskeyError::Db(e) => e.into(),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        use ErrorCode::*;
        match e {
            // The OAuth endpoints answer these in OAuth's form; a page shows them as this.
            ProviderError::OAuth(code, detail) => match code {
                OAuthCode::InvalidClient | OAuthCode::InvalidToken => {
                    Self::new(InvalidCredentials, detail)
                }
                OAuthCode::AccessDenied | OAuthCode::UnauthorizedClient => {
                    Self::new(Forbidden, detail)
                }
                OAuthCode::InvalidDpopProof => Self::new(InvalidDpopProof, detail),
                OAuthCode::UseDpopNonce => Self::new(UseDpopNonce, detail),
                _ => Self::bad_request(detail),
            },
            ProviderError::SignIn(e) => e.into(),
            ProviderError::Keys(e) => e.into(),
            ProviderError::Db(e) => e.into(),
        }
    }
}

impl From<SignInError> for ApiError {
    fn from(e: SignInError) -> Self {
        use ErrorCode::*;
        match e {
            SignInError::InvalidCredentials => Self::invalid_credentials(),
            SignInError::UserDisabled => Self::new(UserDisabled, e.to_string()),
            SignInError::InvalidRefreshToken => Self::new(InvalidRefreshToken, e.to_string()),
            SignInError::RefreshTokenReused => Self::new(RefreshTokenReused, e.to_string()),
            SignInError::WrongDpopKey => Self::new(InvalidDpopProof, e.to_string()),
            SignInError::InvalidMfaToken => Self::new(InvalidMfaToken, e.to_string()),
            SignInError::InvalidCode => Self::new(InvalidCode, e.to_string()),
            SignInError::NoSecondFactor => Self::new(Forbidden, e.to_string()),
            SignInError::Invalid(detail) => Self::bad_request(detail),
            SignInError::Password(e) => e.into(),
            SignInError::User(e) => e.into(),
            SignInError::Mfa(e) => e.into(),
            SignInError::Factor(e) => e.into(),
            SignInError::Passkey(e) => e.into(),
            SignInError::Mail(e) => e.into(),
            SignInError::Keys(e) => e.into(),
            SignInError::Limit(e) => e.into(),
            SignInError::Captcha(e) => e.into(),
            SignInError::Hash(e) => e.into(),
            SignInError::Db(e) => e.into(),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::WrongPassword => Self::invalid_credentials(),
            AccountError::Password(e) => e.into(),
            AccountError::User(e) => e.into(),
            AccountError::Mfa(e) => e.into(),
            AccountError::Limit(e) => e.into(),
            AccountError::Hash(e) => e.into(),
            AccountError::Db(e) => e.into(),
        }
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        use ErrorCode::*;
        match e {
            OAuthError::InvalidState => Self::new(InvalidState, e.to_string()),
            OAuthError::NoProvider => Self::not_found("OAuth provider"),
            OAuthError::IdentityLinked(detail) => Self::new(IdentityLinked, detail),
            OAuthError::EmailTaken => Self::new(UserExists, e.to_string()),
            OAuthError::IdToken(_) | OAuthError::CodeRefused => {
                Self::new(InvalidToken, e.to_string())
            }
            OAuthError::CodeUsed(detail) => Self::new(TokenExpiredOrUsed, detail),
            OAuthError::NotLinked => Self::not_found("linked identity"),
            OAuthError::LastWayIn => Self::new(Forbidden, e.to_string()),
            OAuthError::Invalid(detail) => Self::bad_request(detail),
            OAuthError::Unavailable(cause) => Self::unavailable("the identity provider", &cause),
            OAuthError::SignIn(e) => e.into(),
            OAuthError::Mfa(e) => e.into(),
            OAuthError::Settings(e) => e.into(),
            OAuthError::User(e) => e.into(),
            OAuthError::Db(e) => e.into(),
        }
    }
}

impl From<OwnerError> for ApiError {
    fn from(e: OwnerError) -> Self {
        match e {
            OwnerError::Exists => Self::new(ErrorCode::OwnerExists, e.to_string()),
            OwnerError::Gone => Self::unauthenticated(ErrorCode::TokenRevoked),
            OwnerError::Invalid(detail) => Self::bad_request(detail),
            OwnerError::Db(e) => e.into(),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::InvalidCredentials => Self::invalid_credentials(),
            AdminError::Owner(e) => e.into(),
            AdminError::App(e) => e.into(),
            AdminError::User(e) => e.into(),
            AdminError::Role(e) => e.into(),
            AdminError::Webhook(e) => e.into(),
            AdminError::Password(e) => e.into(),
            AdminError::Keys(e) => e.into(),
            AdminError::Limit(e) => e.into(),
            AdminError::Hash(e) => e.into(),
            AdminError::Db(e) => e.into(),
        }
    }
}

impl From<RecoveryError> for ApiError {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::ExpiredOrUsed => Self::new(ErrorCode::TokenExpiredOrUsed, e.to_string()),
            RecoveryError::RedirectNotAllowed => Self::bad_request(e.to_string()),
            RecoveryError::User(e) => e.into(),
            RecoveryError::Password(e) => e.into(),
            RecoveryError::Mail(e) => e.into(),
            RecoveryError::SignIn(e) => e.into(),
            RecoveryError::Limit(e) => e.into(),
            RecoveryError::Hash(e) => e.into(),
            RecoveryError::Db(e) => e.into(),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::TooSoon(wait) => Self {
                detail: e.to_string(),
                ..Self::rate_limited(wait)
            },
            KeyError::Sealed(_) | KeyError::Broken(_) => Self::internal(&e),
            KeyError::Db(e) => e.into(),
        }
    }
}

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Invalid(detail) => Self::bad_request(detail),
            SettingsError::Sealed(_) => Self::internal(&e),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Exists => Self::new(ErrorCode::UserExists, e.to_string()),
            UserError::NotFound => Self::not_found("user"),
            UserError::Invalid(detail) => Self::bad_request(detail),
            UserError::Db(e) => e.into(),
        }
    }
}

impl From<MailError> for ApiError {
    fn from(e: MailError) -> Self {
        match e {
            MailError::NoAddress => Self::bad_request(e.to_string()),
            MailError::Db(e) => e.into(),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(detail) => Self::bad_request(detail),
            WebhookError::NotFound(what) => Self::not_found(what),
            WebhookError::Db(e) => e.into(),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self::unavailable("redis", &e)
    }
}

/// Codes about the presented access token: those answers carry a Bearer challenge
/// (RFC 6750 §3); a refused password or refresh token does not.
fn is_access_token_code(code: ErrorCode) -> bool {
    use ErrorCode::*;
    matches!(
        code,
        MissingToken
            | TokenExpired
            | InvalidSignature
            | UnknownKey
            | TokenRevoked
            | InvalidAudience
            | InvalidIssuer
            | NotYetValid
            | InvalidToken
    )
}

/// The `WWW-Authenticate` of an answer with `code`: Bearer's for a refused access token
/// (RFC 6750 §3), DPoP's (RFC 9449 §7.1) for a refused proof, with the algorithms taken,
/// or a nonce to use (§8, the nonce itself in `DPoP-Nonce`).
pub fn challenge(code: ErrorCode) -> Option<HeaderValue> {
    match code {
        ErrorCode::InvalidDpopProof => HeaderValue::from_str(&format!(
            "DPoP error=\"invalid_dpop_proof\", algs=\"{}\"",
            dpop::ALGS
        ))
        .ok(),
        ErrorCode::UseDpopNonce => Some(HeaderValue::from_static("DPoP error=\"use_dpop_nonce\"")),
        code if is_access_token_code(code) => {
            Some(HeaderValue::from_static("Bearer error=\"invalid_token\""))
        }
        _ => None,
    }
}

/// The problem document (RFC 9457) with the contract's `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

impl Problem {
    pub fn of(code: ErrorCode, detail: &str) -> Self {
        Self {
            // No per-code documentation page exists; `code` carries the meaning (RFC 9457
            // §4.2.1), as in the verifier's problems.
            kind: "about:blank".to_owned(),
            title: code.title().to_owned(),
            status: code.status(),
            detail: detail.to_owned(),
            code: code.as_str().to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&Problem::of(self.code, &self.detail)).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = challenge(self.code) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests;
