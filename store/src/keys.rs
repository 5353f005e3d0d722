//! Key rules shared by both backends: the NATS key alphabet, prefixes and safe encodings
//! for user input.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Longest key accepted (NATS subjects stay well below server limits).
pub const MAX_KEY_LEN: usize = 512;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("invalid key {0:?}: keys are dot-separated tokens of [-/_=a-zA-Z0-9]")]
    Key(String),
    #[error("invalid prefix {0:?}: a prefix is empty or whole tokens ending with '.'")]
    Prefix(String),
    #[error("invalid token {0:?}: a token is one non-empty run of [-_=a-zA-Z0-9]")]
    Token(String),
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=')
}

/// A key is one or more non-empty tokens of `[-/_=a-zA-Z0-9]` joined by `.`.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .split('.')
            .all(|token| !token.is_empty() && token.chars().all(allowed));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Key(key.to_string()))
    }
}

/// A prefix is empty (everything) or a valid key followed by `.` (whole tokens only, so it
/// maps onto a subject wildcard).
pub fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('.') {
        Some(head) if validate_key(head).is_ok() => Ok(()),
        _ => Err(KeyError::Prefix(prefix.to_string())),
    }
}

/// A single token (no dots), e.g. a tenant id in an audit subject.
pub fn validate_token(token: &str) -> Result<(), KeyError> {
    if !token.is_empty() && token.len() <= 128 && token.chars().all(|c| allowed(c) && c != '/') {
        Ok(())
    } else {
        Err(KeyError::Token(token.to_string()))
    }
}

/// Reversible key token for arbitrary input (names, provider subjects): base64url without
/// padding, which only uses key-safe characters.
pub fn encode_key_token(input: &str) -> String {
    URL_SAFE_NO_PAD.encode(input.as_bytes())
}

/// One-way key token for lookups by secret-ish or unbounded input (emails, token values):
/// lowercase hex SHA-256.
pub fn hash_key_token(input: &[u8]) -> String {
    hex::encode(Sha256::digest(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_nats_alphabet() {
        for good in ["user.1", "routing", "email.ab12", "a-b_c=d/e.f"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "a*", "a.>", "é", "a\nb"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn prefixes_are_whole_tokens() {
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("user.").is_ok());
        assert!(validate_prefix("a.b.").is_ok());
        for bad in ["user", ".", "a..", "a*.", ">"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encoded_user_input_is_always_a_valid_token() {
        for input in ["Alice@Example.com", "a.b*c>d e", "", "日本語", "../../etc"] {
            let token = encode_key_token(input);
            if !input.is_empty() {
                assert!(validate_token(&token).is_ok(), "{input:?} -> {token}");
            }
            assert!(!token.contains('.'));
        }
        let hashed = hash_key_token(b"alice@example.com");
        assert_eq!(hashed.len(), 64);
        assert!(validate_token(&hashed).is_ok());
    }
}
