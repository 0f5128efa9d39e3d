//! An independent **DPoP** (RFC 9449) proof client for tests of DPoP-bound tokens: panva's
//! `dpop` (npm, v2 pinned in `tests/dpop/package-lock.json`) makes every valid proof, so
//! that the verifier and the control plane are judged by someone else's reading of the
//! RFC rather than by our own; nothing in `tests/dpop/client.mjs` is ported from Rust.
//!
//! [`DpopClient::start`] runs `tests/dpop/client.mjs` under Node.js as one long-lived
//! process; [`DpopClient::key`] makes a key pair there (WebCrypto, through the package's
//! `generateKeyPair`), which stays in that process, and [`DpopClient::proof`] signs a
//! proof with it. Each call sends one JSON command line and reads one JSON answer line
//! (the wire format is documented at the top of `client.mjs`; the exchange is
//! `node_lines.rs`'s, shared with the relying party), bounded by 10 s; the calls
//! take `&self` and are serialised by a lock, so one client can serve a whole test.
//!
//! A proof with default [`ProofOpts`] (or only `access_token` and `nonce`) is the
//! package's `generateProof` verbatim. Setting any other field builds the proof by hand in
//! the same layout (header `{"alg","typ","jwk"}`, payload `{"iat","jti","htm","nonce"?,
//! "htu","ath"?}`), because `generateProof` writes `iat` and `jti` itself, after any
//! additional claims, and offers no attack. What dpop 2.1 writes, worth knowing when a
//! verifier refuses it:
//!
//! - An Ed25519 key's proofs carry `"alg":"Ed25519"` (RFC 9864's fully-specified name),
//!   not `"EdDSA"`; [`DpopKey::alg`] says which. `ProofOpts { alg: Some("EdDSA"), .. }`
//!   gives the same proof labelled `EdDSA`, as older clients write it.
//! - The header `jwk` holds only `kty`, `crv`, `x` and (EC) `y`: no `alg`, `use` or `kid`.
//! - `ath` is left out for an empty access token, `nonce` is written even when empty.
//!
//! Not a DPoP verifier, and nothing here is fit for production (keys live unprotected in
//! the Node process until it exits).

use std::time::Duration;

use anyhow::{Result, anyhow};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::node_lines::{NodeLines, Script};

/// Bound on one command: all local work (key generation, one signature).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The script's stderr, in its directory: harness errors with their stacks.
const LOG_FILE: &str = "dpop.log";
/// `tests/dpop/client.mjs`, with its package.json and package-lock.json.
const SCRIPT: Script = Script {
    name: "dpop",
    file: "client.mjs",
    who: "the DPoP client",
    log_file: LOG_FILE,
    timeout: COMMAND_TIMEOUT,
};

/// A key pair held by a [`DpopClient`]'s process; only usable with the client that made
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopKey {
    /// The process's name for the key.
    pub id: String,
    /// The JWS `alg` of its valid proofs: `"Ed25519"` (whether `EdDSA` or `Ed25519` was
    /// asked for: the package's name) or `"ES256"`.
    pub alg: String,
    /// The RFC 7638 SHA-256 thumbprint of the public key, base64url: the package's
    /// `calculateThumbprint`, i.e. the `jkt` a token bound to this key carries in `cnf`.
    pub jkt: String,
    /// The public JWK as proofs carry it: `kty`, `crv`, `x` and (EC) `y`.
    pub public_jwk: Value,
}

/// What to put in a proof beyond `htm` and `htu`. `Default` is a valid proof made by the
/// package; every field but `access_token` and `nonce` makes a hand-built one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProofOpts {
    /// `ath` = base64url(SHA-256(token)); none for `None` or an empty token.
    pub access_token: Option<String>,
    pub nonce: Option<String>,
    /// `iat` (Unix seconds) instead of now (Node's clock).
    pub iat: Option<i64>,
    /// `jti` instead of a fresh UUID: to replay one.
    pub jti: Option<String>,
    /// The header's `alg`: `"none"` makes an unsigned proof (empty signature), `"HS256"`
    /// an HMAC-SHA256 one keyed with the public key's raw `x` bytes, anything else keeps
    /// the key's own signature under this label (`"EdDSA"`, or a mismatch like `"ES256"`
    /// on an Ed25519 key).
    pub alg: Option<String>,
    /// The header's `typ` instead of `dpop+jwt`.
    pub typ: Option<String>,
    /// The header's `jwk` also carries the private key `d`.
    pub embed_private_key: bool,
    /// The header carries the proof key's `jwk` (and `alg`), the signature is this key's.
    pub signed_by: Option<DpopKey>,
    /// This string as `ath`, whatever `access_token` says.
    pub ath_override: Option<String>,
}

