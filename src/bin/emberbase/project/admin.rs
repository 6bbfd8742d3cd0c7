//! The admin API as `plan`, `apply` and `pull` use it: a server's URL and service key, and
//! what the server has now (`State`), read through the same endpoints a script would use.

use emberbase::config::OAuthProviderConfig;
use emberbase::{
    BucketConfig, BucketInfo, CollectionConfig, CollectionInfo, FunctionInfo, FunctionSecret,
    OAuthProviderInfo, SecretComparison, WebhookInfo,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A server's admin API, as its service key.
pub(crate) struct Admin {
    client: reqwest::Client,
    base: String,
    key: String,
}

/// An answer that is not a success, or no answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) message: String,
    /// The error the server answered with (`{"code", "message", "details"}`), when it
    /// answered at all.
    refusal: Option<Value>,
}

impl ApiError {
    fn new(message: String) -> ApiError {
        ApiError {
            message,
            refusal: None,
        }
    }

    /// Whether the server answered (and refused), rather than not answering.
    pub(crate) fn is_refusal(&self) -> bool {
        self.refusal.is_some()
    }

    /// The error the server answered with, when its code is `code`.
    pub(crate) fn refused_as(&self, code: &str) -> Option<&Value> {
        self.refusal.as_ref().filter(|error| error["code"] == code)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `value` as a request body.
fn json_body(value: &Value) -> Result<(&'static str, reqwest::Body), ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ApiError::new(e.to_string()))?;
    Ok(("application/json", bytes.into()))
}

/// What a server has now, in the terms of the project file.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Collections with a configuration other than the default (one being deleted is left
    /// out).
    pub(crate) collections: BTreeMap<String, CollectionConfig>,
    /// Buckets with a configuration other than the default.
    pub(crate) buckets: BTreeMap<String, BucketConfig>,
    pub(crate) functions: BTreeMap<String, (FunctionInfo, Vec<FunctionSecret>)>,
    pub(crate) webhooks: Vec<WebhookInfo>,
    pub(crate) providers: BTreeMap<String, OAuthProviderInfo>,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

impl Admin {
    pub(crate) fn new(base: &str, key: &str) -> Admin {
        Admin {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        }
    }

    /// Sends a request and reads the answer's body, or says why it failed.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, reqwest::Body)>,
    ) -> Result<bytes::Bytes, ApiError> {
        let response = self.respond(method.clone(), path, body).await?;
        let url = format!("{}{path}", self.base);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::new(format!("cannot reach {url}: {e}")))?;
        Ok(bytes)
    }

