//! Keys from a foreign issuer's JWKS (Keycloak, Auth0, ...): RS256 and ES256 verify, each
//! pinned to its own algorithm; the same keys are refused from the Portcullis source.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use portcullis_common::ErrorCode;
use portcullis_verifier::core::{
    KeySet, Revocations, Scratch, Settings, Snapshot, Trust, Verifier,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

use crate::support::*;

/// A throwaway 2048-bit RSA key (PKCS#1 DER), made for this test only.
const TEST_RSA_KEY: &str = "MIIEowIBAAKCAQEA0MKqEIcJLVNAXRBR6HWMMGbeyx0BeyFpFdVUJlJDMabQ6E0oE8jsHsRgoH5G4cmz3/pohi1AKQu1imkw1//tDtp6EsTbTtXoc7SVTD8yOHdBQNOvEQ7sbNZLXOJHdR5lo/oLDqkqdZBtTT6XTii+Y2My3socFRPclvK4R751wF5kMU9VRJeeXllSPc6XvR78oJgaP29I0MxQFAKYKkESqZjI1ifmqdVMXoied+OfWWoDQcl3i0qvSyQXByVxomrw5xkEjiQq8Z9/iz+AVrCA6Sl7o6G3YNLN3U5VXZdyey7vARWxdg/hPbyUUzCs8lEtJ5PUQKvCS4RTBRNNEyXwJQIDAQABAoIBAFjXHuydqughD7kLIvBcZeaLQLELjP/Lfh8OhBsy0umkZi8V9sJEtUd6puxmEOAxqFzfAfBn/W/6Ta2zilfB0C6MB3tJT1NDcQMcjJTAKC0jgx+FdnE5+p9uqu/CVEqhPvwDgwUgNLOHXRyMUHOwnyVIp/Nr63uE0lFixc2yXgYY4KHJ6mAXMnM4F/UVLE6vs6Vo+jKiOBGkdXvBqJhr+XEjD5NlRnXF6duHeY2klRR5KMkp9CLvpuCXfoV/Sict8bvAvvzyRR+nn8nmWn71D+IzqmMriKdM6tJ1FOnaMWFQO0Q0SdpuaO2J7Ux+5/lEj20Bpc0dWNnLqv3ZvO2z+5kCgYEA6QkR9/IhuxqWgS+7PcXodtUtH2NIh+flFsBdq7CpOSC8rt70nu2yMLHLdTge5BmfFPCpcD/QL0Bg7Ki+EwI+uWnmEo5IbOHEb5j+4YGNhNNdjiCP1iCGkDWKcBJf9T3qQE5uAOspJlCaktBrEzMUF0uYJ8365d4egnhCMST+qlMCgYEA5VUxaX5I2dyVwXVYrRwOnBIgZUit16gKRu2Lu8oM4dcrb/x6xFaYtjdUDXajiKnmFsZL35jXIrCyBwVVU7w0SSuheJVjxfmP+94AnxPZ4Eeft3oqwaGd29BWQAcsJq/JvBOkwHh3tTetGHRJIVFqyj9Taqo2eDz3CUe6x2EVXKcCgYAiwRWK8vOQ4gA8OBAmwFNRFa3rFnWEv1LtN7dAmdJDENzS/7Ff2ndOx9VeIAaLYj7VcqbydLHpuiI6aVgfoaAVKvQDJHEsu+b99cVdgGLIwnUbc0PAXY10CGgjGrpw6tD60jeZr3itnCvRZX/ylxWR+9YvaYrXqW7HaoQErE3GvQKBgFjquSfP4OsnjaDeoK0tzbRRiuH6VfzhmGp7u8vpwSjnRl47JFZvxPIRbbNypmFcjmuSIuTk27UFkWELflPjCtq74fVg5rhh1KOxJciH59f/rTt0UJOW2B/cHTTiEwpE6hDUBPLjQnauyZxLqfcTHDaiavNWX5wq9xVQDGk1iRTNAoGBANCxpwQkvudOoLyAuzd3mFSmmD0jNiSaOqd0vzQev9mEhki5oSMQB5xFCOZI7CM/wP/rWIOLH9Uo9fSJYbRBfvQ+CWMPPLtgBURiHXLuQJUyusFO7cDgSqs7TU6rgXPz5vD51BZxLqAkQqUImeg6z5G9eMdr9d1WVJU8Y7vgX5X+";

fn sign_with(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    format!("{input}.{}", b64(&sign(input.as_bytes())))
}

struct Foreign {
    jwks: String,
    rs256: String,
    es256: String,
    /// An ES256-signed token that names the RSA key's kid (algorithm confusion).
    confused: String,
}

fn foreign() -> Foreign {
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::from_der(&STANDARD.decode(TEST_RSA_KEY).unwrap()).unwrap();
    let parts = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = ec.public_key().as_ref(); // 04 || x || y
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(&parts.n), "e": b64(&parts.e)},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])},
        {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": b64(&parts.n), "e": b64(&parts.e)},
    ]})
    .to_string();
    let rsa_sign = |m: &[u8]| {
        let mut sig = vec![0; rsa.public().modulus_len()];
        rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut sig)
            .unwrap();
        sig
    };
    let ec_sign = |m: &[u8]| ec.sign(&rng, m).unwrap().as_ref().to_vec();
    Foreign {
        rs256: sign_with("RS256", "rsa-1", rsa_sign),
        es256: sign_with("ES256", "ec-1", ec_sign),
        confused: sign_with("ES256", "rsa-1", ec_sign),
        jwks,
    }
}

fn check(snapshot: &Snapshot, token: &str) -> Result<(), ErrorCode> {
    // A foreign issuer's access tokens often say typ "JWT": this deployment accepts any typ.
    let v = Verifier::new(
        Settings {
            issuers: vec![ISS.into()],
            audiences: vec![AUD.into()],
            leeway_secs: 30,
            typs: vec![],
        },
        64,
    );
    let mut scratch = Scratch::default();
    v.verify(token.as_bytes(), NOW, snapshot, &mut scratch)
        .map(|_| ())
        .map_err(|r| r.code)
}

#[test]
fn rs256_and_es256_from_a_foreign_jwks() {
    let f = foreign();
    let keys = KeySet::from_jwks(f.jwks.as_bytes(), Trust::Foreign).unwrap();
    assert_eq!(keys.len(), 2, "the encryption key is skipped");
    let snap = Snapshot {
        keys: Arc::new(keys),
        revocations: Revocations::default(),
        version: 0,
    };
    assert_eq!(check(&snap, &f.rs256), Ok(()));
    assert_eq!(check(&snap, &f.es256), Ok(()));
    assert_eq!(
        check(&snap, &f.confused),
        Err(ErrorCode::InvalidToken),
        "alg pinned by the key"
    );
    let (input, _) = f.rs256.rsplit_once('.').unwrap();
    assert_eq!(
        check(&snap, &format!("{input}.{}", b64(&[7u8; 256]))),
        Err(ErrorCode::InvalidSignature)
    );
}

#[test]
fn foreign_key_types_are_refused_from_portcullis() {
    let f = foreign();
    assert!(KeySet::from_jwks(f.jwks.as_bytes(), Trust::Portcullis).is_err());
}

#[test]
fn short_rsa_keys_are_refused() {
    let jwks =
        json!({"keys": [{"kty": "RSA", "kid": "short", "n": b64(&[0xc5; 128]), "e": "AQAB"}]});
    assert!(KeySet::from_jwks(jwks.to_string().as_bytes(), Trust::Foreign).is_err());
}
