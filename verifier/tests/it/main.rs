//! The verifier's integration tests, one binary (link time): the attack list of RFC 8725
//! and more against the verify core, Wycheproof vectors, tokens minted by an independent
//! library, the zero-allocation guarantee, and end to end against a real redis-server
//! (also over TLS, as a Cluster and behind Sentinels), over HTTP, gRPC, TLS and mutual TLS,
//! and behind nginx; DPoP-bound tokens with proofs from an independent client.
//!
//! A test here is a scenario read top to bottom (set up, act, check, act again); many
//! run past 80 lines on purpose, since splitting one would hide its order.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

mod alloc;
mod attacks;
mod binary;
mod dpop;
mod foreign;
mod grpc;
mod http_surface;
mod redis_sync;
mod server;
mod sidecar;
mod support;
mod tls;
mod topology;
mod wire;
mod wycheproof;
