//! The domain: one module per aggregate (applications, users, sessions, keys, roles,
//! webhooks, audit events, ...), each owning its SQL. Knows nothing of HTTP.

pub mod apps;
pub mod audit;
pub mod keys;
pub mod messages;
pub mod passwords;
pub mod roles;
pub mod sessions;
pub mod settings;
pub mod tokens;
pub mod users;
pub mod webhooks;
