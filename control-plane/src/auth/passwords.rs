//! Password rules (NIST SP 800-63B-4) and Argon2id hashing: length bounds checked before any
//! hashing, NFKC normalisation everywhere, a shipped list of common passwords, and the same
//! Argon2 work for unknown accounts as for known ones.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use gateway_core::Reason;
use rand::RngCore;
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization;

/// Longest password accepted, in characters after normalisation.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Longest raw input looked at (bytes), so a huge body costs nothing.
const MAX_PASSWORD_BYTES: usize = 4 * MAX_PASSWORD_CHARS;

/// Why a new password is refused (the codes are part of the API).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password must have at least {0} characters")]
    TooShort(usize),
    #[error("the password must have at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    #[error("this password is too common; choose another one")]
    Common,
    #[error("the password must not contain the email address or the service name")]
    Contextual,
    #[error("the password must not be one repeated character")]
    Repetitive,
}

impl PasswordError {
    pub fn code(&self) -> Reason {
        match self {
            PasswordError::TooShort(_) => Reason::PasswordTooShort,
            PasswordError::TooLong => Reason::PasswordTooLong,
            PasswordError::Common => Reason::PasswordTooCommon,
            PasswordError::Contextual => Reason::PasswordContextual,
            PasswordError::Repetitive => Reason::PasswordRepetitive,
        }
    }
}

fn common_passwords() -> &'static HashSet<String> {
    static LIST: OnceLock<HashSet<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("../../data/common-passwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_lowercase)
            .collect()
    })
}

/// The same normalisation at signup, signin and reset: Unicode NFKC, nothing stripped.
/// `None` when the raw input is beyond any acceptable length (refuse without hashing).
pub fn normalize(raw: &str) -> Option<String> {
    if raw.len() > MAX_PASSWORD_BYTES {
        return None;
    }
    let normalized: String = raw.nfkc().collect();
    (normalized.chars().count() <= MAX_PASSWORD_CHARS).then_some(normalized)
}

/// Rules for new passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub min_chars: usize,
}

impl PasswordPolicy {
    /// Checks a new password for `email`; returns it normalised.
    pub fn check(&self, raw: &str, email: &str) -> Result<String, PasswordError> {
        let password = normalize(raw).ok_or(PasswordError::TooLong)?;
        let chars = password.chars().count();
        if chars < self.min_chars {
            return Err(PasswordError::TooShort(self.min_chars));
        }
        let lower = password.to_lowercase();
        if common_passwords().contains(&lower) {
            return Err(PasswordError::Common);
        }
        let mut first = lower.chars();
        if let Some(c) = first.next()
            && first.all(|d| d == c)
        {
            return Err(PasswordError::Repetitive);
        }
        let local = email.split('@').next().unwrap_or_default();
        if (local.chars().count() >= 4 && lower.contains(local))
            || lower.contains(&email.to_lowercase())
        {
            return Err(PasswordError::Contextual);
        }
        if lower.contains("cloudlysis") && chars < self.min_chars + 10 {
            return Err(PasswordError::Contextual);
        }
        Ok(password)
    }
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Argon2Settings {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("hashing task failed")]
    Join,
}

/// Hashes and verifies passwords off the async runtime, at most `concurrency` at once (each
/// hash holds `memory_kib` of memory).
#[derive(Clone)]
pub struct PasswordHasherPool {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against for unknown accounts.
    dummy: Arc<String>,
}

impl std::fmt::Debug for PasswordHasherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasherPool").finish_non_exhaustive()
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &[u8]) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    argon2(params)
        .hash_password_with_salt(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| HashError::Argon2(err.to_string()))
}

