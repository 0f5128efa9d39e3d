//! Use cases that span aggregates: signing in, recovering an account, second factors,
//! social login. Each orchestrates domain modules; none knows HTTP.

pub mod delivery;
pub mod maintenance;
pub mod mfa;
pub mod oauth;
pub mod recovery;
