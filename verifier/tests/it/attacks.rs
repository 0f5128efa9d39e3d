//! Every rejection of RFC 8725 and the issue's attack list, against the verify core.

use portcullis_common::ErrorCode;
use portcullis_verifier::core::{Revocations, Scratch, Snapshot, Verifier};
use serde_json::json;

use crate::support::*;

fn check(v: &Verifier, snap: &Snapshot, token: &str, now: i64) -> Result<(), ErrorCode> {
    let mut scratch = Scratch::default();
    v.verify(token.as_bytes(), now, snap, &mut scratch)
        .map(|_| ())
        .map_err(|r| r.code)
}

fn expect(token: &str, code: ErrorCode) {
    let key = signing_key(1);
    assert_eq!(
        check(&verifier(), &snapshot(&[&key]), token, NOW),
        Err(code),
        "token {token}"
    );
}

#[test]
fn a_good_token_verifies_and_exposes_claims() {
    let key = signing_key(1);
    let snap = snapshot(&[&key]);
    let v = verifier();
    let mut scratch = Scratch::default();
    let token = good_token(&key);
    let ok = v
        .verify(token.as_bytes(), NOW, &snap, &mut scratch)
        .unwrap();
    assert!(!ok.cached);
    assert_eq!(ok.identity.sub(), Some(SUB));
    assert_eq!(ok.identity.roles().collect::<Vec<_>>(), ["admin", "ops"]);
    let claims: serde_json::Value = serde_json::from_str(ok.payload.unwrap()).unwrap();
    assert_eq!(claims["sid"], SID);
    let first = format!("{:?}", ok.identity);
    let again = v
        .verify(token.as_bytes(), NOW, &snap, &mut scratch)
        .unwrap();
    assert!(again.cached, "second sight is a cache hit");
    assert_eq!(format!("{:?}", again.identity), first, "the same identity");
    assert!(again.payload.is_none(), "a hit decodes nothing");
    let with_payload = v
        .verify_with_payload(token.as_bytes(), NOW, &snap, &mut scratch)
        .unwrap();
    assert!(with_payload.cached);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(with_payload.payload.unwrap()).unwrap(),
        claims
    );
}

#[test]
fn alg_none_in_any_case_is_refused() {
    let key = signing_key(1);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "at+jwt", "kid": kid(&key)});
        let unsigned = format!(
            "{}.{}.",
            b64(h.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        expect(&unsigned, ErrorCode::InvalidToken);
        expect(&mint(&key, &h, &claims()), ErrorCode::InvalidToken);
    }
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    use ring::hmac;
    let key = signing_key(1);
    let h = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid(&key)});
    let input = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    for secret in [
        key.verifying_key().as_bytes().to_vec(),
        jwks_of(&[&key]).into_bytes(),
    ] {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        expect(
            &format!("{input}.{}", b64(tag.as_ref())),
            ErrorCode::InvalidToken,
        );
    }
}

