//! Per-application settings (API.md §3 `GET/PUT /settings`): stored as JSON on the
//! application row, read with defaults filled in, and merged field by field on PUT.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use self::passkeys::PasskeySettings;
use self::providers::OAuthProvider;
use crate::infra::captcha::{CaptchaSettings, SECRET_MASK};

pub mod passkeys;
pub mod providers;

/// Settings refused, or a stored secret in them that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    /// A sealed secret does not open (the wrong key-encryption key, or a damaged row).
    #[error("{0}")]
    Sealed(&'static str),
}

/// Everything an application can tune in this release. Fields of later features are
/// ignored (unknown JSON fields are, by the contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct AppSettings {
    /// Access-token lifetime in seconds (60..=86400).
    pub access_token_ttl: i64,
    /// Absolute refresh-token lifetime in seconds: rotation never extends it.
    pub refresh_token_ttl: i64,
    /// Window in which the just-rotated refresh token may be presented again and get the
    /// same successor (0..=300).
    pub refresh_token_reuse_grace_secs: i64,
    pub password_policy: PasswordPolicy,
    pub rate_limits: RateLimits,
    pub mfa: MfaSettings,
    /// The sender name of this application's mail (the address is `PORTCULLIS_MAIL_FROM`);
    /// empty: the application's name.
    pub mail_from_name: String,
    /// Where a magic link (and, later, a social login) may send the browser back to:
    /// exact matches only.
    pub allowed_redirect_uris: Vec<String>,
    /// How long security events are kept (1..=3650 days).
    pub audit_retention_days: i32,
    /// A CAPTCHA provider for registration and suspicious logins; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captcha: Option<CaptchaSettings>,
    /// Cookie sessions (`options.set_cookie`): names, domain, and the origins whose
    /// cookie-authenticated requests may change state.
    pub cookies: CookieSettings,
    /// Social login providers (`/oauth/{name}/…`); client secrets sealed, shown masked.
    pub oauth_providers: Vec<OAuthProvider>,
    /// Passkeys (WebAuthn); absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkeys: Option<PasskeySettings>,
    /// How the OpenID Provider's pages look.
    pub branding: Branding,
    /// DPoP (RFC 9449): whether token requests must carry a proof, and its nonce.
    pub dpop: DpopSettings,
}

/// DPoP at this application's token requests (login, refresh, magic link, social login,
/// the OpenID Provider's token endpoint). A proof is always accepted; these make it
/// mandatory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DpopSettings {
    /// A token request without a DPoP proof is refused (`invalid_dpop_proof`).
    pub required: bool,
    /// A proof must carry a nonce this control plane issued (`DPoP-Nonce`) within the last
    /// five minutes; else `use_dpop_nonce`, with a fresh one.
    pub nonce_required: bool,
}

/// The OpenID Provider's pages: the application's logo and colour (its name is the title).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Branding {
    /// An `https:` image shown above the title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    /// `#rrggbb`: the buttons' colour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_color: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CookieSettings {
    pub access_name: String,
    pub refresh_name: String,
    /// `Domain` of both cookies (e.g. `example.com` to share them with subdomains); none:
    /// host-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Origins (`https://app.example.com`) allowed to send state-changing requests
    /// authenticated by these cookies; `PORTCULLIS_PUBLIC_URL`'s origin always is.
    pub allowed_origins: Vec<String>,
}

