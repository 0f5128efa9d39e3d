//! The control plane through its public surface: HTTP against real PostgreSQL and Redis,
//! with the real verifier for the end-to-end checks. One integration binary (STYLE.md).
//!
//! A test here is a scenario read top to bottom (set up, act, check, act again); many
//! run past 80 lines on purpose, since splitting one would hide its order.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod audit;
mod captcha;
mod cookies;
mod deployment;
mod dpop;
mod dpop_flows;
mod dpop_readme;
mod flows;
mod maintenance;
mod mfa;
mod oauth;
mod oauth_github;
mod owners_apps;
mod passkeys;
mod passkeys_browser;
mod provider;
mod provider_browser;
mod recovery;
mod refresh;
mod roles;
mod support;
mod surface;
mod users;
mod webhooks;
mod with_verifier;
