//! Use cases that span aggregates: signing in, recovering an account, second factors,
//! social login. Each orchestrates domain modules; none knows HTTP.

pub mod account;
pub mod admin;
pub mod delivery;
pub mod maintenance;
pub mod mfa;
pub mod oauth;
pub mod passkeys;
pub mod provider;
pub mod recovery;
pub mod signin;