/// The `dpop` package in its own Node.js process. Dropping it kills the process and
/// removes its directory.
#[derive(Debug)]
pub struct DpopClient {
    /// `client.mjs` under Node.js, in its directory (with [`LOG_FILE`]): one exchange at
    /// a time.
    channel: Mutex<NodeLines>,
    /// The Node.js and dpop versions, as the script reported them.
    versions: Value,
}

impl DpopClient {
    /// Starts the client. Installs the npm package first if this lock file's is not in
    /// the cache yet (`${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-dpop/<hash>/`).
    ///
    /// # Errors
    ///
    /// Fails when `node` or `npm` is missing (naming the Debian packages), when the npm
    /// install fails, and when the script does not answer its first command (quoting its
    /// stderr).
    pub async fn start() -> Result<Self> {
        let mut lines = NodeLines::start(SCRIPT, "dpop proof client").await?;
        let versions = lines.command("hello", json!({})).await?;
        Ok(Self {
            channel: Mutex::new(lines),
            versions,
        })
    }

    /// `{"node": "v20…", "dpop": "2.1.2"}`: what made the proofs, for a failure message.
    pub fn versions(&self) -> &Value {
        &self.versions
    }

    /// A fresh key pair for `alg`: `"EdDSA"` or `"Ed25519"` (an Ed25519 key either way,
    /// whose proofs say `Ed25519`), or `"ES256"` (P-256).
    ///
    /// # Errors
    ///
    /// Fails for another `alg`, and on harness failures.
    pub async fn key(&self, alg: &str) -> Result<DpopKey> {
        let answer = self.command("key", json!({ "alg": alg })).await?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {name} in the key {answer}"))
        };
        Ok(DpopKey {
            id: field("id")?,
            alg: field("alg")?,
            jkt: field("jkt")?,
            public_jwk: answer["public_jwk"].clone(),
        })
    }

    /// A compact DPoP proof by `key` for a request `htm htu` (both written as given: the
    /// caller strips the query and fragment of `htu`), shaped by `opts`.
    ///
    /// # Errors
    ///
    /// Fails when `key` or `opts.signed_by` is not this client's, and on harness
    /// failures.
    pub async fn proof(
        &self,
        key: &DpopKey,
        htm: &str,
        htu: &str,
        opts: &ProofOpts,
    ) -> Result<String> {
        let answer = self
            .command("proof", proof_args(key, htm, htu, opts))
            .await?;
        answer["proof"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no proof in the answer {answer}"))
    }

    /// Sends `cmd` with `args` (a JSON object) and returns the answer's result.
    async fn command(&self, cmd: &str, args: Value) -> Result<Value> {
        self.channel.lock().await.command(cmd, args).await
    }
}

/// The `proof` command's arguments: only the options that are set, so that the script
/// sees exactly which ones take the proof away from the package.
fn proof_args(key: &DpopKey, htm: &str, htu: &str, opts: &ProofOpts) -> Value {
    let mut args = Map::new();
    args.insert("key".to_owned(), key.id.clone().into());
    args.insert("htm".to_owned(), htm.into());
    args.insert("htu".to_owned(), htu.into());
    let strings = [
        ("access_token", &opts.access_token),
        ("nonce", &opts.nonce),
        ("jti", &opts.jti),
        ("alg", &opts.alg),
        ("typ", &opts.typ),
        ("ath_override", &opts.ath_override),
    ];
    for (name, value) in strings {
        if let Some(value) = value {
            args.insert(name.to_owned(), value.clone().into());
        }
    }
    if let Some(iat) = opts.iat {
        args.insert("iat".to_owned(), iat.into());
    }
    if opts.embed_private_key {
        args.insert("embed_private_key".to_owned(), true.into());
    }
    if let Some(signer) = &opts.signed_by {
        args.insert("signed_by".to_owned(), signer.id.clone().into());
    }
    Value::Object(args)
}

