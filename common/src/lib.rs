//! Types both Portcullis binaries agree on: the access-token profile, Ed25519 JWK/JWKS with
//! RFC 7638 key ids, the Redis layout of API.md §5 and the contract's error codes.
//!
//! No I/O lives here: no HTTP framework, no database driver, no Redis client. The verifier's
//! hot path does not use these owned types either; it parses tokens by borrowing (see
//! `portcullis-verifier::core`). These types serve the writers, tests and cold paths.

pub mod env;
pub mod error;
pub mod jwk;
pub mod redis_layout;
pub mod token;

pub use error::ErrorCode;
