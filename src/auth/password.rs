//! Password hashing (argon2id) and the password policy.
//!
//! Hashes are computed by a fixed set of threads (`auth.hash_concurrency`), each reusing one
//! block buffer of `argon2_memory_kib` for every hash. A burst of logins queues up instead of
//! stalling the async workers, and memory stays at threads x memory cost: letting argon2
//! allocate 19 MiB per hash on tokio's blocking pool left about 1 GB resident after a minute of
//! logins, as glibc kept the freed blocks in fragmented per-thread arenas. A thread that has
//! waited [`IDLE`] for work lets its buffer go, so a server nobody signs in to does not hold
//! threads x 19 MiB. A login for an unknown email verifies against a dummy hash (random salt
//! and output, the configured cost), so it costs the same time as a wrong password.

use super::error::{internal, invalid, AuthError};
use crate::config::AuthConfig;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// The longest password accepted, in bytes.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
/// The shortest password accepted, in characters.
pub(crate) const MIN_PASSWORD_CHARS: usize = 8;
const SALT_BYTES: usize = 16;
/// How long a hashing thread waits for work before it frees its block buffer.
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);
const OUTPUT_BYTES: usize = 32;

enum Job {
    Hash(String, oneshot::Sender<Result<String, String>>),
    Verify(String, String, oneshot::Sender<bool>),
}

#[derive(Clone)]
pub(crate) struct PasswordHasherPool {
    jobs: mpsc::Sender<Job>,
    dummy: Arc<String>,
}

