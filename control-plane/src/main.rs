//! `portcullis-control-plane`: parses the configuration, sets up logging and calls
//! [`portcullis_control_plane::run`]. `portcullis-control-plane migrate` applies the schema
//! migrations and exits; `portcullis-control-plane publisher-key` prints a new key-set
//! publisher key and the trust-key setting verifiers need for it.

use std::process::ExitCode;

use portcullis_control_plane::config::{Config, ProcessEnv};

/// A new publisher key (API.md §5 `portcullis:jwks:signed`): the control plane's secret
/// setting and the verifiers' public one, as two `NAME=value` lines.
fn publisher_key() -> ExitCode {
    use base64::Engine as _;
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = portcullis_common::signed_jwks::public_jwk(&key);
    let trust = serde_json::json!({ "keys": [public] });
    println!(
        "PORTCULLIS_JWKS_PUBLISHER_KEY={}",
        base64::engine::general_purpose::STANDARD.encode(seed)
    );
    println!("PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS={trust}");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("publisher-key") {
        return publisher_key();
    }
    portcullis_common::process::init_logging();
    let config = match Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis-control-plane: {e}");
            return ExitCode::from(64);
        }
    };
    let migrate_only = match std::env::args().nth(1).as_deref() {
        None | Some("serve") => false,
        Some("migrate") => true,
        Some(other) => {
            eprintln!(
                "portcullis-control-plane: unknown command {other:?} (serve | migrate | publisher-key)"
            );
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-control-plane: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if migrate_only {
            return portcullis_control_plane::migrate(&config).await.map(|_| ());
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        portcullis_control_plane::run(
            listener,
            config,
            portcullis_common::process::shutdown_signal(),
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}
