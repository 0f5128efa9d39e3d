//! The domain: one module per aggregate (applications, users, sessions, keys, roles,
//! webhooks, audit events, ...), each owning its SQL. Knows nothing of HTTP.

pub mod apps;
pub mod audit;
pub mod authorizations;
pub mod clients;
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
}
