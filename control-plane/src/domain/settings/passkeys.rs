//! The `passkeys` setting: where an application's passkeys are valid.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::Url;

use super::SettingsError;

/// Passkeys (WebAuthn) for this application; absent: passkeys are off.
///
/// User verification is always required (a PIN, a fingerprint, a face): that is what lets
/// one passkey count as two factors. Attestation is not asked for (`none`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PasskeySettings {
    /// The relying-party id: the domain passkeys are bound to. Every origin's host is this
    /// domain or under it (`example.com` for `https://app.example.com`).
    pub rp_id: String,
    /// The name authenticators show; empty: the application's name.
    #[serde(default)]
    pub rp_name: String,
    /// The origins of the pages that run the ceremonies: `https://host[:port]`
    /// (`http://localhost:PORT` for development).
    pub origins: Vec<String>,
    /// Authenticator models (AAGUIDs) allowed to register; empty: any. Without attestation
    /// an authenticator declares its model itself: this keeps honest devices out, not
    /// forged ones.
    #[serde(default)]
    pub aaguids: Vec<Uuid>,
}

impl PasskeySettings {
    /// The origins, parsed (each checked by [`Self::validate`]).
    pub fn origin_urls(&self) -> Vec<Url> {
        self.origins
            .iter()
            .filter_map(|o| Url::parse(o).ok())
            .collect()
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |what: String| Err(SettingsError::Invalid(format!("passkeys: {what}")));
        let id = &self.rp_id;
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        // A registrable domain: several labels (a bare top-level domain is not), or
        // localhost; never an IP address (browsers refuse those as relying-party ids).
        let all_digits = id.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if id.len() > 253
            || !id.split('.').all(label_ok)
            || all_digits
            || !(id.contains('.') || id == "localhost")
        {
            return invalid(format!(
                "rp_id must be a lower-case domain name like example.com (or localhost), not {id:?}"
            ));
        }
        if self.rp_name.chars().count() > 100 || self.rp_name.chars().any(char::is_control) {
            return invalid("rp_name must be at most 100 characters".into());
        }
        if self.origins.is_empty() || self.origins.len() > 20 {
            return invalid("origins must list 1 to 20 origins".into());
        }
        for origin in &self.origins {
            let url = Url::parse(origin).ok();
            let host = url.as_ref().and_then(Url::host_str).unwrap_or("");
            let scheme_ok = url.as_ref().is_some_and(|u| {
                u.scheme() == "https" || (u.scheme() == "http" && host == "localhost")
            });
            let bare = url.as_ref().is_some_and(|u| {
                u.path() == "/"
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && !origin.ends_with('/')
            });
            if !scheme_ok || !bare {
                return invalid(format!(
                    "{origin:?} is not an origin like https://app.example.com (http only for localhost)"
                ));
            }
            if !(host == id || host.ends_with(&format!(".{id}"))) {
                return invalid(format!(
                    "rp_id {id:?} is not {host:?} nor a domain it is under"
                ));
            }
        }
        if self.aaguids.len() > 100 {
            return invalid("aaguids lists at most 100 authenticator models".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rp_id: &str, origins: &[&str]) -> PasskeySettings {
        PasskeySettings {
            rp_id: rp_id.to_owned(),
            rp_name: String::new(),
            origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            aaguids: Vec::new(),
        }
    }

    #[test]
    fn the_rp_id_is_a_suffix_of_every_origin() {
        let ok = [
            ("example.com", &["https://example.com"][..]),
            (
                "example.com",
                &["https://app.example.com", "https://example.com:8443"],
            ),
            ("localhost", &["http://localhost:8080"]),
            ("auth.example.co.uk", &["https://auth.example.co.uk"]),
        ];
        for (id, origins) in ok {
            assert!(settings(id, origins).validate().is_ok(), "{id} {origins:?}");
        }
        let refused = [
            ("example.com", &["https://myexample.com"][..]),
            ("app.example.com", &["https://example.com"]),
            ("example.com", &["http://app.example.com"]),
            ("example.com", &["https://app.example.com/login"]),
            ("example.com", &["https://app.example.com/"]),
            ("example.com", &[]),
            ("com", &["https://example.com"]),
            ("127.0.0.1", &["https://127.0.0.1"]),
            ("Example.com", &["https://example.com"]),
            ("example.com", &["https://user@example.com"]),
            ("localhost", &["http://127.0.0.1:8080"]),
        ];
        for (id, origins) in refused {
            assert!(
                settings(id, origins).validate().is_err(),
                "{id} {origins:?}"
            );
        }
    }
}
