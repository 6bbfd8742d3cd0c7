//! Signed URLs: `?expires=<unix seconds>&signature=<base64url HMAC-SHA256>` over what the URL
//! serves and its expiry, keyed by a server secret (`url_signing_key`, see `secrets`). Each
//! kind of URL signs under its own label, so a file's signature never opens an archive.

use crate::secrets::{Secrets, URL_SIGNING_KEY};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) struct UrlSigner {
    key: Vec<u8>,
}

/// What a signed URL serves.
pub(crate) enum Signed<'a> {
    /// A file of a bucket (`/v1/files/...`).
    File { bucket: &'a str, path: &'a str },
    /// A backup archive (`/v1/admin/backups/...`).
    Backup { name: &'a str },
}

/// A signature: the query that carries it, and when it expires (RFC 3339).
pub(crate) struct Signature {
    pub(crate) query: String,
    pub(crate) expires_at: String,
}

impl UrlSigner {
    /// Loads the key, generating it on first start.
    pub(crate) async fn load_or_create(secrets: &Secrets) -> std::io::Result<UrlSigner> {
        let key = secrets
            .get_or_create(URL_SIGNING_KEY, || {
                crate::auth::generate_secret("ebus_").into_bytes()
            })
            .await?;
        Ok(UrlSigner {
            key: key.trim_ascii().to_vec(),
        })
    }

    fn mac(&self, what: &Signed<'_>, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Bucket names, paths and archive names never contain NUL, so each message is
        // unambiguous.
        match what {
            Signed::File { bucket, path } => {
                mac.update(b"emberbase-url-v1\0");
                mac.update(bucket.as_bytes());
                mac.update(b"\0");
                mac.update(path.as_bytes());
            }
            Signed::Backup { name } => {
                mac.update(b"emberbase-backup-url-v1\0");
                mac.update(name.as_bytes());
            }
        }
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// Signs `what` for `expires_in` seconds from now.
    pub(crate) fn sign(&self, what: &Signed<'_>, expires_in: u64) -> Signature {
        let expires = crate::model::unix_secs().saturating_add(expires_in);
        let signature = URL_SAFE_NO_PAD.encode(self.mac(what, expires).finalize().into_bytes());
        Signature {
            query: format!("expires={expires}&signature={signature}"),
            expires_at: crate::model::unix_rfc3339(expires),
        }
    }

    /// Whether `signature` is this server's signature of `what` until `expires` (compared in
    /// constant time), and that time has not passed.
    pub(crate) fn verify(&self, what: &Signed<'_>, expires: &str, signature: &str) -> bool {
        let (Ok(expires), Ok(bytes)) = (expires.parse::<u64>(), URL_SAFE_NO_PAD.decode(signature))
        else {
            return false;
        };
        expires >= crate::model::unix_secs() && self.mac(what, expires).verify_slice(&bytes).is_ok()
    }
}
