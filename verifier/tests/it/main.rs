//! The verifier's integration tests, one binary (link time): the attack list of RFC 8725
//! and more against the verify core, Wycheproof vectors, tokens minted by an independent
//! library, and the zero-allocation guarantee.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod alloc;
mod attacks;
mod support;
mod wycheproof;
