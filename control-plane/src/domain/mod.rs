//! The domain: one module per aggregate (applications, users, sessions, keys, roles,
//! webhooks, audit events, ...), each owning its SQL. Knows nothing of HTTP.

pub mod apps;
pub mod audit;
pub mod authorizations;
pub mod clients;
pub mod dpop;
pub mod factors;
pub mod identities;
pub mod keys;
pub mod mailings;
pub mod messages;
pub mod one_time;
pub mod owners;
pub mod passkeys;
pub mod passwords;
pub mod revocations;
pub mod roles;
pub mod sessions;
pub mod settings;
pub mod tokens;
pub mod users;
pub mod webhooks;

/// The longest access-token lifetime an application may set.
pub const MAX_ACCESS_TTL: i64 = 86_400;

/// Clock skew tolerated when the control plane checks its own tokens.
pub const LEEWAY_SECS: i64 = 30;

/// When a revocation made at `now` may be forgotten: once every token it covers has
/// expired. The longest lifetime is used, not the application's current one, which may have
/// been shorter when older tokens were issued.
pub fn revocation_until(now: i64) -> i64 {
    now + MAX_ACCESS_TTL + LEEWAY_SECS
}

/// Where a request came from, and when: what every recorded change carries.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub ip: std::net::IpAddr,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub now: i64,
    /// The key a DPoP proof of this request showed possession of, once [`dpop`] accepted
    /// the proof (signature, target, time, nonce, first use). Tokens issued for the
    /// request are bound to it; a bound session's refresh needs it. Set only by the routes
    /// that issue tokens.
    pub dpop: Option<Jkt>,
}

impl Ctx {
    /// This context, for a request whose DPoP proof showed `key` (or that carried none).
    pub fn with_dpop(self, key: Option<Jkt>) -> Self {
        Self { dpop: key, ..self }
    }
}

/// The RFC 7638 SHA-256 thumbprint of a DPoP proof's public key (RFC 9449 §6.1 `jkt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jkt(pub [u8; 32]);

impl Jkt {
    /// base64url without padding, as `cnf.jkt` and `dpop_jkt` carry it.
    pub fn text(&self) -> String {
        portcullis_verifier::core::dpop::jkt_text(&self.0)
    }

    /// The thumbprint in its text form (43 base64url characters), if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        use base64::Engine as _;
        if text.len() != 43 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}
