//! The social-login providers an application configures (`settings.oauth_providers`):
//! generic OpenID Connect or a preset, checked when settings change, with client secrets
//! sealed (bound to the application, provider, issuer and client id) and shown masked.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::SettingsError;
use crate::infra::captcha::SECRET_MASK;
use crate::infra::crypto::Secrets;

/// Which provider a configuration is: generic OpenID Connect, or a preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Oidc,
    Google,
    Microsoft,
    Apple,
    Gitlab,
    /// Plain OAuth 2.0 with GitHub's user API (no ID token).
    Github,
}

impl ProviderKind {
    fn default_issuer(self) -> Option<&'static str> {
        match self {
            Self::Oidc => None,
            Self::Google => Some("https://accounts.google.com"),
            // Multi-tenant: the discovered issuer holds `{tenantid}`, filled from `tid`.
            Self::Microsoft => Some("https://login.microsoftonline.com/common/v2.0"),
            Self::Apple => Some("https://appleid.apple.com"),
            Self::Gitlab => Some("https://gitlab.com"),
            Self::Github => Some("https://github.com"),
        }
    }

    pub fn default_scopes(self) -> &'static [&'static str] {
        match self {
            Self::Github => &["read:user", "user:email"],
            Self::Apple => &["openid", "email", "name"],
            _ => &["openid", "email", "profile"],
        }
    }
}

/// One provider of an application (`settings.oauth_providers[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OAuthProvider {
    /// `{provider}` in the routes: `[a-z0-9][a-z0-9_-]{0,31}`.
    pub name: String,
    pub kind: ProviderKind,
    /// The OpenID issuer (discovery at `{issuer}/.well-known/openid-configuration`);
    /// required for `oidc`, a preset's default otherwise (GitHub: the server's base URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    pub client_id: String,
    /// Write-only: sealed when saved, shown as `********`; sending that back keeps it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_secret: String,
    /// The sealed secret (storage only; never accepted from a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub client_secret_sealed: Option<String>,
    /// Requested scopes; the preset's when empty.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Link a new identity to the existing user with the same email, if the provider
    /// asserts the address is verified. Off: that user must sign in and link.
    #[serde(default)]
    pub auto_link_verified_email: bool,
}

fn name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn url_ok(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 500
        && !url.contains(['#', '?', '@'])
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl OAuthProvider {
    /// The issuer (or GitHub base URL) in force, without a trailing slash.
    pub fn issuer(&self) -> String {
        self.issuer
            .as_deref()
            .or(self.kind.default_issuer())
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }

    /// The scopes to request, space-separated.
    pub fn scopes(&self) -> String {
        if self.scopes.is_empty() {
            self.kind.default_scopes().join(" ")
        } else {
            self.scopes.join(" ")
        }
    }

    fn context(&self, app: Uuid) -> Vec<u8> {
        format!(
            "oauth-client-secret\0{app}\0{}\0{}\0{}",
            self.name,
            self.issuer(),
            self.client_id
        )
        .into_bytes()
    }

    /// The client secret, if one is configured.
    pub fn secret(&self, secrets: &Secrets, app: Uuid) -> Result<Option<String>, SettingsError> {
        let Some(sealed) = &self.client_secret_sealed else {
            return Ok(None);
        };
        let sealed = STANDARD
            .decode(sealed)
            .map_err(|_| SettingsError::Sealed("a sealed client secret is not base64"))?;
        let plain = secrets
            .open(&sealed, &self.context(app))
            .ok_or(SettingsError::Sealed("a client secret does not open"))?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| SettingsError::Sealed("a client secret is not UTF-8"))
    }
}

/// Checks the providers of a settings document.
pub fn validate(providers: &[OAuthProvider]) -> Result<(), SettingsError> {
    let bad = |what: String| Err(SettingsError::Invalid(format!("oauth_providers: {what}")));
    if providers.len() > 10 {
        return bad("at most 10 providers".into());
    }
    for (i, p) in providers.iter().enumerate() {
        if !name_ok(&p.name) {
            return bad(format!(
                "name {:?} must match [a-z0-9][a-z0-9_-]{{0,31}}",
                p.name
            ));
        }
        if providers[..i].iter().any(|q| q.name == p.name) {
            return bad(format!("name {:?} is used twice", p.name));
        }
        if p.kind == ProviderKind::Oidc && p.issuer.is_none() {
            return bad(format!("{}: an oidc provider needs issuer", p.name));
        }
        if p.issuer.as_deref().is_some_and(|u| !url_ok(u)) {
            return bad(format!("{}: issuer must be an http(s) URL", p.name));
        }
        if p.client_id.is_empty()
            || p.client_id.len() > 512
            || p.client_id.chars().any(char::is_control)
        {
            return bad(format!(
                "{}: client_id is required (at most 512 characters)",
                p.name
            ));
        }
        if p.client_secret.len() > 4096 {
            return bad(format!("{}: client_secret is too long", p.name));
        }
        let scope_ok = |s: &String| {
            (1..=100).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        };
        if p.scopes.len() > 20 || !p.scopes.iter().all(scope_ok) {
            return bad(format!(
                "{}: at most 20 scopes of printable characters",
                p.name
            ));
        }
    }
    Ok(())
}