/// A PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
fn phc_string(params: &Params, salt: &[u8], output: &[u8]) -> Result<String, String> {
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(Salt::new(salt).map_err(|e| e.to_string())?),
        hash: Some(Output::new(output).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// One hashing thread's state: the configured parameters and a reusable block buffer.
struct Worker {
    params: Params,
    blocks: Vec<Block>,
}

impl Worker {
    fn memory(&mut self, params: &Params) -> &mut [Block] {
        let needed = params.block_count();
        if self.blocks.len() < needed {
            self.blocks.resize(needed, Block::default());
        }
        &mut self.blocks[..needed]
    }

    fn hash(&mut self, password: &str) -> Result<String, String> {
        let mut salt = [0u8; SALT_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let params = self.params.clone();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut out = [0u8; OUTPUT_BYTES];
        argon
            .hash_password_into_with_memory(
                password.as_bytes(),
                &salt,
                &mut out,
                self.memory(&params),
            )
            .map_err(|e| e.to_string())?;
        phc_string(&params, &salt, &out)
    }

    /// Verifies against a stored hash, with the parameters it was made with: an argon2 PHC
    /// string, or an imported bcrypt hash.
    fn verify(&mut self, password: &str, stored: &str) -> bool {
        if is_bcrypt(stored) {
            return bcrypt::verify(password, stored).unwrap_or(false);
        }
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let (Ok(params), Ok(algorithm)) = (
            Params::try_from(&parsed),
            Algorithm::try_from(parsed.algorithm.as_str()),
        ) else {
            return false;
        };
        let version = parsed
            .version
            .and_then(|v| Version::try_from(v).ok())
            .unwrap_or(Version::V0x13);
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let argon = Argon2::new(algorithm, version, params.clone());
        let mut out = vec![0u8; expected.len()];
        let hashed = argon.hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut out,
            self.memory(&params),
        );
        hashed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
    }
}

impl PasswordHasherPool {
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, String> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            Some(OUTPUT_BYTES),
        )
        .map_err(|e| format!("argon2 parameters: {e}"))?;
        let mut salt = [0u8; SALT_BYTES];
        let mut output = [0u8; OUTPUT_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut output);
        let dummy = phc_string(&params, &salt, &output)?;
        let threads = match config.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let mut worker = Worker {
                params: params.clone(),
                blocks: Vec::new(),
            };
            std::thread::Builder::new()
                .name(format!("emberbase-hash-{i}"))
                .spawn(move || loop {
                    // The threads take turns at the queue; each that waits `IDLE` there in
                    // vain frees its buffer and lets the next one wait.
                    let job = match queue.lock() {
                        Ok(rx) => rx.recv_timeout(IDLE),
                        Err(_) => return,
                    };
                    match job {
                        Ok(Job::Hash(password, reply)) => {
                            let _ = reply.send(worker.hash(&password));
                        }
                        Ok(Job::Verify(password, stored, reply)) => {
                            let _ = reply.send(worker.verify(&password, &stored));
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            worker.blocks = Vec::new();
                            // Let a thread parked on the lock take its turn (std's mutex would
                            // hand it straight back to this one).
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                })
                .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        }
        Ok(PasswordHasherPool {
            jobs,
            dummy: Arc::new(dummy),
        })
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=...`).
    pub(crate) async fn hash(&self, password: String) -> Result<String, AuthError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Hash(password, tx))
            .map_err(|_| internal("the hashing threads are gone"))?;
        rx.await
            .map_err(|_| internal("a hashing thread stopped"))?
            .map_err(|e| internal(format!("argon2: {e}")))
    }

    /// Whether `password` matches `hash`. With no hash (no such user) it still does the work,
    /// against the dummy hash, and answers false.
    pub(crate) async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, AuthError> {
        let known = hash.is_some();
        let stored = hash.unwrap_or_else(|| self.dummy.as_str().to_owned());
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Verify(password, stored, tx))
            .map_err(|_| internal("the hashing threads are gone"))?;
        let matched = rx.await.map_err(|_| internal("a hashing thread stopped"))?;
        Ok(known && matched)
    }
}

/// Whether a stored hash is bcrypt's (`$2a$`, `$2b$`, `$2y$`), as other systems keep them.
pub(crate) fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// Whether a hash can be stored for an account: an argon2 PHC string or a bcrypt hash.
pub(crate) fn is_known_hash(hash: &str) -> bool {
    is_bcrypt(hash)
        || PasswordHash::new(hash).is_ok_and(|h| Algorithm::try_from(h.algorithm.as_str()).is_ok())
}

/// The password policy of OWASP ASVS: at least 8 characters, long passphrases welcome, no
/// composition rules, and nothing a guesser tries first (zxcvbn score 0, which takes the
/// email into account).
pub(crate) fn check_password(password: &str, email: &str) -> Result<(), AuthError> {
    let field = "password";
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(invalid(
            format!("the password must have at least {MIN_PASSWORD_CHARS} characters"),
            field,
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            format!("the password must be at most {MAX_PASSWORD_BYTES} bytes"),
            field,
        ));
    }
    // zxcvbn's cost grows with length; the first 100 characters decide whether it is common.
    let head: String = password.chars().take(100).collect();
    let local = email.split('@').next().unwrap_or("");
    if zxcvbn::zxcvbn(&head, &[email, local]).score() == zxcvbn::Score::Zero {
        return Err(invalid(
            "this password is too common or too easy to guess; try a longer passphrase",
            field,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PasswordHasherPool {
        let config = AuthConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            hash_concurrency: 2,
            ..AuthConfig::default()
        };
        PasswordHasherPool::new(&config).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_interoperate_with_the_argon2_crate() {
        let pool = pool();
        let hash = pool.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{hash}");
        assert!(pool
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!pool
            .verify("wrong horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!pool.verify("correct horse".into(), None).await.unwrap());
        assert!(!pool
            .verify("x".into(), Some("not a phc string".into()))
            .await
            .unwrap());

        // A hash made by the argon2 crate's own API, with other parameters, verifies too, and
        // ours parses with its parser.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(512, 2, 1, None).unwrap(),
        )
        .hash_password(b"other secret")
        .unwrap()
        .to_string();
        assert!(pool
            .verify("other secret".into(), Some(theirs))
            .await
            .unwrap());
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
    }
}
