//! The contract's machine-readable error codes (API.md §1, §3, §4) and their HTTP statuses.
//!
//! One enum for both binaries so a code is spelled once. Each binary maps these to its
//! problem+json body in exactly one place.

use std::fmt;

/// A stable error code from API.md. `as_str` is the wire form (`code` in problem+json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // General (§1)
    InvalidRequest,
    PayloadTooLarge,
    NotFound,
    RateLimited,
    Unavailable,
    Internal,
    // Tokens at the verifier (§4) and the control plane's /verify (§3)
    MissingToken,
    TokenExpired,
    InvalidSignature,
    UnknownKey,
    TokenRevoked,
    InvalidAudience,
    InvalidIssuer,
    NotYetValid,
    InvalidToken,
    /// Route policy denied an authenticated caller (verifier 403).
    Forbidden,
    // Control plane (§3)
    InvalidCredentials,
    OwnerExists,
    AppExists,
    AppNotFound,
    UserExists,
    WeakPassword,
    UserDisabled,
    InvalidRefreshToken,
    RefreshTokenReused,
    TokenExpiredOrUsed,
    CaptchaRequired,
    CaptchaInvalid,
    /// A one-time code (TOTP, SMS or email code, recovery code) that is wrong, expired,
    /// already used, or past its attempts.
    InvalidCode,
    /// The `mfa_token` of a login step-up is unknown, expired, used or past its attempts.
    InvalidMfaToken,
    MfaAlreadyEnabled,
    RoleExists,
    /// A social sign-in whose `state` is missing, unknown, expired, used, or was started
    /// in another browser.
    InvalidState,
    /// The provider identity is already linked to another user.
    IdentityLinked,
    // DPoP (RFC 9449 §7.1, §8): both binaries
    /// A DPoP proof is missing, malformed, does not match the request or the token's key,
    /// or was seen before; also a DPoP-bound token presented as `Bearer`.
    InvalidDpopProof,
    /// The control plane wants its `DPoP-Nonce` in the proof (sent with this answer).
    UseDpopNonce,
}

