//! JWKS sources for tokens from any OIDC issuer (Keycloak, Auth0, ...): a file, polled for
//! changes, or a URL, refetched when its `Cache-Control` lifetime ends and early (at most
//! once per [`UNKNOWN_KID_MIN_INTERVAL`]) when a token names a `kid` we do not have.
//! Neither carries revocations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Backoff, install_jwks};
use crate::core::Trust;
use crate::state::{Shared, unix_now};

/// How often the file is checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(2);
/// Floor and ceiling on how long a fetched JWKS is kept (whatever Cache-Control says).
pub const MIN_MAX_AGE: Duration = Duration::from_secs(30);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Lifetime assumed when the issuer sends no `max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Rate limit on refetches triggered by unknown key ids (an attacker can send any kid).
pub const UNKNOWN_KID_MIN_INTERVAL: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Follows a JWKS file: reloads it when its modification time or size changes.
pub async fn run_file(path: PathBuf, shared: Arc<Shared>) {
    let mut seen: Option<(SystemTime, u64)> = None;
    loop {
        match tokio::fs::metadata(&path).await {
            Ok(meta) => {
                let stamp = (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                );
                if seen != Some(stamp) {
                    match tokio::fs::read(&path).await {
                        Ok(doc) => {
                            install_jwks(&shared, &doc, Trust::Foreign, "file");
                            seen = Some(stamp);
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot read JWKS file")
                        }
                    }
                }
                shared.mark_synced(unix_now());
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot stat JWKS file"),
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

/// Follows a JWKS URL.
pub async fn run_url(url: String, shared: Arc<Shared>, max_staleness_secs: i64) {
    let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::error!(error = %e, "no TLS root certificates; cannot fetch the JWKS");
            return;
        }
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let wait = match fetch(&client, &url).await {
            Ok((doc, max_age)) => {
                backoff.reset();
                install_jwks(&shared, &doc, Trust::Foreign, "url");
                shared.mark_synced(unix_now());
                // Keys the issuer declared fresh for longer than our staleness bound do not
                // make us unready before they expire.
                shared.set_max_staleness(
                    max_staleness_secs
                        .max(max_age.as_secs() as i64 + FETCH_TIMEOUT.as_secs() as i64),
                );
                max_age
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(url = %url, error = %e, retry_in = ?delay, "JWKS fetch failed; keeping the last good keys");
                metrics::counter!("portcullis_verifier_sync_errors_total").increment(1);
                delay
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        let early = tokio::time::Instant::now() + UNKNOWN_KID_MIN_INTERVAL;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = async {
                tokio::time::sleep_until(early).await;
                shared.unknown_kid.notified().await;
            } => tracing::info!("token with an unknown kid; refetching the JWKS"),
        }
    }
}

async fn fetch<C>(client: &Client<C, Empty<Bytes>>, url: &str) -> Result<(Bytes, Duration), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = http::Request::get(url)
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let max_age = response
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(cache_max_age)
        .unwrap_or(DEFAULT_MAX_AGE)
        .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| "body timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok((body.to_bytes(), max_age))
}

/// The freshness lifetime a `Cache-Control` value grants: `max-age`, or zero for
/// `no-cache` / `no-store` (clamped to [`MIN_MAX_AGE`] by the caller).
pub fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        let secs = lower
            .strip_prefix("max-age=")?
            .trim_matches('"')
            .parse()
            .ok()?;
        Some(Duration::from_secs(secs))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            cache_max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=abc"), None);
    }
}
