//! Secrets: Argon2id password hashing on a bounded pool off the async runtime, the AEAD that
//! protects private signing keys at rest, and the random tokens and digests for high-entropy
//! secrets (API keys, refresh tokens), which are stored as SHA-256 only.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Random bytes, base64url without padding: 32 bytes (256 bits) for refresh tokens and API
/// keys.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    URL_SAFE_NO_PAD.encode(buf)
}

/// SHA-256 of a high-entropy secret: what the database stores instead of the secret.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Keys derived from `PORTCULLIS_KEY_ENCRYPTION_KEY`, one per purpose, so no key is used for
/// two things.
#[derive(Clone)]
pub struct Secrets {
    aead: XChaCha20Poly1305,
    successor_key: [u8; 32],
    code_key: [u8; 32],
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

type HmacSha256 = Hmac<Sha256>;

fn derive(root: &[u8; 32], label: &[u8]) -> [u8; 32] {
    // HMAC as a PRF keyed by the root secret (HKDF-Expand with one block).
    let mut mac = <HmacSha256 as Mac>::new_from_slice(root).unwrap_or_else(|_| unreachable!());
    mac.update(label);
    mac.update(&[1]);
    mac.finalize().into_bytes().into()
}

impl Secrets {
    pub fn new(root: &[u8; 32]) -> Self {
        let aead_key = derive(root, b"portcullis aead v1");
        Self {
            aead: XChaCha20Poly1305::new(&aead_key.into()),
            successor_key: derive(root, b"portcullis refresh successor v1"),
            code_key: derive(root, b"portcullis one-time codes v1"),
            nonce_key: derive(root, b"portcullis dpop nonces v1"),
        }
    }

    /// `nonce || ciphertext`, with `context` bound as associated data so a ciphertext cannot
    /// be moved to another row.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let payload = chacha20poly1305::aead::Payload {
            msg: plaintext,
            aad: context,
        };
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce length cannot fail.
        out.extend(
            self.aead
                .encrypt(&XNonce::from(nonce), payload)
                .unwrap_or_default(),
        );
        out
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, msg) = sealed.split_at(24);
        let nonce = XNonce::from(<[u8; 24]>::try_from(nonce).ok()?);
        let payload = chacha20poly1305::aead::Payload { msg, aad: context };
        self.aead.decrypt(&nonce, payload).ok()
    }

    /// The refresh token that succeeds `token`: deterministic, so a retry within the grace
    /// window can be answered with the same successor without storing it in clear.
    pub fn successor(&self, token: &str) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.successor_key)
            .unwrap_or_else(|_| unreachable!());
        mac.update(token.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The MAC of a DPoP nonce (RFC 9449 §8): HMAC-SHA256 over `scope` (the application)
    /// and the nonce's time, under a key of its own. The nonce carries the time and this
    /// MAC, so any replica checks any replica's nonce without storing one.
    pub fn nonce_mac(&self, scope: &[u8], time: u64) -> [u8; 32] {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.nonce_key).unwrap_or_else(|_| unreachable!());
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope);
        mac.update(&time.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The key of the decoy passkey credential ids shown for an account without passkeys
    /// (the same ones every time for one name, so no answer tells the two apart).
    pub fn decoy_key(&self) -> Vec<u8> {
        self.code_mac(b"passkey decoy credential ids v1", "")
    }

    /// What the database stores for a low-entropy code (a 6-digit OTP, a recovery code):
    /// HMAC-SHA256 under a server key, bound to `context` (the code's row or its user), so a
    /// stolen table cannot be brute-forced offline.
    pub fn code_mac(&self, context: &[u8], code: &str) -> Vec<u8> {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.code_key).unwrap_or_else(|_| unreachable!());
        mac.update(&(context.len() as u64).to_be_bytes());
        mac.update(context);
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// A uniformly random code of `digits` decimal digits (leading zeros kept).
pub fn random_digits(digits: u32) -> String {
    let n = rand::random_range(0..10u32.pow(digits));
    format!("{n:0width$}", width = digits as usize)
}

/// A recovery code: ten characters of a 32-letter alphabet without look-alikes (no i, l, o, 1) (50 bits),
/// shown as `xxxxx-xxxxx`.
pub fn recovery_code() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";
    let mut out = String::with_capacity(11);
    for i in 0..10 {
        if i == 5 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[rand::random_range(0..32)]));
    }
    out
}

/// Argon2id at OWASP's parameters (m = 19 MiB, t = 2, p = 1) on at most `workers` blocking
/// threads at once, so a login storm queues instead of starving the runtime.
#[derive(Clone, Debug)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    argon: Argon2<'static>,
    /// Verified against when the account does not exist, so both answers cost one hash.
    dummy: Arc<String>,
}

/// A password hash that could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed busy for [`QUEUE_TIMEOUT`]: a storm (answered 503).
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// How long a request waits for a hashing slot before it is answered 503.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

impl PasswordHasherPool {
    pub fn new(workers: usize) -> Self {
        let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = hash_with(&argon, &random_token(16)).unwrap_or_default();
        Self {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            argon,
            dummy: Arc::new(dummy),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|e| HashError::Failed(e.to_string()))?;
        let argon = self.argon.clone();
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job(&argon)
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?;
        Ok(out)
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.to_owned();
        self.run(move |argon| hash_with(argon, &password))
            .await?
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no account,
    /// which always fails but takes the same time.
    pub async fn verify(&self, hash: Option<&str>, password: &str) -> Result<bool, HashError> {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.as_str().to_owned(), str::to_owned);
        let password = password.to_owned();
        let ok = self
            .run(move |argon| {
                PasswordHash::new(&hash)
                    .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(known && ok)
    }
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)?;
    Ok(argon.hash_password(password.as_bytes(), &salt)?.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_context() {
        let s = Secrets::new(&[7; 32]);
        let sealed = s.seal(b"private key", b"kid-1");
        assert_eq!(s.open(&sealed, b"kid-1").unwrap(), b"private key");
        assert!(s.open(&sealed, b"kid-2").is_none());
        assert!(Secrets::new(&[8; 32]).open(&sealed, b"kid-1").is_none());
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert!(s.open(&tampered, b"kid-1").is_none());
    }

    #[test]
    fn successor_is_deterministic_and_keyed() {
        let s = Secrets::new(&[7; 32]);
        assert_eq!(s.successor("a"), s.successor("a"));
        assert_ne!(s.successor("a"), s.successor("b"));
        assert_ne!(s.successor("a"), Secrets::new(&[8; 32]).successor("a"));
        assert_eq!(s.successor("a").len(), 43); // 256 bits
    }

    #[test]
    fn random_tokens_carry_256_bits() {
        let t = random_token(32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        assert_ne!(t, random_token(32));
    }

    #[tokio::test]
    async fn argon2id_at_owasp_parameters() {
        let pool = PasswordHasherPool::new(2);
        let hash = pool.hash("correct horse battery").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            pool.verify(Some(&hash), "correct horse battery")
                .await
                .unwrap()
        );
        assert!(!pool.verify(Some(&hash), "wrong").await.unwrap());
        assert!(!pool.verify(None, "correct horse battery").await.unwrap());
    }
}
