//! Infrastructure: the database (pool, migrations, prepared statements), the Redis
//! publisher and rate limiter, the outbox and its delivery, the SSRF-guarded HTTP client,
//! cryptography, the clock, metrics and CAPTCHA checks. Knows nothing of users or HTTP.

pub mod captcha;
pub mod clock;
pub mod crypto;
pub mod db_tls;
pub mod egress;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod publish;
pub mod store;
