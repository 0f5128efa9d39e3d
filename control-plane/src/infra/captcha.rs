//! CAPTCHA checks (API.md §3 "CAPTCHA"): an application's provider (Turnstile, hCaptcha,
//! reCAPTCHA: one `siteverify` protocol) verifies the client's response token
//! server-side. Required on registration, and on login once an IP address or an account has
//! `login_after_failures` recent failures.
//!
//! A missing token is `400 captcha_required`; a token the provider refuses, or one already
//! presented here, `400 captcha_invalid`; the provider unreachable, slow or answering
//! nonsense fails closed with `503 unavailable` (`portcullis_captcha_checks_total`).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis_common::redis_conn::RedisConn;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use uuid::Uuid;

use crate::infra::egress::{Egress, EgressError};

/// How long the provider may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest response token accepted (providers' are ~2 KiB at most).
const MAX_TOKEN_LEN: usize = 4096;
/// How long a token is remembered as used (providers' tokens live at most 5 minutes).
const SEEN_FOR_SECS: u64 = 600;
/// What `GET /settings` shows instead of the secret; sent back in a `PUT`, it keeps it.
pub const SECRET_MASK: &str = "********";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Turnstile,
    Hcaptcha,
    Recaptcha,
}

impl Provider {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Turnstile => "turnstile",
            Self::Hcaptcha => "hcaptcha",
            Self::Recaptcha => "recaptcha",
        }
    }

    const fn verify_url(self) -> &'static str {
        match self {
            Self::Turnstile => "https://challenges.cloudflare.com/turnstile/v0/siteverify",
            Self::Hcaptcha => "https://api.hcaptcha.com/siteverify",
            Self::Recaptcha => "https://www.google.com/recaptcha/api/siteverify",
        }
    }
}

/// The `captcha` application setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaptchaSettings {
    pub provider: Provider,
    /// The provider's secret key (shown masked).
    pub secret: String,
    /// The `siteverify` endpoint; the provider's own by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_url: Option<String>,
    /// Login asks for a CAPTCHA once the client's IP address or the account has this many
    /// failed sign-ins in the last hour; 0 = always.
    #[serde(default = "default_after")]
    pub login_after_failures: u32,
}

const fn default_after() -> u32 {
    3
}

impl CaptchaSettings {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.secret.is_empty() || self.secret.len() > 1024 || self.secret == SECRET_MASK {
            return Err("captcha.secret is required");
        }
        let url_ok = |url: &String| {
            (url.starts_with("https://") || url.starts_with("http://"))
                && url.parse::<http::Uri>().is_ok()
        };
        if !self.verify_url.as_ref().is_none_or(url_ok) {
            return Err("captcha.verify_url must be an http(s) URL");
        }
        Ok(())
    }
}

/// What `siteverify` answers (the fields every provider shares).
#[derive(Debug, Deserialize)]
struct Verdict {
    success: bool,
}

/// The checker: an HTTP client for the providers and Redis to remember used tokens. The
/// client is the webhooks' guarded one: `verify_url` is the owner's to set, so it must not
/// reach loopback, private or metadata addresses either.
/// Why a CAPTCHA check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CaptchaError {
    #[error("a CAPTCHA response is required (captcha_token or x-captcha-token)")]
    Required,
    #[error("the CAPTCHA response was refused")]
    Refused,
    /// The provider could not say (fails closed): the cause is for the log.
    #[error("the CAPTCHA provider is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct Captcha {
    egress: Egress,
    redis: RedisConn,
}

impl std::fmt::Debug for Captcha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Captcha(..)")
    }
}

fn count(provider: Provider, outcome: &'static str) {
    metrics::counter!("portcullis_captcha_checks_total", "provider" => provider.as_str(), "outcome" => outcome)
        .increment(1);
}

impl Captcha {
    pub fn new(egress: Egress, redis: RedisConn) -> Self {
        Self { egress, redis }
    }

    /// Checks `token` with the application's provider (`settings`; none: nothing to check).
    /// A token passes once per application.
    pub async fn check(
        &self,
        app: Uuid,
        settings: Option<&CaptchaSettings>,
        token: Option<&str>,
        ip: IpAddr,
    ) -> Result<(), CaptchaError> {
        let Some(settings) = settings else {
            return Ok(());
        };
        let provider = settings.provider;
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            count(provider, "missing");
            return Err(CaptchaError::Required);
        };
        if token.len() > MAX_TOKEN_LEN {
            count(provider, "refused");
            return Err(CaptchaError::Refused);
        }
        // A token passes once: a second presentation is refused here, before the provider
        // (which would refuse it too, but only while it remembers).
        if !self.first_use(app, token).await {
            count(provider, "reused");
            return Err(CaptchaError::Refused);
        }
        let verdict = self.siteverify(settings, token, ip).await;
        match verdict {
            Ok(true) => count(provider, "passed"),
            Ok(false) => count(provider, "refused"),
            Err(_) => count(provider, "unavailable"),
        }
        match verdict? {
            true => Ok(()),
            false => Err(CaptchaError::Refused),
        }
    }

    /// Whether `token` is presented to `app` for the first time (true when Redis cannot
    /// say: the provider still checks it).
    async fn first_use(&self, app: Uuid, token: &str) -> bool {
        let hex: String = Sha256::digest(token.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = format!("portcullis:captcha:{app}:{hex}");
        let mut redis = self.redis.clone();
        let first: Result<bool, _> = redis
            .set_options(
                &key,
                1,
                redis::SetOptions::default()
                    .conditional_set(redis::ExistenceCheck::NX)
                    .with_expiration(redis::SetExpiry::EX(SEEN_FOR_SECS)),
            )
            .await;
        !matches!(first, Ok(false))
    }

    /// The provider's verdict on `token` (its `siteverify` answer).
    async fn siteverify(
        &self,
        settings: &CaptchaSettings,
        token: &str,
        ip: IpAddr,
    ) -> Result<bool, CaptchaError> {
        let down = CaptchaError::Unavailable;
        let url = settings
            .verify_url
            .as_deref()
            .unwrap_or(settings.provider.verify_url());
        let form = serde_urlencoded::to_string([
            ("secret", settings.secret.as_str()),
            ("response", token),
            ("remoteip", &ip.to_string()),
        ])
        .map_err(|e| down(e.to_string()))?;
        let uri: http::Uri = url
            .parse()
            .map_err(|_| down("verify_url does not parse".into()))?;
        let request = http::Request::post(uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| down(e.to_string()))?;
        let answer = match self.egress.call(request, VERIFY_TIMEOUT, 64 * 1024).await {
            Ok(answer) => answer,
            Err(EgressError::Refused) => {
                return Err(down(
                    "verify_url names a loopback, private or metadata address".into(),
                ));
            }
            Err(e) => return Err(down(e.to_string())),
        };
        if !(200..300).contains(&answer.status) {
            return Err(down(format!("answered {}", answer.status)));
        }
        match serde_json::from_slice::<Verdict>(&answer.body) {
            Ok(Verdict { success }) => Ok(success),
            Err(_) => Err(down("the answer is not a siteverify verdict".into())),
        }
    }
}
