//! Signed URLs: `?expires=<unix seconds>&signature=<base64url HMAC-SHA256>` over the bucket, the
//! path and the expiry, keyed by a server secret (`url_signing_key`, see `secrets`).

use crate::secrets::{Secrets, URL_SIGNING_KEY};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(super) struct UrlSigner {
    key: Vec<u8>,
}

impl UrlSigner {
    /// Loads the key, generating it on first start.
    pub(super) async fn load_or_create(secrets: &Secrets) -> std::io::Result<UrlSigner> {
        let key = secrets
            .get_or_create(URL_SIGNING_KEY, || {
                crate::auth::generate_secret("ebus_").into_bytes()
            })
            .await?;
        Ok(UrlSigner {
            key: key.trim_ascii().to_vec(),
        })
    }

    fn mac(&self, bucket: &str, path: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Bucket names and paths never contain NUL, so the message is unambiguous.
        mac.update(b"emberbase-url-v1\0");
        mac.update(bucket.as_bytes());
        mac.update(b"\0");
        mac.update(path.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The signature of a URL for `bucket/path` that expires at `expires` (Unix seconds).
    pub(super) fn sign(&self, bucket: &str, path: &str, expires: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(bucket, path, expires).finalize().into_bytes())
    }

    /// Whether `signature` is this server's signature of `bucket/path` until `expires`
    /// (compared in constant time). Expiry is checked by the caller.
    pub(super) fn verify(&self, bucket: &str, path: &str, expires: u64, signature: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(signature) {
            Ok(bytes) => self.mac(bucket, path, expires).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}
