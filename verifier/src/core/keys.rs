//! The verification keys of one snapshot, built from a JWKS when keys change (cold path).
//!
//! The algorithm is pinned by the key: an Ed25519 key verifies only `EdDSA`, an RSA key
//! only `RS256`, a P-256 key only `ES256`. Keys from the Portcullis control plane must be
//! Ed25519; RSA and EC keys are accepted only from a foreign issuer's JWKS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable;
use ed25519_dalek::VerifyingKey;
use portcullis_common::jwk::{Jwk, Jwks};
use sha2::{Digest, Sha512};

use super::json::JsonStr;

/// Signing algorithms a key can be pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    EdDSA,
    Rs256,
    Es256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

#[derive(Clone, Debug)]
enum Material {
    Ed25519(Ed25519Key),
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    P256(Vec<u8>),
}

/// One verification key.
#[derive(Clone, Debug)]
pub struct Key {
    kid: String,
    alg: Alg,
    material: Material,
}

impl Key {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Verifies `signature` over `message`. EdDSA allocates nothing, for valid and invalid
    /// signatures alike (see [`Ed25519Key::verify_strict`]).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Ed25519(key) => {
                let Ok(sig) = <&[u8; 64]>::try_from(signature) else {
                    return false;
                };
                key.verify_strict(message, sig)
            }
            Material::Rsa { n, e } => ring::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    message,
                    signature,
                )
                .is_ok(),
            Material::P256(point) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(message, signature)
            .is_ok(),
        }
    }
}

/// An Ed25519 public key made ready for verification: its encoding (hashed into every
/// challenge) and a table of multiples of `-A`, built once when the key set loads.
#[derive(Clone)]
pub struct Ed25519Key {
    compressed: [u8; 32],
    /// Radix-16 multiples of `-A` (30 KiB): `[k](-A)` costs 64 additions and no doubling.
    minus_a: Arc<EdwardsBasepointTable>,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ed25519Key").field(&self.compressed).finish()
    }
}

impl Ed25519Key {
    /// The key of an encoded public point; `None` when it is not a point or is of small
    /// order (RFC 8032 keys never are; such a key would let one signature fit many
    /// messages).
    pub fn from_bytes(compressed: &[u8; 32]) -> Option<Self> {
        let key = VerifyingKey::from_bytes(compressed).ok()?;
        if key.is_weak() {
            return None;
        }
        Some(Self {
            compressed: *compressed,
            minus_a: Arc::new(EdwardsBasepointTable::create(&-key.to_edwards())),
        })
    }

    /// Ed25519 verification (RFC 8032 §5.1.7) accepting exactly what ed25519-dalek's
    /// `VerifyingKey::verify_strict` accepts: `S` canonical (`S < L`), `R` a canonical
    /// encoding of a point not of small order, `A` not of small order (checked when the
    /// key is built), and `[S]B - [k]A` encoding to `R`.
    ///
    /// Written here on curve25519-dalek, the library ed25519-dalek itself computes with,
    /// for two reasons, both measured in `benches/README.md`:
    /// - speed: `[S]B - [k]A` as two fixed-base multiplications over precomputed tables
    ///   (the basepoint's, and this key's, built once at load) instead of a variable-base
    ///   double multiplication that rebuilds `A`'s table and doubles 253 times per call;
    ///   and `R` is never decompressed: `compress(P) == R` already proves `R` is a
    ///   canonical encoding of the point `P`, so `R`'s small-order check is `P`'s;
    /// - no allocation: `verify_strict` reports a refusal through an error that boxes its
    ///   source when ed25519-dalek's `std`/`alloc` feature is on, which jsonwebtoken
    ///   enables in this build.
    ///
    /// `tests::matches_ed25519_dalek_verify_strict`, the Wycheproof vectors and the
    /// crafted small-order and non-canonical cases hold the two equal.
    pub fn verify_strict(&self, message: &[u8], sig: &[u8; 64]) -> bool {
        strict(&self.compressed, message, sig, |k, s| {
            ED25519_BASEPOINT_TABLE * s + self.minus_a.mul_base(k)
        })
    }
}

