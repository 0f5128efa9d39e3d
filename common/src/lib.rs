//! Types both Portcullis binaries agree on: the access-token profile, Ed25519 JWK/JWKS with
//! RFC 7638 key ids, the Redis layout of API.md §5, the contract's error codes, and how a
//! request's credentials (bearer token, cookie) are read.
//!
//! Without the `net` feature no I/O lives here. With it, what both binaries share as
//! servers: `redis_conn` (reaching Redis as a server, Cluster or Sentinel master), `tls`
//! (TLS listeners with reloading certificates) and `process` (the Prometheus recorder, the
//! shutdown signal). No HTTP framework or database driver. The verifier's
//! hot path does not use these owned types either; it parses tokens by borrowing (see
//! `portcullis-verifier::core`). These types serve the writers, tests and cold paths.

pub mod credentials;
pub mod env;
pub mod error;
pub mod jwk;
#[cfg(feature = "net")]
pub mod process;
#[cfg(feature = "net")]
pub mod redis_conn;
pub mod redis_layout;
pub mod signed_jwks;
#[cfg(feature = "net")]
pub mod tls;
pub mod token;

pub use error::ErrorCode;