impl Default for CookieSettings {
    fn default() -> Self {
        Self {
            access_name: "portcullis_access".to_owned(),
            refresh_name: "portcullis_refresh".to_owned(),
            domain: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// A cookie name (an RFC 6265 token) of 1..=64 characters.
fn cookie_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `scheme://host[:port]`, nothing after.
fn origin_ok(origin: &str) -> bool {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    })
}

pub const DEFAULT_AUDIT_RETENTION_DAYS: i32 = 90;

/// Who must pass a second factor at sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum MfaPolicy {
    /// No second factor is asked for, and none can be enrolled.
    Off,
    /// Users who enrolled a factor are asked for it.
    #[default]
    Optional,
    /// Every sign-in needs a second factor: an enrolled one, or else a code mailed to the
    /// account's address.
    Required,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct MfaSettings {
    pub policy: MfaPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PasswordPolicy {
    /// At least 8; passwords are at most 128 characters.
    pub min_length: usize,
    /// Refuse the most common passwords.
    pub reject_common: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct RateLimits {
    /// Requests per client IP per minute, counted per route.
    pub per_ip_per_minute: u32,
    /// Failed logins per account per hour before the account is slowed down.
    pub per_account_failures_per_hour: u32,
    /// Mails and SMS (reset, magic link, codes) per account and per destination per hour.
    pub messages_per_account_per_hour: u32,
    /// Wrong second-factor codes per account per hour before MFA answers `429`.
    pub mfa_failures_per_hour: u32,
}

pub const DEFAULT_REFRESH_TTL: i64 = 30 * 86_400;
pub const MAX_PASSWORD_CHARS: usize = 128;

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            access_token_ttl: portcullis_common::token::DEFAULT_ACCESS_TOKEN_TTL_SECS,
            refresh_token_ttl: DEFAULT_REFRESH_TTL,
            refresh_token_reuse_grace_secs: 0,
            password_policy: PasswordPolicy::default(),
            rate_limits: RateLimits::default(),
            mfa: MfaSettings::default(),
            mail_from_name: String::new(),
            allowed_redirect_uris: Vec::new(),
            audit_retention_days: DEFAULT_AUDIT_RETENTION_DAYS,
            captcha: None,
            cookies: CookieSettings::default(),
            oauth_providers: Vec::new(),
            passkeys: None,
            branding: Branding::default(),
            dpop: DpopSettings::default(),
        }
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            reject_common: true,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 60,
            per_account_failures_per_hour: 100,
            messages_per_account_per_hour: 10,
            mfa_failures_per_hour: 10,
        }
    }
}

impl AppSettings {
    /// Reads stored settings; anything unreadable falls back to its default.
    pub fn from_stored(value: &Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    /// Applies a PUT: objects merge recursively, other values replace; then the result must
    /// read back as valid settings, or nothing changes.
    pub fn merged(&self, patch: &Value) -> Result<Self, SettingsError> {
        if !patch.is_object() {
            return Err(SettingsError::Invalid(
                "settings must be a JSON object".into(),
            ));
        }
        let mut current = serde_json::to_value(self)
            .map_err(|e| SettingsError::Invalid(format!("settings: {e}")))?;
        // A secret sent back as `GET` shows it (masked) keeps the stored one.
        let mut patch = patch.clone();
        let masked = patch.pointer("/captcha/secret").and_then(Value::as_str) == Some(SECRET_MASK);
        let secret_given = patch.pointer("/captcha/secret").is_some() && !masked;
        if let Some(captcha) = patch
            .get_mut("captcha")
            .and_then(Value::as_object_mut)
            .filter(|_| masked)
        {
            captcha.remove("secret");
        }
        merge(&mut current, &patch);
        let mut next: Self = serde_json::from_value(current)
            .map_err(|e| SettingsError::Invalid(format!("settings: {e}")))?;
        providers::carry_secrets(&self.oauth_providers, &mut next.oauth_providers)?;
        next.validate()?;
        // The stored secret goes only where it went before: a new provider or verify_url
        // needs it sent again (else whoever can change settings could have it posted to
        // them).
        if let (Some(before), Some(after)) = (&self.captcha, &next.captcha) {
            let moved = before.provider != after.provider || before.verify_url != after.verify_url;
            if moved && !secret_given {
                return Err(SettingsError::Invalid(
                    "changing captcha.provider or captcha.verify_url needs captcha.secret again"
                        .into(),
                ));
            }
        }
        Ok(next)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(SettingsError::Invalid(what.to_owned()))
            }
        };
        check(
            (60..=crate::domain::MAX_ACCESS_TTL).contains(&self.access_token_ttl),
            "access_token_ttl must be 60..=86400 seconds",
        )?;
        check(
            (300..=365 * 86_400).contains(&self.refresh_token_ttl),
            "refresh_token_ttl must be 300 seconds..=365 days",
        )?;
        check(
            (0..=300).contains(&self.refresh_token_reuse_grace_secs),
            "refresh_token_reuse_grace_secs must be 0..=300",
        )?;
        check(
            (8..=MAX_PASSWORD_CHARS).contains(&self.password_policy.min_length),
            "password_policy.min_length must be 8..=128",
        )?;
        check(
            self.rate_limits.per_ip_per_minute >= 1,
            "rate_limits.per_ip_per_minute must be at least 1",
        )?;
        check(
            self.rate_limits.per_account_failures_per_hour >= 1,
            "rate_limits.per_account_failures_per_hour must be at least 1",
        )?;
        check(
            self.rate_limits.messages_per_account_per_hour >= 1
                && self.rate_limits.mfa_failures_per_hour >= 1,
            "rate_limits.messages_per_account_per_hour and mfa_failures_per_hour must be at least 1",
        )?;
        if let Some(captcha) = &self.captcha {
            captcha
                .validate()
                .map_err(|why| SettingsError::Invalid(why.into()))?;
        }
        providers::validate(&self.oauth_providers)?;
        if let Some(passkeys) = &self.passkeys {
            passkeys.validate()?;
        }
        let b = &self.branding;
        check(
            b.logo_url
                .as_deref()
                .is_none_or(|u| u.starts_with("https://") && redirect_uri_ok(u)),
            "branding.logo_url must be an https:// URL",
        )?;
        check(
            b.primary_color.as_deref().is_none_or(|c| {
                c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
            }),
            "branding.primary_color must be a colour like #1a73e8",
        )?;
        let c = &self.cookies;
        check(
            cookie_name_ok(&c.access_name)
                && cookie_name_ok(&c.refresh_name)
                && c.access_name != c.refresh_name,
            "cookies.access_name and refresh_name must be two different cookie names",
        )?;
        check(
            c.domain.as_deref().is_none_or(|d| {
                (1..=253).contains(&d.len())
                    && d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            }),
            "cookies.domain must be a host name",
        )?;
        check(
            c.allowed_origins.len() <= 100 && c.allowed_origins.iter().all(|o| origin_ok(o)),
            "cookies.allowed_origins must be at most 100 origins like https://app.example.com",
        )?;
        check(
            (1..=3650).contains(&self.audit_retention_days),
            "audit_retention_days must be 1..=3650",
        )?;
        check(
            self.mail_from_name.chars().count() <= 100
                && !self.mail_from_name.chars().any(char::is_control),
            "mail_from_name must be at most 100 characters",
        )?;
        check(
            self.allowed_redirect_uris.len() <= 100
                && self
                    .allowed_redirect_uris
                    .iter()
                    .all(|u| redirect_uri_ok(u)),
            "allowed_redirect_uris must be at most 100 absolute http(s) URIs without a fragment",
        )
    }

    /// The settings as `GET /settings` shows them: secrets masked.
    pub fn public(&self) -> Self {
        let mut shown = self.clone();
        if let Some(captcha) = &mut shown.captcha {
            captcha.secret = SECRET_MASK.to_owned();
        }
        providers::masked(&mut shown.oauth_providers);
        shown
    }

    /// Whether `uri` is one of the application's allowed redirect URIs (exact match).
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        self.allowed_redirect_uris
            .iter()
            .any(|allowed| allowed == uri)
    }
}

