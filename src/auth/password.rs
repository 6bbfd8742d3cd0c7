//! Password hashing (argon2id) and the password policy.
//!
//! Hashing runs on tokio's blocking pool behind a semaphore, so a burst of logins queues up
//! instead of stalling the async workers or exhausting memory (each hash takes
//! `argon2_memory_kib`). A login for an unknown email verifies against a dummy hash, so it
//! costs the same time as a wrong password.

use crate::config::AuthConfig;
use crate::error::Error;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

#[derive(Clone)]
pub struct PasswordHasherPool {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    dummy: Arc<String>,
}

impl PasswordHasherPool {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| format!("argon2 parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = argon
            .hash_password(super::generate_secret("").as_bytes())
            .map_err(|e| format!("argon2: {e}"))?
            .to_string();
        let permits = match config.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Ok(PasswordHasherPool {
            argon,
            permits: Arc::new(Semaphore::new(permits)),
            dummy: Arc::new(dummy),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::internal(format!("hash semaphore: {e}")))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || work(argon))
            .await
            .map_err(|e| Error::internal(format!("hash task: {e}")))
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=...`).
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        self.run(move |argon| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| Error::internal(format!("argon2: {e}")))
    }

    /// Whether `password` matches `hash`. With no hash (no such user) it still does the work,
    /// against a dummy hash, and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Error> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.as_str().to_owned());
        let matched = self
            .run(move |argon| match PasswordHash::new(&hash) {
                Ok(parsed) => argon.verify_password(password.as_bytes(), &parsed).is_ok(),
                Err(_) => false,
            })
            .await?;
        Ok(known && matched)
    }
}

/// The password policy of OWASP ASVS: at least 8 characters, long passphrases welcome, no
/// composition rules, and nothing a guesser tries first (zxcvbn score 0, which takes the
/// email into account).
pub fn check_password(password: &str, email: &str) -> Result<(), Error> {
    let field = "password";
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::validation(
            format!("the password must have at least {MIN_PASSWORD_CHARS} characters"),
            field,
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::validation(
            format!("the password must be at most {MAX_PASSWORD_BYTES} bytes"),
            field,
        ));
    }
    // zxcvbn's cost grows with length; the first 100 characters decide whether it is common.
    let head: String = password.chars().take(100).collect();
    let local = email.split('@').next().unwrap_or("");
    if zxcvbn::zxcvbn(&head, &[email, local]).score() == zxcvbn::Score::Zero {
        return Err(Error::validation(
            "this password is too common or too easy to guess; try a longer passphrase",
            field,
        ));
    }
    Ok(())
}