impl PasswordHasherPool {
    pub fn new(settings: Argon2Settings, concurrency: usize) -> Result<Self, HashError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|err| HashError::Argon2(err.to_string()))?;
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let dummy = hash_blocking(&params, &random)?;
        Ok(PasswordHasherPool {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(dummy),
        })
    }

    /// PHC string of a normalised password.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Join)?;
        let params = self.params.clone();
        let password = password.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|_| HashError::Join)?
    }

    /// Whether `password` matches `phc`; with `None` (unknown account) the same work is done
    /// against a dummy hash and the answer is `false`.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Join)?;
        let known = phc.is_some();
        let phc = phc
            .map(str::to_string)
            .unwrap_or_else(|| self.dummy.as_ref().clone());
        let params = self.params.clone();
        let password = password.as_bytes().to_vec();
        let matched = tokio::task::spawn_blocking(move || {
            // verify with the hash's own parameters (older hashes keep working after a
            // parameter change)
            argon2(&params)
                .verify_password(&password, phc.as_str())
                .is_ok()
        })
        .await
        .map_err(|_| HashError::Join)?;
        Ok(known && matched)
    }

    /// Whether `phc` was made with weaker parameters than the current ones (rehash on signin).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let wanted = format!(
            "m={},t={},p={}",
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost()
        );
        !(phc.starts_with("$argon2id$") && phc.contains(&wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy { min_chars: 15 }
    }

    #[test]
    fn length_bounds_are_checked_in_characters() {
        assert_eq!(
            policy().check("short", "a@b.co"),
            Err(PasswordError::TooShort(15))
        );
        // 15 characters of multi-byte text pass
        assert!(policy().check("ßßßßßßßßßßßßßßx", "a@b.co").is_ok());
        assert_eq!(
            policy().check(&"x".repeat(300), "a@b.co"),
            Err(PasswordError::TooLong)
        );
        assert_eq!(
            policy().check(&"xy".repeat(10_000), "a@b.co"),
            Err(PasswordError::TooLong)
        );
        assert!(
            policy().check(&"ab".repeat(128), "a@b.co").is_ok(),
            "256 is allowed"
        );
    }

    #[test]
    fn common_contextual_and_repetitive_passwords_are_refused() {
        assert_eq!(
            policy().check("PasswordPassword", "a@b.co"),
            Err(PasswordError::Common)
        );
        assert_eq!(
            PasswordPolicy { min_chars: 8 }.check("Password1", "a@b.co"),
            Err(PasswordError::Common)
        );
        assert_eq!(
            policy().check("aaaaaaaaaaaaaaaaaaaa", "a@b.co"),
            Err(PasswordError::Repetitive)
        );
        assert_eq!(
            policy().check("my name is adalovelace ok", "adalovelace@example.com"),
            Err(PasswordError::Contextual)
        );
        assert!(
            policy()
                .check("plum tractor velvet lagoon", "ada@example.com")
                .is_ok()
        );
    }

    #[test]
    fn normalisation_is_nfkc_and_never_truncates() {
        // the ligature "ﬁ" (U+FB01) normalises to "fi"
        assert_eq!(normalize("ﬁsh").unwrap(), "fish");
        let long = "é".repeat(200);
        assert_eq!(normalize(&long).unwrap().chars().count(), 200);
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        let pool = PasswordHasherPool::new(
            Argon2Settings {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            2,
        )
        .unwrap();
        let phc = pool.hash("plum tractor velvet lagoon").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(!phc.contains("plum"));
        assert!(
            pool.verify("plum tractor velvet lagoon", Some(&phc))
                .await
                .unwrap()
        );
        assert!(
            !pool
                .verify("plum tractor velvet lagoo", Some(&phc))
                .await
                .unwrap()
        );
        assert!(
            !pool
                .verify("plum tractor velvet lagoon", None)
                .await
                .unwrap()
        );
        assert!(!pool.verify("x", Some("not a phc string")).await.unwrap());
        assert!(!pool.needs_rehash(&phc));
        let stronger = PasswordHasherPool::new(Argon2Settings::default(), 1).unwrap();
        assert!(stronger.needs_rehash(&phc));
        // the same password hashes differently each time (random salt)
        assert_ne!(phc, pool.hash("plum tractor velvet lagoon").await.unwrap());
    }
}