/// An absolute `http(s)://host...` URI of at most 2,000 characters, with no fragment, no
/// whitespace and no credentials.
/// An absolute http(s) URI without credentials, fragment, whitespace, of at most 2000
/// characters: what may be redirected to (or called back).
pub fn redirect_uri_ok(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    let authority = rest.map(|r| r.split(['/', '?']).next().unwrap_or(""));
    uri.len() <= 2000
        && authority.is_some_and(|a| !a.is_empty() && !a.contains('@'))
        && !uri.contains('#')
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                match into.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn put_merges_the_named_fields_only() {
        let s = AppSettings::default()
            .merged(&json!({"access_token_ttl": 120, "rate_limits": {"per_ip_per_minute": 5}}))
            .unwrap();
        assert_eq!(s.access_token_ttl, 120);
        assert_eq!(s.rate_limits.per_ip_per_minute, 5);
        assert_eq!(s.rate_limits.per_account_failures_per_hour, 100);
        assert_eq!(s.refresh_token_ttl, DEFAULT_REFRESH_TTL);
        let s = s
            .merged(&json!({"mfa": {"policy": "required"}, "allowed_redirect_uris": ["https://app.example/cb"]}))
            .unwrap();
        assert_eq!(s.mfa.policy, MfaPolicy::Required);
        assert!(s.redirect_allowed("https://app.example/cb"));
        assert!(!s.redirect_allowed("https://app.example/cb/"));
    }

    #[test]
    fn invalid_values_change_nothing() {
        let s = AppSettings::default();
        for bad in [
            json!({"access_token_ttl": 5}),
            json!({"access_token_ttl": "soon"}),
            json!({"refresh_token_reuse_grace_secs": -1}),
            json!({"password_policy": {"min_length": 4}}),
            json!({"mfa": {"policy": "sometimes"}}),
            json!({"allowed_redirect_uris": ["javascript:alert(1)"]}),
            json!({"allowed_redirect_uris": ["https://user@evil.example/"]}),
            json!({"allowed_redirect_uris": ["https://app.example/#x"]}),
            json!([1]),
        ] {
            assert!(s.merged(&bad).is_err(), "{bad}");
        }
    }
}
