//! `portcullis-verifier`: reads its configuration, sets up logging and runs
//! [`portcullis_verifier::run`] until SIGTERM or Ctrl-C.

use portcullis_verifier::config::{Config, ProcessEnv};
use portcullis_verifier::{Listeners, run};

fn main() {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis-verifier: {e}");
            std::process::exit(64);
        }
    };
    portcullis_common::process::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-verifier: cannot start the runtime: {e}");
            std::process::exit(70);
        }
    };
    let result = runtime.block_on(async {
        let http = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on PORTCULLIS_VERIFIER_LISTEN {}: {e}",
                    config.listen
                )
            })?;
        let grpc = match config.grpc_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on PORTCULLIS_VERIFIER_GRPC_LISTEN {addr}: {e}")
            })?),
            None => None,
        };
        run(
            config,
            Listeners { http, grpc },
            portcullis_common::process::shutdown_signal(),
        )
        .await
    });
    if let Err(e) = result {
        eprintln!("portcullis-verifier: {e}");
        std::process::exit(1);
    }
}