/// A DPoP key held in this process, making proofs by hand where a Node process per call
/// would distort the measurement: allocation counts and benchmarks. Not an independent
/// implementation: tests of what the verifier and control plane accept use
/// [`DpopClient`].
#[derive(Debug)]
pub enum LocalKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(ring::signature::EcdsaKeyPair),
}

impl LocalKey {
    /// An Ed25519 key from a fixed seed.
    pub fn ed25519(seed: u8) -> Self {
        LocalKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    /// A fresh P-256 key.
    pub fn p256() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system's randomness");
        LocalKey::P256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .expect("a key ring just made"),
        )
    }

    /// The public JWK with its members in RFC 7638 order, and the proof's `alg`.
    pub fn jwk(&self) -> (String, &'static str) {
        use ring::signature::KeyPair;
        match self {
            LocalKey::Ed25519(k) => (
                format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    b64url(k.verifying_key().as_bytes())
                ),
                "EdDSA",
            ),
            LocalKey::P256(k) => {
                let point = k.public_key().as_ref();
                (
                    format!(
                        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                        b64url(&point[1..33]),
                        b64url(&point[33..])
                    ),
                    "ES256",
                )
            }
        }
    }

    /// The RFC 7638 thumbprint, base64url.
    pub fn jkt(&self) -> String {
        use sha2::Digest;
        b64url(&sha2::Sha256::digest(self.jwk().0.as_bytes()))
    }

    /// A proof of `htm htu` issued at `iat`, with `ath` for `token`.
    pub fn proof(&self, htm: &str, htu: &str, jti: &str, iat: i64, token: &str) -> String {
        use sha2::Digest;
        let (jwk, alg) = self.jwk();
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"{alg}","jwk":{jwk}}}"#);
        let payload = json!({
            "jti": jti, "htm": htm, "htu": htu, "iat": iat,
            "ath": b64url(&sha2::Sha256::digest(token.as_bytes())),
        });
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(payload.to_string().as_bytes())
        );
        let signature = match self {
            LocalKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(input.as_bytes()).to_bytes().to_vec()
            }
            LocalKey::P256(k) => k
                .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
                .expect("the system's randomness")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64url(&signature))
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::{Signature, VerifyingKey};
    use sha2::{Digest, Sha256};

    use super::*;

    const HTU: &str = "https://api.example.test/orders";

    /// A decoded proof: header, payload, the signed input and the signature bytes.
    struct Decoded {
        header: Value,
        payload: Value,
        input: String,
        signature: Vec<u8>,
    }

    fn decode(proof: &str) -> Decoded {
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3, "{proof}");
        let json = |part: &str| -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        Decoded {
            header: json(parts[0]),
            payload: json(parts[1]),
            input: format!("{}.{}", parts[0], parts[1]),
            signature: URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        }
    }

    /// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no spaces.
    fn thumbprint(jwk: &Value) -> String {
        let member = |name: &str| jwk[name].as_str().unwrap().to_owned();
        let canonical = match jwk["kty"].as_str().unwrap() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                member("crv"),
                member("x"),
                member("y")
            ),
            "OKP" => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                member("crv"),
                member("x")
            ),
            other => panic!("unexpected kty {other}"),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// HMAC-SHA256 (RFC 2104), written out: the tests crate has sha2 but not hmac.
    fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    /// Whether `decoded`'s signature is `jwk`'s (an Ed25519 public key) over its input.
    fn ed25519_verifies(jwk: &Value, decoded: &Decoded) -> bool {
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        let Ok(signature) = <[u8; 64]>::try_from(decoded.signature.as_slice()) else {
            return false;
        };
        key.verify_strict(decoded.input.as_bytes(), &Signature::from_bytes(&signature))
            .is_ok()
    }

    /// Unix seconds now: the proofs' `iat` is Node's clock, compared with the real one.
    fn unix_now() -> i64 {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        let seconds = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        i64::try_from(seconds).unwrap()
    }

    #[tokio::test]
    async fn valid_proofs_come_from_the_package() {
        let client = DpopClient::start().await.unwrap();
        assert_eq!(client.versions()["dpop"], "2.1.2", "{}", client.versions());
        for (asked, alg, kty, signature_len) in [
            ("EdDSA", "Ed25519", "OKP", 64),
            ("ES256", "ES256", "EC", 64),
        ] {
            let key = client.key(asked).await.unwrap();
            assert_eq!(key.alg, alg);
            assert_eq!(key.public_jwk["kty"], kty, "{}", key.public_jwk);
            assert!(key.public_jwk.get("d").is_none(), "{}", key.public_jwk);
            assert_eq!(key.jkt, thumbprint(&key.public_jwk), "RFC 7638 for {asked}");

            // The package's own: a dpop answer, header and payload as RFC 9449 §4.2 says.
            let token = "an-access-token";
            let opts = ProofOpts {
                access_token: Some(token.to_owned()),
                nonce: Some("n-1".to_owned()),
                ..ProofOpts::default()
            };
            let answer = client
                .command("proof", proof_args(&key, "POST", HTU, &opts))
                .await
                .unwrap();
            assert_eq!(answer["made_by"], "dpop");
            let proof = decode(answer["proof"].as_str().unwrap());
            assert_eq!(
                proof.header,
                json!({"alg": alg, "typ": "dpop+jwt", "jwk": key.public_jwk})
            );
            assert_eq!(thumbprint(&proof.header["jwk"]), key.jkt);
            assert_eq!(proof.payload["htm"], "POST");
            assert_eq!(proof.payload["htu"], HTU);
            assert_eq!(proof.payload["nonce"], "n-1");
            let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
            assert_eq!(proof.payload["ath"], ath.as_str());
            let iat = proof.payload["iat"].as_i64().unwrap();
            assert!((iat - unix_now()).abs() <= 5, "iat {iat}");
            assert!(proof.payload["jti"].as_str().unwrap().len() >= 16);
            assert_eq!(
                proof.signature.len(),
                signature_len,
                "JWS form (r || s for ES256)"
            );
            if kty == "OKP" {
                assert!(ed25519_verifies(&key.public_jwk, &proof));
            }

            // Without token and nonce: neither member, and a fresh jti each time.
            let plain = client
                .proof(&key, "GET", HTU, &ProofOpts::default())
                .await
                .unwrap();
            let plain = decode(&plain);
            let members: Vec<&String> = plain.payload.as_object().unwrap().keys().collect();
            assert_eq!(members.len(), 4, "{}", plain.payload);
            for name in ["iat", "jti", "htm", "htu"] {
                assert!(plain.payload.get(name).is_some(), "{}", plain.payload);
            }
            assert_ne!(plain.payload["jti"], proof.payload["jti"]);
        }
    }

    #[tokio::test]
    async fn hand_made_proofs_keep_the_layout_and_break_what_they_are_asked_to() {
        let client = DpopClient::start().await.unwrap();
        let key = client.key("EdDSA").await.unwrap();
        let token = "an-access-token";
        let with = |opts: ProofOpts| ProofOpts {
            access_token: Some(token.to_owned()),
            ..opts
        };
        let make = |opts: ProofOpts| {
            let client = &client;
            let key = &key;
            async move {
                let answer = client
                    .command("proof", proof_args(key, "GET", HTU, &opts))
                    .await
                    .unwrap();
                assert_eq!(answer["made_by"], "hand", "{opts:?}");
                decode(answer["proof"].as_str().unwrap())
            }
        };
        let packaged = decode(
            &client
                .proof(&key, "GET", HTU, &with(ProofOpts::default()))
                .await
                .unwrap(),
        );

        // iat and jti: the package's header and member order, a valid signature.
        let fixed = make(with(ProofOpts {
            iat: Some(1_700_000_000),
            jti: Some("replayed".to_owned()),
            ..ProofOpts::default()
        }))
        .await;
        assert_eq!(
            serde_json::to_string(&fixed.header).unwrap(),
            serde_json::to_string(&packaged.header).unwrap()
        );
        let order = |payload: &Value| -> Vec<String> {
            payload.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(order(&fixed.payload), order(&packaged.payload));
        assert_eq!(fixed.payload["iat"], 1_700_000_000);
        assert_eq!(fixed.payload["jti"], "replayed");
        assert_eq!(fixed.payload["ath"], packaged.payload["ath"]);
        assert!(ed25519_verifies(&key.public_jwk, &fixed));

        // alg none: no signature at all.
        let none = make(ProofOpts {
            alg: Some("none".to_owned()),
            ..ProofOpts::default()
        })
        .await;
        assert_eq!(none.header["alg"], "none");
        assert!(none.signature.is_empty());

        // HS256 keyed with the public x bytes.
        let hs = make(ProofOpts {
            alg: Some("HS256".to_owned()),
            ..ProofOpts::default()
        })
        .await;
        assert_eq!(hs.header["alg"], "HS256");
        let x = URL_SAFE_NO_PAD
            .decode(key.public_jwk["x"].as_str().unwrap())
            .unwrap();
        assert_eq!(hs.signature, hmac_sha256(&x, hs.input.as_bytes()));

        // Relabelled: EdDSA over the same Ed25519 signature.
        let eddsa = make(ProofOpts {
            alg: Some("EdDSA".to_owned()),
            ..ProofOpts::default()
        })
        .await;
        assert_eq!(eddsa.header["alg"], "EdDSA");
        assert!(ed25519_verifies(&key.public_jwk, &eddsa));

        // typ, ath, the private key in the header.
        let typ = make(ProofOpts {
            typ: Some("jwt".to_owned()),
            ..ProofOpts::default()
        })
        .await;
        assert_eq!(typ.header["typ"], "jwt");
        let ath = make(with(ProofOpts {
            ath_override: Some("not-the-hash".to_owned()),
            ..ProofOpts::default()
        }))
        .await;
        assert_eq!(ath.payload["ath"], "not-the-hash");
        let leaky = make(ProofOpts {
            embed_private_key: true,
            ..ProofOpts::default()
        })
        .await;
        let d = leaky.header["jwk"]["d"].as_str().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(d).unwrap().len(), 32);
        assert_eq!(leaky.header["jwk"]["x"], key.public_jwk["x"]);
        assert!(ed25519_verifies(&key.public_jwk, &leaky));

        // Someone else's signature under this key's jwk.
        let other = client.key("Ed25519").await.unwrap();
        let forged = make(ProofOpts {
            signed_by: Some(other.clone()),
            ..ProofOpts::default()
        })
        .await;
        assert_eq!(forged.header["jwk"], key.public_jwk);
        assert!(!ed25519_verifies(&key.public_jwk, &forged));
        assert!(ed25519_verifies(&other.public_jwk, &forged));

        // The ES256 key's private part, too.
        let es = client.key("ES256").await.unwrap();
        let answer = client
            .proof(
                &es,
                "GET",
                HTU,
                &ProofOpts {
                    embed_private_key: true,
                    ..ProofOpts::default()
                },
            )
            .await
            .unwrap();
        let es_leaky = decode(&answer);
        assert!(es_leaky.header["jwk"]["d"].is_string());
        assert_eq!(es_leaky.header["alg"], "ES256");
    }

    #[tokio::test]
    async fn refusals_quote_the_script_and_leave_it_usable() {
        let client = DpopClient::start().await.unwrap();
        let err = client.key("RS256").await.unwrap_err();
        assert!(format!("{err:#}").contains("unsupported alg"), "{err:#}");
        assert!(format!("{err:#}").contains(LOG_FILE), "{err:#}");

        let stranger = DpopKey {
            id: "k999".to_owned(),
            alg: "ES256".to_owned(),
            jkt: String::new(),
            public_jwk: Value::Null,
        };
        let err = client
            .proof(&stranger, "GET", HTU, &ProofOpts::default())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("unknown key"), "{err:#}");

        let err = client
            .command("no_such_command", json!({}))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("unknown command"), "{err:#}");
        client.key("ES256").await.unwrap();

        let dir = client.channel.lock().await.dir().to_path_buf();
        drop(client);
        assert!(!dir.exists(), "drop removes the directory");
    }
}
