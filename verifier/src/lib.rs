//! Portcullis verifier: validates EdDSA access tokens beside every service pod.
//!
//! - [`core`]: sans-IO verification (no allocation, no clock, no I/O).
//! - [`state`]: the current [`core::Snapshot`] behind an atomic pointer, plus sync health.
//! - [`sync`]: key and revocation sources (Redis; JWKS file or URL).
//! - [`policy`]: route rules (path prefix + method -> roles / scopes).
//! - [`serve`]: HTTP (verify, Envoy ext_authz HTTP, nginx `auth_request`, health,
//!   metrics) and gRPC ext_authz.
//! - [`config`]: typed configuration from the environment.

//!
//! Everything but [`core`] sits behind the default `server` feature.

pub mod core;

#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
mod runtime;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod state;
#[cfg(feature = "server")]
pub mod sync;

#[cfg(feature = "server")]
pub use crate::runtime::{Listeners, run};
