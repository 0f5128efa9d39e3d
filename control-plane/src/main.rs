//! `portcullis-control-plane`: parses the configuration, sets up logging and calls
//! [`portcullis_control_plane::run`]. `portcullis-control-plane migrate` applies the schema
//! migrations and exits.

use std::process::ExitCode;

use portcullis_control_plane::config::{Config, ProcessEnv};

fn main() -> ExitCode {
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
            eprintln!("portcullis-control-plane: unknown command {other:?} (serve | migrate)");
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