    /// Sends a request; the answer if it is a success, or what the server said.
    async fn respond(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, reqwest::Body)>,
    ) -> Result<reqwest::Response, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&self.key);
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let fail = |e: reqwest::Error| ApiError::new(format!("cannot reach {url}: {e}"));
        let response = request.send().await.map_err(fail)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.map_err(fail)?;
        let error = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .map(|mut v| v["error"].take())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({"message": String::from_utf8_lossy(&bytes)}));
        let message = error["message"].as_str().unwrap_or_default();
        Err(ApiError {
            message: format!("{method} {path}: the server answered {status}: {message}"),
            refusal: Some(error),
        })
    }

    /// Streams the answer to a GET into `sink`, piece by piece.
    pub(crate) async fn download(
        &self,
        path: &str,
        sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
    ) -> Result<(), ApiError> {
        let mut response = self.respond(Method::GET, path, None).await?;
        let fail = |e: String| ApiError::new(format!("GET {path}: {e}"));
        while let Some(piece) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
            sink(&piece).map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }

    /// Sends a file's bytes, streamed from disk, and reads the JSON answer.
    pub(crate) async fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        file: &std::path::Path,
    ) -> Result<T, ApiError> {
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|e| ApiError::new(format!("cannot read {}: {e}", file.display())))?;
        let body = reqwest::Body::from(opened);
        let bytes = self
            .send(Method::PUT, path, Some((content_type, body)))
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(format!("{path}: an answer that does not parse: {e}")))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let body = body.map(json_body).transpose()?;
        let bytes = self.send(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            bytes::Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(format!("{path}: an answer that does not parse: {e}")))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.json(Method::GET, path, None).await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.json(Method::PUT, path, Some(body)).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// POSTs `body`; the JSON answer, and whether it was `201 Created` (not another success).
    pub(crate) async fn post_created(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(Value, bool), ApiError> {
        let response = self
            .respond(Method::POST, path, Some(json_body(body)?))
            .await?;
        let created = response.status() == reqwest::StatusCode::CREATED;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::new(format!("cannot reach {}{path}: {e}", self.base)))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(format!("{path}: an answer that does not parse: {e}")))?;
        Ok((value, created))
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.send(Method::DELETE, path, None).await.map(|_| ())
    }

    pub(crate) async fn put_bytes(
        &self,
        path: &str,
        content_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<(), ApiError> {
        self.send(Method::PUT, path, Some((content_type, bytes.into())))
            .await
            .map(|_| ())
    }

    /// The code a function runs.
    pub(crate) async fn function_source(&self, name: &str) -> Result<Vec<u8>, ApiError> {
        let path = format!("/v1/admin/functions/{name}/source");
        Ok(self.send(Method::GET, &path, None).await?.to_vec())
    }

    /// Whether each value is the one stored as a function's secret of its name.
    pub(crate) async fn compare_function_secrets(
        &self,
        function: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, SecretComparison>, ApiError> {
        let path = format!("/v1/admin/functions/{function}/secrets/compare");
        let answer = self
            .post(&path, &serde_json::json!({ "values": values }))
            .await?;
        serde_json::from_value(answer).map_err(|e| ApiError::new(format!("{path}: {e}")))
    }

    /// Whether a provider's secrets are the given ones.
    pub(crate) async fn compare_provider_secrets(
        &self,
        provider: &str,
        config: &OAuthProviderConfig,
    ) -> Result<BTreeMap<String, SecretComparison>, ApiError> {
        let mut body = serde_json::Map::new();
        for (field, value) in [
            ("client_secret", &config.client_secret),
            ("apple_private_key", &config.apple_private_key),
        ] {
            if !value.is_empty() {
                body.insert(field.into(), Value::String(value.clone()));
            }
        }
        if body.is_empty() {
            return Ok(BTreeMap::new());
        }
        let path = format!("/v1/admin/auth/providers/{provider}/compare");
        let answer = self.post(&path, &Value::Object(body)).await?;
        serde_json::from_value(answer).map_err(|e| ApiError::new(format!("{path}: {e}")))
    }

    /// Everything a project file describes, as the server has it now.
    pub(crate) async fn state(&self) -> Result<State, ApiError> {
        let mut state = State::default();
        let collections: Items<CollectionInfo> = self.get("/v1/admin/collections").await?;
        for info in collections.items.into_iter().filter(|c| !c.deleting) {
            let config = CollectionConfig {
                rules: info.rules,
                indexes: info.indexes,
                schema: info.schema,
                relations: info.relations,
            };
            if config != CollectionConfig::default() {
                state.collections.insert(info.name, config);
            }
        }
        let buckets: Items<BucketInfo> = self.get("/v1/admin/buckets").await?;
        for info in buckets.items {
            let config = BucketConfig {
                rules: info.rules,
                max_size: info.max_size,
                content_types: info.content_types,
            };
            if config != BucketConfig::default() {
                state.buckets.insert(info.name, config);
            }
        }
        let functions: Items<FunctionInfo> = self.get("/v1/admin/functions").await?;
        for info in functions.items {
            let secrets = self
                .get(&format!("/v1/admin/functions/{}/secrets", info.name))
                .await?;
            state.functions.insert(info.name.clone(), (info, secrets));
        }
        let webhooks: Items<WebhookInfo> = self.get("/v1/admin/webhooks").await?;
        state.webhooks = webhooks.items;
        let providers: Vec<OAuthProviderInfo> = self.get("/v1/admin/auth/providers").await?;
        state.providers = providers.into_iter().map(|p| (p.name.clone(), p)).collect();
        Ok(state)
    }
}
