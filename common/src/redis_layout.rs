//! The Redis layout of API.md §5: key names, the events channel and its messages.
//!
//! The control plane is the only writer. It orders every change as: write state, then
//! `INCR` [`VERSION`], then `PUBLISH` on [`EVENTS_CHANNEL`]. A reader resyncing reads
//! [`VERSION`] before the state, so the state it reads is at least that new.

use serde::{Deserialize, Serialize};

/// The public JWKS JSON (all published keys).
pub const JWKS: &str = "portcullis:jwks";
/// The same key set signed with the publisher key (`signed_jwks`): what verifiers with
/// trust keys read instead of [`JWKS`].
pub const JWKS_SIGNED: &str = "portcullis:jwks:signed";
/// Sorted set: member = session id, score = Unix time after which the entry may be dropped.
pub const REVOKED_SESSIONS: &str = "portcullis:revoked:sessions";
/// Hash: user id -> Unix time; tokens of that user with `iat` at or before it are revoked.
pub const REVOKED_USERS: &str = "portcullis:revoked:users";
/// Counter incremented on every change above.
pub const VERSION: &str = "portcullis:version";
/// Pub/sub channel carrying one [`Event`] per change.
pub const EVENTS_CHANNEL: &str = "portcullis:events";

/// One message on [`EVENTS_CHANNEL`]. `version` is the value of [`VERSION`] after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Re-read [`JWKS`].
    Jwks { version: u64 },
    /// Session `session_id` is revoked; the entry may be dropped after `until`.
    SessionRevoked {
        session_id: String,
        until: i64,
        version: u64,
    },
    /// Tokens of `user_id` issued at or before `before` are revoked.
    UserRevoked {
        user_id: String,
        before: i64,
        version: u64,
    },
}

impl Event {
    pub fn version(&self) -> u64 {
        match self {
            Self::Jwks { version }
            | Self::SessionRevoked { version, .. }
            | Self::UserRevoked { version, .. } => *version,
        }
    }

    /// The wire form published on the channel.
    pub fn encode(&self) -> String {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a channel message; `None` for anything malformed (the reader then resyncs).
    pub fn decode(message: &[u8]) -> Option<Self> {
        serde_json::from_slice(message).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_match_the_contract() {
        let e = Event::SessionRevoked {
            session_id: "s1".into(),
            until: 99,
            version: 7,
        };
        let v: serde_json::Value = serde_json::from_str(&e.encode()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind":"session_revoked","session_id":"s1","until":99,"version":7})
        );
        let u = Event::decode(br#"{"kind":"user_revoked","user_id":"u","before":5,"version":3}"#);
        assert_eq!(
            u,
            Some(Event::UserRevoked {
                user_id: "u".into(),
                before: 5,
                version: 3
            })
        );
        assert_eq!(
            Event::decode(br#"{"kind":"jwks","version":2}"#).map(|e| e.version()),
            Some(2)
        );
        assert_eq!(Event::decode(b"{\"kind\":\"bogus\"}"), None);
    }
}