/// After a settings merge: secrets are only ever taken from the stored settings (never a
/// sealed value from the request), kept when sent back masked or left out, and refused to
/// move: a provider whose kind, issuer or client id changed needs its secret again.
pub fn carry_secrets(
    before: &[OAuthProvider],
    after: &mut [OAuthProvider],
) -> Result<(), SettingsError> {
    for p in after.iter_mut() {
        p.client_secret_sealed = None;
        if !p.client_secret.is_empty() && p.client_secret != SECRET_MASK {
            continue;
        }
        p.client_secret.clear();
        let Some(old) = before.iter().find(|o| o.name == p.name) else {
            continue;
        };
        if old.client_secret_sealed.is_none() {
            continue;
        }
        if old.kind != p.kind || old.issuer() != p.issuer() || old.client_id != p.client_id {
            return Err(SettingsError::Invalid(format!(
                "oauth_providers: {}: changing kind, issuer or client_id needs client_secret again",
                p.name
            )));
        }
        p.client_secret_sealed.clone_from(&old.client_secret_sealed);
    }
    Ok(())
}

/// Seals every secret given in plain text (before the settings are stored).
pub fn seal_secrets(providers: &mut [OAuthProvider], secrets: &Secrets, app: Uuid) {
    for p in providers.iter_mut() {
        if p.client_secret.is_empty() {
            continue;
        }
        let sealed = secrets.seal(p.client_secret.as_bytes(), &p.context(app));
        p.client_secret_sealed = Some(STANDARD.encode(sealed));
        p.client_secret.clear();
    }
}

/// As `GET /settings` shows them.
pub fn masked(providers: &mut [OAuthProvider]) {
    for p in providers.iter_mut() {
        if p.client_secret_sealed.take().is_some() {
            p.client_secret = SECRET_MASK.to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn provider(name: &str) -> OAuthProvider {
        OAuthProvider {
            name: name.into(),
            kind: ProviderKind::Oidc,
            issuer: Some("https://id.example.com".into()),
            client_id: "client".into(),
            client_secret: String::new(),
            client_secret_sealed: None,
            scopes: Vec::new(),
            auto_link_verified_email: false,
        }
    }

    #[test]
    fn secrets_seal_open_mask_and_never_move() {
        let secrets = Secrets::new(&[7; 32]);
        let app = Uuid::now_v7();
        let mut stored = vec![OAuthProvider {
            client_secret: "s3cret".into(),
            ..provider("corp")
        }];
        seal_secrets(&mut stored, &secrets, app);
        assert!(stored[0].client_secret.is_empty());
        assert_eq!(
            stored[0].secret(&secrets, app).unwrap().as_deref(),
            Some("s3cret")
        );
        assert!(!serde_json::to_string(&stored).unwrap().contains("s3cret"));
        // Sent back masked: kept.
        let mut shown = stored.clone();
        masked(&mut shown);
        assert_eq!(shown[0].client_secret, SECRET_MASK);
        assert!(shown[0].client_secret_sealed.is_none());
        carry_secrets(&stored, &mut shown).unwrap();
        assert_eq!(
            shown[0].secret(&secrets, app).unwrap().as_deref(),
            Some("s3cret")
        );
        // Pointed elsewhere without the secret: refused.
        let mut moved = shown.clone();
        moved[0].issuer = Some("https://evil.example".into());
        moved[0].client_secret = SECRET_MASK.into();
        assert!(carry_secrets(&stored, &mut moved).is_err());
        // A sealed value smuggled in a request is dropped.
        let mut smuggled = vec![OAuthProvider {
            client_secret_sealed: stored[0].client_secret_sealed.clone(),
            ..provider("other")
        }];
        carry_secrets(&stored, &mut smuggled).unwrap();
        assert!(smuggled[0].client_secret_sealed.is_none());
        // Sealed under another provider's context, a secret does not open.
        let mut renamed = stored.clone();
        renamed[0].name = "corp2".into();
        assert!(renamed[0].secret(&secrets, app).is_err());
    }

    #[test]
    fn provider_settings_are_checked() {
        assert!(validate(&[provider("google")]).is_ok());
        for bad in [
            OAuthProvider {
                name: "Bad Name".into(),
                ..provider("x")
            },
            OAuthProvider {
                issuer: None,
                ..provider("x")
            },
            OAuthProvider {
                issuer: Some("ftp://x".into()),
                ..provider("x")
            },
            OAuthProvider {
                client_id: String::new(),
                ..provider("x")
            },
            OAuthProvider {
                scopes: vec!["a b\"".into()],
                ..provider("x")
            },
        ] {
            assert!(validate(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(validate(&[provider("a"), provider("a")]).is_err());
        let google = OAuthProvider {
            kind: ProviderKind::Google,
            issuer: None,
            ..provider("g")
        };
        assert!(validate(std::slice::from_ref(&google)).is_ok());
        assert_eq!(google.issuer(), "https://accounts.google.com");
    }
}