#[test]
fn unknown_kid_wrong_key_and_tampering() {
    let trusted = signing_key(1);
    let attacker = signing_key(2);
    expect(&good_token(&attacker), ErrorCode::UnknownKey);
    let mut no_kid = header(&trusted);
    no_kid.as_object_mut().unwrap().remove("kid");
    expect(&mint(&trusted, &no_kid, &claims()), ErrorCode::UnknownKey);
    // Same kid as the trusted key, signed by another key.
    expect(
        &mint(&attacker, &header(&trusted), &claims()),
        ErrorCode::InvalidSignature,
    );
    // Payload swapped under a valid signature.
    let good = good_token(&trusted);
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims();
    evil["roles"] = json!(["superuser"]);
    expect(
        &format!(
            "{}.{}.{}",
            parts[0],
            b64(evil.to_string().as_bytes()),
            parts[2]
        ),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn header_key_hints_are_never_trusted() {
    let trusted = signing_key(1);
    let attacker = signing_key(2);
    let attacker_jwk = serde_json::to_value(portcullis_common::jwk::Jwk::ed25519(
        attacker.verifying_key().as_bytes(),
    ))
    .unwrap();
    for (name, value) in [
        ("jwk", attacker_jwk),
        ("jku", json!("http://127.0.0.1:1/jwks.json")),
        ("x5u", json!("http://127.0.0.1:1/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut h = header(&attacker);
        h[name] = value.clone();
        expect(&mint(&attacker, &h, &claims()), ErrorCode::UnknownKey);
        let mut h = header(&trusted);
        h[name] = value;
        expect(&mint(&attacker, &h, &claims()), ErrorCode::InvalidSignature);
    }
}

#[test]
fn crit_cty_and_duplicate_members_are_refused() {
    let key = signing_key(1);
    for extra in [
        json!({"crit": ["exp"], "exp": 1}),
        json!({"crit": []}),
        json!({"cty": "JWT"}),
        json!({"cty": "jwt"}),
    ] {
        let mut h = header(&key);
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        expect(&mint(&key, &h, &claims()), ErrorCode::InvalidToken);
    }
    let k = kid(&key);
    let dup_header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{k}","alg":"EdDSA"}}"#);
    expect(
        &sign_raw(&key, dup_header.as_bytes(), claims().to_string().as_bytes()),
        ErrorCode::InvalidToken,
    );
    let body = claims().to_string();
    let dup_claims = format!(r#"{},"sub":"someone-else"}}"#, &body[..body.len() - 1]);
    expect(
        &sign_raw(
            &key,
            header(&key).to_string().as_bytes(),
            dup_claims.as_bytes(),
        ),
        ErrorCode::InvalidToken,
    );
    let dup_unknown = format!(r#"{},"x":1,"x":2}}"#, &body[..body.len() - 1]);
    expect(
        &sign_raw(
            &key,
            header(&key).to_string().as_bytes(),
            dup_unknown.as_bytes(),
        ),
        ErrorCode::InvalidToken,
    );
}

/// Re-signs `header.payload` as given, so only the encoding can be at fault.
fn signed_segments(key: &ed25519_dalek::SigningKey, header: &str, payload: &str) -> String {
    use ed25519_dalek::Signer;
    let input = format!("{header}.{payload}");
    format!("{input}.{}", b64(&key.sign(input.as_bytes()).to_bytes()))
}

#[test]
fn padded_and_non_canonical_base64_is_refused() {
    let key = signing_key(1);
    let h = b64(header(&key).to_string().as_bytes());
    let p = b64(claims().to_string().as_bytes());
    assert_eq!(
        check(
            &verifier(),
            &snapshot(&[&key]),
            &signed_segments(&key, &h, &p),
            NOW
        ),
        Ok(())
    );
    let variants = |seg: &str| {
        let mut out = vec![
            format!("{seg}="),
            format!("{seg}=="),
            format!(" {seg}"),
            format!("{}\n{}", &seg[..4], &seg[4..]),
        ];
        let std_alphabet = seg.replace('_', "/").replace('-', "+");
        if std_alphabet != seg {
            out.push(std_alphabet);
        }
        out
    };
    for bad in variants(&h) {
        expect(&signed_segments(&key, &bad, &p), ErrorCode::InvalidToken);
    }
    for bad in variants(&p) {
        expect(&signed_segments(&key, &h, &bad), ErrorCode::InvalidToken);
    }
    // A payload whose last character carries non-zero trailing bits decodes to the same
    // bytes in lax decoders; here it must be refused.
    let mut json = claims().to_string();
    while json.len() % 3 != 1 {
        json.push(' '); // whitespace after the object is valid JSON
    }
    let canonical = b64(json.as_bytes());
    assert_eq!(
        check(
            &verifier(),
            &snapshot(&[&key]),
            &signed_segments(&key, &h, &canonical),
            NOW
        ),
        Ok(())
    );
    let last = canonical.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    assert_eq!(idx & 0b1111, 0, "one trailing byte leaves 4 zero bits");
    let tweaked = format!(
        "{}{}",
        &canonical[..canonical.len() - 1],
        &alphabet[idx + 1..idx + 2]
    );
    expect(
        &signed_segments(&key, &h, &tweaked),
        ErrorCode::InvalidToken,
    );

    // The signature: padding, whitespace, and non-canonical trailing bits.
    let good = signed_segments(&key, &h, &p);
    let sig = good.rsplit('.').next().unwrap();
    for bad in [format!("{sig}="), format!("{sig}=="), format!(" {sig}")] {
        expect(&format!("{h}.{p}.{bad}"), ErrorCode::InvalidSignature);
    }
    let last = sig.chars().last().unwrap();
    let idx = alphabet.find(last).unwrap();
    assert_eq!(idx & 0b1111, 0, "86 characters carry 4 trailing zero bits");
    let noncanonical = format!("{}{}", &sig[..sig.len() - 1], &alphabet[idx + 1..idx + 2]);
    expect(
        &format!("{h}.{p}.{noncanonical}"),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn malleable_s_and_truncated_signatures_are_refused() {
    use base64::Engine;
    let key = signing_key(1);
    let good = good_token(&key);
    let (input, sig) = good.rsplit_once('.').unwrap();
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    // S + L: the same point equation holds, lax verifiers accept it; verify_strict must not.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = bytes[32 + i] as u16 + L[i] as u16 + carry;
        bytes[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    expect(
        &format!("{input}.{}", b64(&bytes)),
        ErrorCode::InvalidSignature,
    );
    expect(
        &format!("{input}.{}", &sig[..sig.len() - 4]),
        ErrorCode::InvalidSignature,
    );
    expect(
        &format!("{input}.{}", b64(&bytes[..63])),
        ErrorCode::InvalidSignature,
    );
    expect(
        &format!("{input}.{}", b64(&[0u8; 64])),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn small_order_keys_never_load() {
    // All eight small-order points of edwards25519 (compressed), as published keys.
    let small = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    ];
    for hex in small {
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let jwks =
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "weak", "x": b64(&bytes)}]});
        let res = portcullis_verifier::core::KeySet::from_jwks(
            jwks.to_string().as_bytes(),
            portcullis_verifier::core::Trust::Portcullis,
        );
        assert!(res.is_err(), "small-order key {hex} loaded");
    }
}

#[test]
fn segment_counts_and_size_caps() {
    let key = signing_key(1);
    let good = good_token(&key);
    let parts: Vec<&str> = good.split('.').collect();
    expect(&parts[..2].join("."), ErrorCode::InvalidToken);
    expect(&format!("{good}.{}", parts[2]), ErrorCode::InvalidToken);
    expect(
        &format!("{good}.{}.{}", parts[1], parts[2]),
        ErrorCode::InvalidToken,
    );
    expect("", ErrorCode::InvalidToken);
    let mut huge = claims();
    huge["pad"] = json!("x".repeat(9000));
    expect(&mint(&key, &header(&key), &huge), ErrorCode::InvalidToken);
    let mut big_header = header(&key);
    big_header["pad"] = json!("x".repeat(2000));
    expect(&mint(&key, &big_header, &claims()), ErrorCode::InvalidToken);
}

#[test]
fn typ_must_be_an_access_token() {
    let key = signing_key(1);
    for (typ, ok) in [
        (Some("at+jwt"), true),
        (Some("AT+JWT"), true),
        (Some("application/at+jwt"), true),
        (Some("JWT"), false),
        (Some("id_token+jwt"), false),
        (None, false),
    ] {
        let mut h = header(&key);
        match typ {
            Some(t) => h["typ"] = json!(t),
            None => {
                h.as_object_mut().unwrap().remove("typ");
            }
        }
        let res = check(
            &verifier(),
            &snapshot(&[&key]),
            &mint(&key, &h, &claims()),
            NOW,
        );
        assert_eq!(res.is_ok(), ok, "typ {typ:?}");
    }
}

#[test]
fn time_claims_at_their_edges() {
    let key = signing_key(1);
    let snap = snapshot(&[&key]);
    let v = verifier(); // leeway 30 s
    let with = |name: &str, value: serde_json::Value| {
        let mut c = claims();
        c[name] = value;
        mint(&key, &header(&key), &c)
    };
    assert_eq!(check(&v, &snap, &with("exp", json!(NOW - 29)), NOW), Ok(()));
    assert_eq!(
        check(&v, &snap, &with("exp", json!(NOW - 30)), NOW),
        Err(ErrorCode::TokenExpired)
    );
    assert_eq!(check(&v, &snap, &with("nbf", json!(NOW + 30)), NOW), Ok(()));
    assert_eq!(
        check(&v, &snap, &with("nbf", json!(NOW + 31)), NOW),
        Err(ErrorCode::NotYetValid)
    );
    assert_eq!(check(&v, &snap, &with("iat", json!(NOW + 30)), NOW), Ok(()));
    assert_eq!(
        check(&v, &snap, &with("iat", json!(NOW + 31)), NOW),
        Err(ErrorCode::NotYetValid)
    );
    assert_eq!(
        check(&v, &snap, &with("exp", json!(NOW as f64 + 100.5)), NOW),
        Ok(())
    );
    assert_eq!(
        check(&v, &snap, &with("exp", json!("9999999999")), NOW),
        Err(ErrorCode::InvalidToken)
    );
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        check(&v, &snap, &mint(&key, &header(&key), &no_exp), NOW),
        Err(ErrorCode::InvalidToken)
    );
}

#[test]
fn issuer_is_matched_exactly() {
    let key = signing_key(1);
    for (iss, ok) in [
        (json!(ISS), true),
        (json!("https:\\/\\/auth.example.test"), true),
        (json!(format!("{ISS}.evil")), false),
        (json!(format!("{ISS}/")), false),
        (json!(&ISS[..ISS.len() - 1]), false),
        (json!("HTTPS://AUTH.EXAMPLE.TEST"), false),
        (json!([ISS]), false),
    ] {
        let mut c = claims();
        c["iss"] = iss.clone();
        let token = if iss.as_str().is_some_and(|s| s.contains('\\')) {
            let text = c.to_string().replace("https:\\\\/\\\\/", "https:\\/\\/");
            sign_raw(&key, header(&key).to_string().as_bytes(), text.as_bytes())
        } else {
            mint(&key, &header(&key), &c)
        };
        let res = check(&verifier(), &snapshot(&[&key]), &token, NOW);
        assert_eq!(res.is_ok(), ok, "iss {iss}: {res:?}");
    }
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    expect(&mint(&key, &header(&key), &c), ErrorCode::InvalidIssuer);
}

#[test]
fn audience_string_or_array() {
    let key = signing_key(1);
    for (aud, ok) in [
        (json!(AUD), true),
        (json!(["other", AUD]), true),
        (json!("other"), false),
        (json!([]), false),
    ] {
        let mut c = claims();
        c["aud"] = aud.clone();
        let res = check(
            &verifier(),
            &snapshot(&[&key]),
            &mint(&key, &header(&key), &c),
            NOW,
        );
        assert_eq!(
            res.map_err(|e| e == ErrorCode::InvalidAudience),
            if ok { Ok(()) } else { Err(true) },
            "aud {aud}"
        );
    }
}

#[test]
fn revocation_by_session_and_user_cutoff() {
    let key = signing_key(1);
    let token = good_token(&key);
    let v = verifier();
    let mut snap = snapshot(&[&key]);
    assert_eq!(check(&v, &snap, &token, NOW), Ok(()));
    snap.revocations = Revocations::default().with_session(SID, NOW + 900, NOW);
    assert_eq!(
        check(&v, &snap, &token, NOW),
        Err(ErrorCode::TokenRevoked),
        "cached token still revoked"
    );
    snap.revocations = Revocations::default().with_user_cutoff(SUB, NOW - 10, NOW);
    assert_eq!(
        check(&v, &snap, &token, NOW),
        Err(ErrorCode::TokenRevoked),
        "iat == cutoff is revoked"
    );
    snap.revocations = Revocations::default().with_user_cutoff(SUB, NOW - 11, NOW);
    assert_eq!(
        check(&v, &snap, &token, NOW),
        Ok(()),
        "issued after the cutoff"
    );
}

#[test]
fn cache_hits_still_check_expiry_and_keys() {
    let key = signing_key(1);
    let v = verifier();
    let snap = snapshot(&[&key]);
    let token = good_token(&key);
    assert_eq!(check(&v, &snap, &token, NOW), Ok(()));
    assert_eq!(
        check(&v, &snap, &token, NOW + 2000),
        Err(ErrorCode::TokenExpired)
    );
    // The same key published again is a new key set: the cached verdict does not carry over,
    // and a key set without the signer refuses the token outright.
    let other = signing_key(3);
    assert_eq!(
        check(&v, &snapshot(&[&other]), &token, NOW),
        Err(ErrorCode::UnknownKey)
    );
    let mut scratch = Scratch::default();
    let fresh = snapshot(&[&key]);
    assert!(
        !v.verify(token.as_bytes(), NOW, &fresh, &mut scratch)
            .unwrap()
            .cached
    );
}

#[test]
fn forged_payload_with_reused_signature_misses_the_cache() {
    let key = signing_key(1);
    let v = verifier();
    let snap = snapshot(&[&key]);
    let good = good_token(&key);
    assert_eq!(check(&v, &snap, &good, NOW), Ok(()));
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims();
    evil["sub"] = json!("0190a1b2-0000-7000-8000-0000000000ff");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        check(&v, &snap, &forged, NOW),
        Err(ErrorCode::InvalidSignature)
    );
}

#[test]
fn no_keys_means_unavailable() {
    let key = signing_key(1);
    assert_eq!(
        check(&verifier(), &Snapshot::empty(), &good_token(&key), NOW),
        Err(ErrorCode::Unavailable)
    );
}

#[test]
fn tokens_minted_by_jsonwebtoken_verify() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = signing_key(1);
    let der = key.to_pkcs8_der().unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some(kid(&key));
    let token = jsonwebtoken::encode(&h, &claims(), &enc).unwrap();
    let mut scratch = Scratch::default();
    let ok = verifier()
        .verify(token.as_bytes(), NOW, &snapshot(&[&key]), &mut scratch)
        .unwrap();
    assert_eq!(ok.identity.sid(), Some(SID));
}

/// The verified-token cache changes no verdict: a cached verifier, asked about valid
/// tokens and about every single-byte change of them (many times over, at different
/// times and revocation states), answers exactly as a verifier without a cache, and
/// hands out the same identity.
#[test]
fn the_cache_agrees_with_the_uncached_path() {
    let key = signing_key(1);
    let cached = verifier();
    let reference = Verifier::new(cached.settings().clone(), 0);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        mint(&key, &header(&key), &c)
    };
    let valid = [
        good_token(&key),
        with(&|c| c["roles"] = json!(["a,b", "\u{e9}t\u{e9}", "x"])),
        with(&|c| c["scope"] = json!("s1  s2 s3")),
        with(&|c| {
            c.as_object_mut().unwrap().remove("sid");
        }),
        with(&|c| c["sub"] = json!("not-a-uuid")),
        with(&|c| c["roles"] = json!(vec!["r"; 200])), // too long to cache
    ];
    let mut tokens: Vec<String> = valid.to_vec();
    for t in &valid[..2] {
        for i in (0..t.len()).step_by(3) {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            tokens.push(String::from_utf8(b).unwrap());
        }
    }
    let snaps = {
        let plain = snapshot(&[&key]);
        let mut revoked = plain.clone();
        revoked.revocations = Revocations::default()
            .with_session(SID, NOW + 900, NOW)
            .with_user_cutoff("not-a-uuid", NOW, NOW);
        [plain, revoked]
    };
    let verdict = |v: &Verifier, t: &str, now: i64, snap: &Snapshot| {
        let mut scratch = Scratch::default();
        v.verify(t.as_bytes(), now, snap, &mut scratch)
            .map(|ok| format!("{:?}", ok.identity))
            .map_err(|r| r.code)
    };
    let mut hits = 0;
    for round in 0..3 {
        for now in [NOW, NOW + 2000] {
            for snap in &snaps {
                for t in &tokens {
                    let want = verdict(&reference, t, now, snap);
                    assert_eq!(verdict(&cached, t, now, snap), want, "round {round}: {t}");
                    let mut scratch = Scratch::default();
                    hits += cached
                        .verify(t.as_bytes(), now, snap, &mut scratch)
                        .is_ok_and(|v| v.cached) as usize;
                }
            }
        }
    }
    assert!(hits > 0, "the cache was used");
    let mut scratch = Scratch::default();
    let long = &valid[5];
    assert!(
        cached
            .verify(long.as_bytes(), NOW, &snaps[0], &mut scratch)
            .is_ok_and(|v| !v.cached)
    );
}
