//! Password rules checked before any hashing (OWASP ASVS 5 §6.2): 8..=128 characters, no
//! NUL, not one of the most common passwords, not the account's own email or username.

use portcullis_common::ErrorCode;

use crate::domain::settings::{MAX_PASSWORD_CHARS, PasswordPolicy};
use crate::error::ApiError;

/// The most common passwords of at least 8 characters in public breach corpora (top of
/// the SecLists "10k most common" list), compared case-insensitively.
const COMMON: &[&str] = &[
    "password",
    "12345678",
    "123456789",
    "1234567890",
    "qwertyuiop",
    "password1",
    "password123",
    "iloveyou",
    "11111111",
    "00000000",
    "12341234",
    "1q2w3e4r",
    "1qaz2wsx",
    "qwerty123",
    "qwertyui",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "abcd1234",
    "abc12345",
    "superman",
    "trustno1",
    "starwars",
    "computer",
    "michelle",
    "jennifer",
    "corvette",
    "mercedes",
    "whatever",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "letmein1",
    "zaq12wsx",
    "1234qwer",
    "qwer1234",
    "88888888",
    "87654321",
    "11223344",
    "asdfghjk",
    "asdfasdf",
    "q1w2e3r4",
    "qazwsxedc",
    "123qweasd",
    "1qazxsw2",
    "changeme",
    "internet",
    "maverick",
    "samantha",
    "danielle",
    "charlie1",
    "dragon12",
    "monkey12",
    "football1",
    "baseball1",
    "12qwaszx",
    "administrator",
    "admin123",
    "welcome123",
    "password12",
    "password!",
    "iloveyou1",
    "qwertyuiop123",
    "123123123",
    "1234567891",
    "999999999",
    "987654321",
    "147258369",
    "asdfghjkl",
    "zxcvbnm1",
    "q1w2e3r4t5",
    "1q2w3e4r5t",
    "a1b2c3d4",
    "aaaaaaaa",
    "abcdefgh",
    "abcdefg1",
    "secret123",
    "letmein123",
    "summer2024",
    "winter2024",
    "spring2024",
    "autumn2024",
    "summer2025",
    "winter2025",
    "portcullis",
];

/// A new password acceptable under `policy`, or `422 weak_password` / `400 invalid_request`.
pub fn check_new(
    password: &str,
    policy: &PasswordPolicy,
    identifiers: &[&str],
) -> Result<(), ApiError> {
    check_shape(password)?;
    let chars = password.chars().count();
    if chars < policy.min_length {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            format!(
                "the password must have at least {} characters",
                policy.min_length
            ),
        ));
    }
    let lowered = password.to_lowercase();
    if policy.reject_common && COMMON.contains(&lowered.as_str()) {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            "the password is one of the most common passwords",
        ));
    }
    if identifiers
        .iter()
        .any(|id| !id.is_empty() && lowered == id.to_lowercase())
    {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            "the password must not be the account's email or username",
        ));
    }
    Ok(())
}

/// Limits every presented password obeys, checked before hashing so a megabyte of input
/// never reaches Argon2.
pub fn check_shape(password: &str) -> Result<(), ApiError> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::bad_request(
            "the password must have at most 128 characters",
        ));
    }
    if password.contains('\0') {
        return Err(ApiError::bad_request("the password must not contain NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(password: &str) -> Option<ErrorCode> {
        check_new(password, &PasswordPolicy::default(), &["ann@example.com"])
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn rules() {
        assert_eq!(code("correct horse battery"), None);
        assert_eq!(code("short"), Some(ErrorCode::WeakPassword));
        assert_eq!(code("Password123"), Some(ErrorCode::WeakPassword));
        assert_eq!(code("ANN@example.com"), Some(ErrorCode::WeakPassword));
        assert_eq!(code(&"x".repeat(129)), Some(ErrorCode::InvalidRequest));
        assert_eq!(code(&"é".repeat(128)), None);
        assert_eq!(code("abc\0defghij"), Some(ErrorCode::InvalidRequest));
        assert!(
            COMMON.iter().all(|p| p.chars().count() >= 8),
            "list is lowercase 8+"
        );
    }
}
