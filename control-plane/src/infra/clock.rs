//! The one place the control plane reads the wall clock (`clippy.toml` bans
//! `SystemTime::now` elsewhere): everything else takes `now` as a parameter.

/// Unix seconds now.
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `unix` as a timestamp for SQL parameters and JSON bodies.
pub fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
