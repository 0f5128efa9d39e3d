//! `mint --out-dir DIR --count N --issuer URL --audience ID`: writes the inputs of the
//! HTTP load tests. `DIR/jwks.json` holds the public key set of a fresh random Ed25519 key
//! and `DIR/tokens.txt` holds `N` distinct access tokens signed by it (one per line, each
//! with its own `jti` and `sid`), valid for a day.
//!
//! The tokens are accepted by the real verifier run with
//! `PORTCULLIS_VERIFIER_JWKS_FILE=DIR/jwks.json`, `PORTCULLIS_VERIFIER_ISSUER=URL` and
//! `PORTCULLIS_VERIFIER_AUDIENCE=ID`. The private key is never written or printed; only a
//! one-line summary goes to stderr. Minting runs on every core.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use portcullis_benches::{Minter, random_signing_key, random_uuid, unix_now};

#[derive(Debug, Parser)]
#[command(about = "Write a JWKS and N distinct access tokens for the HTTP load tests")]
struct Args {
    /// Directory receiving jwks.json and tokens.txt (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// Number of distinct tokens.
    #[arg(long)]
    count: usize,
    /// `iss` of the tokens.
    #[arg(long, default_value = portcullis_benches::ISSUER)]
    issuer: String,
    /// `aud` and `client_id` of the tokens.
    #[arg(long, default_value = portcullis_benches::AUDIENCE)]
    audience: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let minter = Minter::new(random_signing_key(), &args.issuer, &args.audience);
    let jwks_path = args.out_dir.join("jwks.json");
    std::fs::write(
        &jwks_path,
        portcullis_benches::jwks_json(&[minter.verifying_key()]),
    )
    .with_context(|| format!("writing {}", jwks_path.display()))?;

    let now = unix_now();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = args.count.div_ceil(workers);
    let chunks: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let minter = &minter;
                let n = per_worker.min(args.count.saturating_sub(w * per_worker));
                s.spawn(move || {
                    let mut out = String::with_capacity(n * 700);
                    for _ in 0..n {
                        out.push_str(&minter.mint(now, &random_uuid(), &random_uuid()));
                        out.push('\n');
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a minting thread panicked"))
            .collect()
    });

    let tokens_path = args.out_dir.join("tokens.txt");
    let file = std::fs::File::create(&tokens_path)
        .with_context(|| format!("creating {}", tokens_path.display()))?;
    let mut out = BufWriter::new(file);
    for chunk in &chunks {
        out.write_all(chunk.as_bytes())?;
    }
    out.flush()?;
    eprintln!(
        "mint: {} tokens ({} bytes per line on average) in {}, key set in {}",
        args.count,
        chunks.iter().map(String::len).sum::<usize>() / args.count.max(1),
        tokens_path.display(),
        jwks_path.display()
    );
    Ok(())
}
