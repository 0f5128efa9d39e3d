//! Password rules checked before any hashing (OWASP ASVS 5 §6.2): 8..=128 characters, no
//! NUL, not one of the most common passwords, not the account's own email or username.

use crate::domain::settings::{MAX_PASSWORD_CHARS, PasswordPolicy};

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

/// Why a password was refused.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Well formed, but too weak for the policy (`weak_password`).
    #[error("{0}")]
    Weak(String),
    /// Not a password we take at all (too long, NUL).
    #[error("{0}")]
    Malformed(&'static str),
}

/// A new password acceptable under `policy`.
pub fn check_new(
    password: &str,
    policy: &PasswordPolicy,
    identifiers: &[&str],
) -> Result<(), PasswordError> {
    check_shape(password)?;
    let chars = password.chars().count();
    if chars < policy.min_length {
        return Err(PasswordError::Weak(format!(
            "the password must have at least {} characters",
            policy.min_length
        )));
    }
    let lowered = password.to_lowercase();
    if policy.reject_common && COMMON.contains(&lowered.as_str()) {
        return Err(PasswordError::Weak(
            "the password is one of the most common passwords".into(),
        ));
    }
    if identifiers
        .iter()
        .any(|id| !id.is_empty() && lowered == id.to_lowercase())
    {
        return Err(PasswordError::Weak(
            "the password must not be the account's email or username".into(),
        ));
    }
    Ok(())
}

/// Limits every presented password obeys, checked before hashing so a megabyte of input
/// never reaches Argon2.
pub fn check_shape(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(PasswordError::Malformed(
            "the password must have at most 128 characters",
        ));
    }
    if password.contains('\0') {
        return Err(PasswordError::Malformed(
            "the password must not contain NUL",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Some("weak")` or `Some("malformed")` when refused.
    fn refused(password: &str) -> Option<&'static str> {
        match check_new(password, &PasswordPolicy::default(), &["ann@example.com"]) {
            Ok(()) => None,
            Err(PasswordError::Weak(_)) => Some("weak"),
            Err(PasswordError::Malformed(_)) => Some("malformed"),
        }
    }

    #[test]
    fn rules() {
        assert_eq!(refused("correct horse battery"), None);
        assert_eq!(refused("short"), Some("weak"));
        assert_eq!(refused("Password123"), Some("weak"));
        assert_eq!(refused("ANN@example.com"), Some("weak"));
        assert_eq!(refused(&"x".repeat(129)), Some("malformed"));
        assert_eq!(refused(&"é".repeat(128)), None);
        assert_eq!(refused("abc\0defghij"), Some("malformed"));
        assert!(
            COMMON.iter().all(|p| p.chars().count() >= 8),
            "list is lowercase 8+"
        );
    }
}