/// [`Ed25519Key::verify_strict`] for a key used once (a DPoP proof's own key): `A` is
/// decompressed and checked here, and `[S]B - [k]A` is one variable-base double
/// multiplication, as ed25519-dalek computes it, without building a table. Allocates
/// nothing, unlike ed25519-dalek's refusals (see [`Ed25519Key::verify_strict`]).
pub fn ed25519_verify_strict_once(public: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    let Some(a) = CompressedEdwardsY(*public).decompress() else {
        return false;
    };
    if a.is_small_order() {
        return false;
    }
    let minus_a = -a;
    strict(public, message, sig, |k, s| {
        EdwardsPoint::vartime_double_scalar_mul_basepoint(k, &minus_a, s)
    })
}

/// The checks both Ed25519 paths share: `S` canonical, `k = H(R || A || M)`, and
/// `[S]B - [k]A` (computed by `combine(k, S)`) encoding to `R` and not of small order.
pub(crate) fn strict(
    compressed: &[u8; 32],
    message: &[u8],
    sig: &[u8; 64],
    combine: impl FnOnce(&Scalar, &Scalar) -> EdwardsPoint,
) -> bool {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&sig[..32]);
    s.copy_from_slice(&sig[32..]);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else {
        return false;
    };
    let hash: [u8; 64] = Sha512::new()
        .chain_update(r)
        .chain_update(compressed)
        .chain_update(message)
        .finalize()
        .into();
    let k = Scalar::from_bytes_mod_order_wide(&hash);
    let p = combine(&k, &s);
    p.compress().to_bytes() == r && !p.is_small_order()
}

/// Which keys a source may supply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Portcullis' own control plane (Redis): Ed25519 only.
    Portcullis,
    /// Any OIDC issuer's JWKS (URL or file): Ed25519, RS256, ES256.
    Foreign,
}

/// Why a JWKS was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JWKS holds no usable verification key ({skipped} skipped)")]
    NoUsableKey { skipped: usize },
}

/// Generation counter: every key set built gets a new number, which stamps the
/// verified-token cache so that a key change invalidates every entry at once.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// An immutable set of keys, looked up by `kid`.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<Key>,
    generation: u64,
    /// Keys refused while building, with the reason, for logs.
    skipped: Vec<String>,
}

impl KeySet {
    /// No keys: the state before the first load.
    pub fn empty() -> Self {
        Self {
            keys: Vec::new(),
            generation: 0,
            skipped: Vec::new(),
        }
    }

    /// Builds a key set from a JWKS document. Keys that carry a private part, are not for
    /// signatures, are malformed, small-order, of an unsupported type or a duplicate `kid`
    /// are skipped (and listed in [`KeySet::skipped`]); a JWKS with no usable key is refused.
    pub fn from_jwks(json: &[u8], trust: Trust) -> Result<Self, KeysError> {
        let jwks: Jwks = serde_json::from_slice(json)?;
        let mut keys: Vec<Key> = Vec::new();
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            match key_from_jwk(jwk, trust) {
                Ok(key) if keys.iter().any(|k| k.kid == key.kid) => {
                    skipped.push(format!("{}: duplicate kid", key.kid));
                }
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!(
                    "{}: {why}",
                    jwk.kid.as_deref().unwrap_or("<no kid>")
                )),
            }
        }
        if keys.is_empty() {
            return Err(KeysError::NoUsableKey {
                skipped: skipped.len(),
            });
        }
        Ok(Self {
            keys,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            skipped,
        })
    }

    /// The key whose `kid` equals the token's (compared without allocating).
    pub fn get(&self, kid: JsonStr<'_>) -> Option<&Key> {
        match kid.as_plain() {
            Some(plain) => self.keys.iter().find(|k| k.kid == plain),
            None => self.keys.iter().find(|k| kid.eq_str(&k.kid)),
        }
    }

    /// Cold-path lookup by a plain `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }
}

