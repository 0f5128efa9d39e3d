//! TOTP, one-time codes and recovery codes, against their rules.
#![allow(clippy::unwrap_used)]

use super::*;

/// RFC 6238 appendix B, SHA-1 rows (the 20-byte ASCII secret "12345678901234567890"),
/// with the eight digits the RFC prints.
#[test]
fn rfc6238_appendix_b() {
    let totp = TOTP::new(
        Algorithm::SHA1,
        8,
        0,
        30,
        b"12345678901234567890".to_vec(),
        None,
        String::new(),
    )
    .unwrap();
    for (t, expected) in [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(totp.generate(t), expected, "T = {t}");
    }
}

#[test]
fn steps_within_one_either_side_only() {
    let totp = totp_of(b"12345678901234567890".to_vec(), "Shop", "ann").unwrap();
    let now = 1_111_111_111;
    let code_at = |t: i64| totp.generate(t as u64);
    assert_eq!(totp_step(&totp, &code_at(now), now), Some(now / 30));
    assert_eq!(
        totp_step(&totp, &code_at(now - 30), now),
        Some(now / 30 - 1)
    );
    assert_eq!(
        totp_step(&totp, &code_at(now + 30), now),
        Some(now / 30 + 1)
    );
    assert_eq!(totp_step(&totp, &code_at(now - 60), now), None);
    assert_eq!(totp_step(&totp, &code_at(now + 60), now), None);
    assert_eq!(totp_step(&totp, "12345", now), None);
    assert_eq!(totp_step(&totp, "abcdef", now), None);
}

#[test]
fn otpauth_uri_is_what_authenticator_apps_read() {
    let totp = totp_of(
        b"12345678901234567890".to_vec(),
        "My:Shop",
        "ann@example.com",
    )
    .unwrap();
    let uri = totp.get_url();
    assert!(
        uri.starts_with("otpauth://totp/My%20Shop:ann%40example.com?secret="),
        "{uri}"
    );
    assert!(uri.contains("issuer=My%20Shop"), "{uri}");
    assert_eq!(totp.get_secret_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
}

#[test]
fn recovery_codes_normalize() {
    assert_eq!(normalize_recovery("ABCDE-fghjk"), "abcdefghjk");
    assert_eq!(normalize_recovery(" abcde fghjk "), "abcdefghjk");
    let code = recovery_code();
    assert_eq!(normalize_recovery(&code).len(), 10);
}
