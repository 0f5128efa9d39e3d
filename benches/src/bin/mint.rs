//! `mint --out-dir DIR --count N --issuer URL --audience ID [--dpop-htu URL]`: writes the
//! inputs of the HTTP load tests. `DIR/jwks.json` holds the public key set of a fresh
//! random Ed25519 key and `DIR/tokens.txt` holds `N` distinct access tokens signed by it
//! (one per line, each with its own `jti` and `sid`), valid for a day. With `--dpop-htu`,
//! also `DIR/dpop-token.txt`, one token bound to a fresh DPoP key (Ed25519, `cnf.jkt`),
//! and `DIR/dpop.txt`, `N` distinct proofs by that key of `GET` at that URL, made now and
//! carrying that token's `ath`: what a DPoP client sends, one proof per request.
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
    /// Also write a DPoP-bound token and `count` proofs of `GET` at this URL.
    #[arg(long)]
    dpop_htu: Option<String>,
}

/// Runs `line(i)` for `0..count` on every core; the lines, in order, one per line.
fn lines(count: usize, line: impl Fn(usize) -> String + Sync) -> Vec<String> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = count.div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let line = &line;
                let from = (w * per_worker).min(count);
                let to = ((w + 1) * per_worker).min(count);
                s.spawn(move || {
                    let mut out = String::with_capacity((to - from) * 700);
                    for i in from..to {
                        out.push_str(&line(i));
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
    })
}

fn write(path: &std::path::Path, chunks: &[String]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for chunk in chunks {
        out.write_all(chunk.as_bytes())?;
    }
    out.flush()?;
    Ok(())
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
    let chunks = lines(args.count, |_| {
        minter.mint(now, &random_uuid(), &random_uuid())
    });
    let tokens_path = args.out_dir.join("tokens.txt");
    write(&tokens_path, &chunks)?;
    if let Some(htu) = &args.dpop_htu {
        let holder = portcullis_tests::dpop::LocalKey::ed25519(rand::random());
        let token = minter.mint_bound(now, &random_uuid(), &random_uuid(), Some(&holder.jkt()));
        write(
            &args.out_dir.join("dpop-token.txt"),
            std::slice::from_ref(&token),
        )?;
        let proofs = lines(args.count, |i| {
            holder.proof("GET", htu, &format!("{i}-{}", random_uuid()), now, &token)
        });
        write(&args.out_dir.join("dpop.txt"), &proofs)?;
        eprintln!("mint: {} DPoP proofs of GET {htu} in dpop.txt", args.count);
    }
    eprintln!(
        "mint: {} tokens ({} bytes per line on average) in {}, key set in {}",
        args.count,
        chunks.iter().map(String::len).sum::<usize>() / args.count.max(1),
        tokens_path.display(),
        jwks_path.display()
    );
    Ok(())
}