fn b64(field: &Option<String>, name: &'static str) -> Result<Vec<u8>, String> {
    let text = field.as_deref().ok_or_else(|| format!("{name} missing"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("{name} is not base64url"))
}

fn key_from_jwk(jwk: &Jwk, trust: Trust) -> Result<Key, String> {
    if jwk.has_private_part() {
        return Err("carries a private part; refused".into());
    }
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key".into());
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("key_ops lacks verify".into());
    }
    let kid = jwk
        .kid
        .clone()
        .or_else(|| jwk.thumbprint())
        .ok_or("no kid")?;
    let (alg, material) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("OKP", Some("Ed25519")) => {
            let x: [u8; 32] = b64(&jwk.x, "x")?
                .try_into()
                .map_err(|_| "x is not 32 bytes")?;
            let key = Ed25519Key::from_bytes(&x).ok_or("x is not a curve point of large order")?;
            (Alg::EdDSA, Material::Ed25519(key))
        }
        _ if trust == Trust::Portcullis => {
            return Err("only Ed25519 keys come from Portcullis".into());
        }
        ("RSA", _) => {
            let n = b64(&jwk.n, "n")?;
            let e = b64(&jwk.e, "e")?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8);
            if bits < 2048 {
                return Err("RSA modulus shorter than 2048 bits".into());
            }
            (Alg::Rs256, Material::Rsa { n, e })
        }
        ("EC", Some("P-256")) => {
            let x = b64(&jwk.x, "x")?;
            let y = b64(&jwk.y, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Alg::Es256, Material::P256(point))
        }
        (kty, crv) => return Err(format!("unsupported key type {kty}/{}", crv.unwrap_or("-"))),
    };
    if let Some(declared) = jwk.alg.as_deref().filter(|d| *d != alg.as_str()) {
        return Err(format!("alg {declared} is not supported for this key"));
    }
    Ok(Key { kid, alg, material })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwks(keys: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn ed_jwk() -> serde_json::Value {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        serde_json::to_value(Jwk::ed25519(sk.verifying_key().as_bytes())).unwrap()
    }

    #[test]
    fn loads_ed25519_and_pins_alg() {
        let set =
            KeySet::from_jwks(&jwks(serde_json::json!([ed_jwk()])), Trust::Portcullis).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.keys[0].alg(), Alg::EdDSA);
    }

    #[test]
    fn refuses_private_parts_and_empty_sets() {
        let mut private = ed_jwk();
        private["d"] = "AAAA".into();
        let err =
            KeySet::from_jwks(&jwks(serde_json::json!([private])), Trust::Portcullis).unwrap_err();
        assert!(matches!(err, KeysError::NoUsableKey { skipped: 1 }));
        assert!(KeySet::from_jwks(&jwks(serde_json::json!([])), Trust::Portcullis).is_err());
        assert!(KeySet::from_jwks(b"{\"keys\":", Trust::Portcullis).is_err());
        assert!(KeySet::from_jwks(b"null", Trust::Portcullis).is_err());
    }

    #[test]
    fn refuses_small_order_and_foreign_keys_from_portcullis() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = serde_json::json!({"kty":"OKP","crv":"Ed25519","kid":"w","x": URL_SAFE_NO_PAD.encode(identity)});
        let hs = serde_json::json!({"kty":"oct","kid":"h","k":"c2VjcmV0"});
        let ec = serde_json::json!({"kty":"EC","crv":"P-256","kid":"e","x":"AA","y":"AA"});
        let set = KeySet::from_jwks(
            &jwks(serde_json::json!([weak, hs, ec, ed_jwk()])),
            Trust::Portcullis,
        )
        .unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped().len(), 3);
    }

    #[test]
    fn mismatched_declared_alg_is_skipped_and_duplicates_dropped() {
        let mut wrong = ed_jwk();
        wrong["alg"] = "HS256".into();
        wrong["kid"] = "other".into();
        let set = KeySet::from_jwks(
            &jwks(serde_json::json!([ed_jwk(), ed_jwk(), wrong])),
            Trust::Foreign,
        )
        .unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped().len(), 2);
    }

    fn dalek_strict(a: &[u8; 32], m: &[u8], s: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(a).is_ok_and(|vk| {
            vk.verify_strict(m, &ed25519_dalek::Signature::from_bytes(s))
                .is_ok()
        })
    }

    /// The hand-written strict checks (with a key's table, and once) agree with ed25519-dalek's `verify_strict` on valid
    /// signatures and on every single-bit corruption of signature and message.
    #[test]
    fn matches_ed25519_dalek_verify_strict() {
        use ed25519_dalek::Signer;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let vk = sk.verifying_key();
        let key = Ed25519Key::from_bytes(vk.as_bytes()).unwrap();
        for len in [0usize, 1, 33, 200] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sig = sk.sign(&msg).to_bytes();
            let mut cases = vec![(msg.clone(), sig)];
            for bit in (0..512).step_by(7) {
                let mut s = sig;
                s[bit / 8] ^= 1 << (bit % 8);
                cases.push((msg.clone(), s));
            }
            if len > 0 {
                let mut m = msg.clone();
                m[0] ^= 1;
                cases.push((m, sig));
            }
            for (m, s) in cases {
                let dalek = dalek_strict(vk.as_bytes(), &m, &s);
                assert_eq!(key.verify_strict(&m, &s), dalek, "len {len}");
                assert_eq!(
                    ed25519_verify_strict_once(vk.as_bytes(), &m, &s),
                    dalek,
                    "once, len {len}"
                );
            }
        }
    }

    /// Signatures built by hand where strictness matters: keys with a torsion component,
    /// `R` of small or mixed order, `R` and `S` in non-canonical encodings. Every case gets
    /// the same answer as `verify_strict`, and the valid ones are accepted.
    #[test]
    fn crafted_edge_cases_match_verify_strict() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::edwards::EdwardsPoint;
        let b = ED25519_BASEPOINT_POINT;
        let secret = Scalar::from_bytes_mod_order([3u8; 32]);
        let challenge = |r: &[u8; 32], a: &[u8; 32], m: &[u8]| {
            let h: [u8; 64] = Sha512::new()
                .chain_update(r)
                .chain_update(a)
                .chain_update(m)
                .finalize()
                .into();
            Scalar::from_bytes_mod_order_wide(&h)
        };
        // y = 1 + p: a non-canonical encoding of the identity.
        let mut identity_noncanonical = [0xffu8; 32];
        identity_noncanonical[0] = 0xee;
        identity_noncanonical[31] = 0x7f;
        let l_bytes = (Scalar::ZERO - Scalar::ONE).to_bytes(); // L - 1
        let (mut accepted, mut cases) = (0, 0);
        for torsion in EIGHT_TORSION {
            let point: EdwardsPoint = b * secret + torsion;
            let a = point.compress().to_bytes();
            let Some(key) = Ed25519Key::from_bytes(&a) else {
                continue;
            };
            for m in [&b""[..], b"m", b"another message of some length"] {
                let mut sigs: Vec<[u8; 64]> = Vec::new();
                for r_point in [
                    b * Scalar::from(7u64),
                    b * Scalar::from(7u64) + EIGHT_TORSION[1],
                    EdwardsPoint::default(),
                    EIGHT_TORSION[2],
                ] {
                    let r = r_point.compress().to_bytes();
                    let k = challenge(&r, &a, m);
                    // S = r + k*a for R = [7]B (+ T): valid when the torsion cancels.
                    let s = Scalar::from(7u64) + k * secret;
                    let mut sig = [0u8; 64];
                    sig[..32].copy_from_slice(&r);
                    sig[32..].copy_from_slice(&s.to_bytes());
                    sigs.push(sig);
                    // S + L: the same scalar, non-canonical.
                    let mut big = sig;
                    let mut carry = 0u16;
                    let l_plus_one = (Scalar::ONE).to_bytes();
                    for i in 0..32 {
                        let v = u16::from(big[32 + i])
                            + u16::from(l_bytes[i])
                            + u16::from(l_plus_one[i])
                            + carry;
                        big[32 + i] = v as u8;
                        carry = v >> 8;
                    }
                    sigs.push(big);
                }
                // The identity as R in its non-canonical encoding, with S = k*a.
                let k = challenge(&identity_noncanonical, &a, m);
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&identity_noncanonical);
                sig[32..].copy_from_slice(&(k * secret).to_bytes());
                sigs.push(sig);
                for sig in sigs {
                    let ours = key.verify_strict(m, &sig);
                    assert_eq!(ours, dalek_strict(&a, m, &sig), "{torsion:?} {m:?}");
                    assert_eq!(ed25519_verify_strict_once(&a, m, &sig), ours, "once");
                    accepted += usize::from(ours);
                    cases += 1;
                }
            }
        }
        assert!(accepted > 0 && accepted < cases, "{accepted} of {cases}");
    }

    #[test]
    fn generations_increase() {
        let doc = jwks(serde_json::json!([ed_jwk()]));
        let a = KeySet::from_jwks(&doc, Trust::Portcullis).unwrap();
        let b = KeySet::from_jwks(&doc, Trust::Portcullis).unwrap();
        assert!(b.generation() > a.generation() && a.generation() > 0);
    }
}