impl ErrorCode {
    /// Every code in declaration order (so `code as usize` indexes it), for tests and
    /// for pre-registering metrics.
    pub const ALL: [ErrorCode; 36] = [
        Self::InvalidRequest,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::MissingToken,
        Self::TokenExpired,
        Self::InvalidSignature,
        Self::UnknownKey,
        Self::TokenRevoked,
        Self::InvalidAudience,
        Self::InvalidIssuer,
        Self::NotYetValid,
        Self::InvalidToken,
        Self::Forbidden,
        Self::InvalidCredentials,
        Self::OwnerExists,
        Self::AppExists,
        Self::AppNotFound,
        Self::UserExists,
        Self::WeakPassword,
        Self::UserDisabled,
        Self::InvalidRefreshToken,
        Self::RefreshTokenReused,
        Self::TokenExpiredOrUsed,
        Self::CaptchaRequired,
        Self::CaptchaInvalid,
        Self::InvalidCode,
        Self::InvalidMfaToken,
        Self::MfaAlreadyEnabled,
        Self::RoleExists,
        Self::InvalidState,
        Self::IdentityLinked,
        Self::InvalidDpopProof,
        Self::UseDpopNonce,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal_error",
            Self::MissingToken => "missing_token",
            Self::TokenExpired => "token_expired",
            Self::InvalidSignature => "invalid_signature",
            Self::UnknownKey => "unknown_key",
            Self::TokenRevoked => "token_revoked",
            Self::InvalidAudience => "invalid_audience",
            Self::InvalidIssuer => "invalid_issuer",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidToken => "invalid_token",
            Self::Forbidden => "forbidden",
            Self::InvalidCredentials => "invalid_credentials",
            Self::OwnerExists => "owner_exists",
            Self::AppExists => "app_exists",
            Self::AppNotFound => "app_not_found",
            Self::UserExists => "user_exists",
            Self::WeakPassword => "weak_password",
            Self::UserDisabled => "user_disabled",
            Self::InvalidRefreshToken => "invalid_refresh_token",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::TokenExpiredOrUsed => "token_expired_or_used",
            Self::CaptchaRequired => "captcha_required",
            Self::CaptchaInvalid => "captcha_invalid",
            Self::InvalidCode => "invalid_code",
            Self::InvalidMfaToken => "invalid_mfa_token",
            Self::MfaAlreadyEnabled => "mfa_already_enabled",
            Self::RoleExists => "role_exists",
            Self::InvalidState => "invalid_state",
            Self::IdentityLinked => "identity_linked",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
        }
    }

    /// The HTTP status the contract pairs with this code.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequest
            | Self::CaptchaRequired
            | Self::CaptchaInvalid
            | Self::InvalidState
            | Self::UseDpopNonce => 400,
            Self::MissingToken
            | Self::TokenExpired
            | Self::InvalidSignature
            | Self::UnknownKey
            | Self::TokenRevoked
            | Self::InvalidAudience
            | Self::InvalidIssuer
            | Self::NotYetValid
            | Self::InvalidToken
            | Self::InvalidCredentials
            | Self::InvalidRefreshToken
            | Self::RefreshTokenReused
            | Self::InvalidCode
            | Self::InvalidMfaToken
            | Self::InvalidDpopProof => 401,
            Self::Forbidden | Self::UserDisabled => 403,
            Self::NotFound | Self::AppNotFound => 404,
            Self::OwnerExists
            | Self::AppExists
            | Self::UserExists
            | Self::MfaAlreadyEnabled
            | Self::RoleExists
            | Self::IdentityLinked => 409,
            Self::TokenExpiredOrUsed => 410,
            Self::PayloadTooLarge => 413,
            Self::WeakPassword => 422,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// A short human title for the problem document (never carries request data).
    pub const fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "The request is malformed",
            Self::PayloadTooLarge => "The request body is too large",
            Self::NotFound => "Not found",
            Self::RateLimited => "Too many requests",
            Self::Unavailable => "Temporarily unavailable",
            Self::Internal => "Internal error",
            Self::MissingToken => "No access token was presented",
            Self::TokenExpired => "The access token has expired",
            Self::InvalidSignature => "The access token's signature is invalid",
            Self::UnknownKey => "The access token was signed by an unknown key",
            Self::TokenRevoked => "The access token has been revoked",
            Self::InvalidAudience => "The access token is not meant for this audience",
            Self::InvalidIssuer => "The access token comes from an untrusted issuer",
            Self::NotYetValid => "The access token is not valid yet",
            Self::InvalidToken => "The access token is malformed or not acceptable",
            Self::Forbidden => "Access to this route is not allowed",
            Self::InvalidCredentials => "Invalid credentials",
            Self::OwnerExists => "An owner with this email already exists",
            Self::AppExists => "An application with this name already exists",
            Self::AppNotFound => "Application not found",
            Self::UserExists => "A user with this email already exists",
            Self::WeakPassword => "The password is too weak",
            Self::UserDisabled => "The user is disabled or expired",
            Self::InvalidRefreshToken => "The refresh token is invalid or expired",
            Self::RefreshTokenReused => "The refresh token was already used",
            Self::TokenExpiredOrUsed => "The token has expired or was already used",
            Self::CaptchaRequired => "A CAPTCHA response is required",
            Self::CaptchaInvalid => "The CAPTCHA response was refused",
            Self::InvalidCode => "The code is wrong, expired or already used",
            Self::InvalidMfaToken => "The MFA token is invalid, expired or already used",
            Self::MfaAlreadyEnabled => "This factor is already enabled",
            Self::RoleExists => "A role with this name already exists",
            Self::InvalidState => "The sign-in state is missing, expired or from another browser",
            Self::IdentityLinked => "This identity is already linked to another user",
            Self::InvalidDpopProof => "The DPoP proof is missing or not acceptable",
            Self::UseDpopNonce => "The DPoP proof must carry the server's nonce",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_errors() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!((400..600).contains(&code.status()));
        }
    }

    #[test]
    fn all_lists_codes_in_declaration_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code}");
        }
    }

    #[test]
    fn contract_pairs() {
        assert_eq!(ErrorCode::TokenRevoked.status(), 401);
        assert_eq!(ErrorCode::Forbidden.status(), 403);
        assert_eq!(ErrorCode::RateLimited.status(), 429);
        assert_eq!(ErrorCode::WeakPassword.status(), 422);
        assert_eq!(
            ErrorCode::TokenExpiredOrUsed.as_str(),
            "token_expired_or_used"
        );
    }
}
