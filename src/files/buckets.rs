//! Buckets: their configuration (rules, size limit, content types) as admins set it, compiled
//! into a policy per stored configuration, and the rule checks of reads and writes.

use super::error::{internal, invalid};
use super::{safety, Files, FilesError, Result};
use crate::auth::Principal;
use crate::docs::check_collection;
use crate::model::{BucketConfig, BucketInfo, BucketRules, FileInfo};
use crate::query::{allows, Dialect, Rule};
use crate::store::{Access, FileGuard, KvWrite, Space};
use serde_json::{json, Value};
use std::sync::Arc;

/// A bucket's rules and limits, compiled.
pub(super) struct BucketPolicy {
    pub(super) read: Rule,
    pub(super) write: Rule,
    pub(super) delete: Rule,
    pub(super) max_size: u64,
    pub(super) content_types: Option<Vec<String>>,
}

impl BucketPolicy {
    pub(super) fn compile(
        config: &BucketConfig,
        defaults: &BucketRules,
        max_size: u64,
    ) -> std::result::Result<Self, (&'static str, crate::query::ParseError)> {
        let rules = config.rules.as_ref().unwrap_or(defaults);
        let one = |name: &'static str, src: &Option<String>| {
            Rule::compile_in(src.as_deref(), Dialect::FileRule).map_err(|e| (name, e))
        };
        Ok(BucketPolicy {
            read: one("read", &rules.read)?,
            write: one("write", &rules.write)?,
            delete: one("delete", &rules.delete)?,
            max_size: config.max_size.unwrap_or(max_size),
            content_types: config.content_types.clone(),
        })
    }
}

pub(crate) fn check_bucket(name: &str) -> Result<()> {
    check_collection(name).map_err(|_| {
        FilesError::BadRequest(format!(
            "invalid bucket name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        ))
    })
}

/// The writer's access check for one caller's file write.
pub(super) struct BucketGuard {
    policy: Arc<BucketPolicy>,
    /// The stored configuration the policy was compiled from (`None`: the defaults).
    source: Option<Vec<u8>>,
    bucket: String,
    auth: Value,
}

impl FileGuard for BucketGuard {
    fn check(
        &self,
        access: Access,
        before: Option<&FileInfo>,
        after: Option<&FileInfo>,
    ) -> std::result::Result<(), String> {
        let policy = &self.policy;
        let (rule, verb) = match access {
            Access::Create | Access::Update => (&policy.write, "write"),
            Access::Delete => (&policy.delete, "delete"),
        };
        let request = after.map(|a| request_value(a.size, &a.content_type, &a.path));
        if rule_allows(rule, &self.auth, before, request) {
            Ok(())
        } else {
            Err(format!(
                "the {verb} rule of bucket {} denies this",
                self.bucket
            ))
        }
    }

    fn depends_on(&self) -> (Space, Vec<u8>, Option<Vec<u8>>) {
        (
            Space::Buckets,
            self.bucket.as_bytes().to_vec(),
            self.source.clone(),
        )
    }
}

pub(super) fn request_value(size: u64, content_type: &str, path: &str) -> Value {
    json!({"size": size, "content_type": content_type, "path": path})
}

/// Evaluates a bucket rule with `auth`, `file` and `request` bound.
pub(super) fn rule_allows(
    rule: &Rule,
    auth: &Value,
    file: Option<&FileInfo>,
    request: Option<Value>,
) -> bool {
    let file = file.map_or(Value::Null, |f| {
        serde_json::to_value(f).unwrap_or(Value::Null)
    });
    let scope = json!({"auth": auth, "file": file, "request": request.unwrap_or(Value::Null)});
    allows(rule, &scope)
}

impl Files {
    /// The compiled rules and limits of a bucket: its own configuration, or the defaults.
    pub(super) async fn policy(&self, bucket: &str) -> Result<Arc<BucketPolicy>> {
        Ok(self.policy_with_source(bucket).await?.0)
    }

    /// Like [`Files::policy`], with the stored configuration it comes from.
    pub(super) async fn policy_with_source(
        &self,
        bucket: &str,
    ) -> Result<(Arc<BucketPolicy>, Option<Vec<u8>>)> {
        let Some(bytes) = self
            .inner
            .store
            .kv_get(Space::Buckets, bucket.as_bytes())
            .await?
        else {
            return Ok((self.inner.default_policy.clone(), None));
        };
        if let Ok(cache) = self.inner.policies.read() {
            if let Some((source, policy)) = cache.get(bucket) {
                if *source == bytes {
                    return Ok((policy.clone(), Some(bytes)));
                }
            }
        }
        let config: BucketConfig = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("bucket {bucket} config: {e}")))?;
        let policy = BucketPolicy::compile(&config, &self.inner.defaults, self.inner.max_size)
            .unwrap_or_else(|(name, e)| {
                // Fail closed, as collections do: admins only until the rule is fixed.
                tracing::error!(bucket, rule = name, error = %e, "a stored bucket rule does not compile; the bucket allows admins only until it is fixed");
                BucketPolicy {
                    read: Rule::AdminOnly,
                    write: Rule::AdminOnly,
                    delete: Rule::AdminOnly,
                    max_size: 0,
                    content_types: None,
                }
            });
        let policy = Arc::new(policy);
        if let Ok(mut cache) = self.inner.policies.write() {
            cache.insert(bucket.to_string(), (bytes.clone(), policy.clone()));
        }
        Ok((policy, Some(bytes)))
    }

    pub(super) async fn guard(
        &self,
        who: &Principal,
        bucket: &str,
    ) -> Result<Option<Arc<dyn FileGuard>>> {
        if who.is_admin() {
            Ok(None)
        } else {
            let (policy, source) = self.policy_with_source(bucket).await?;
            Ok(Some(Arc::new(BucketGuard {
                policy,
                source,
                bucket: bucket.to_string(),
                auth: who.auth_value(),
            })))
        }
    }

    pub(super) fn may(&self, who: &Principal, rule: &Rule, file: Option<&FileInfo>) -> bool {
        who.is_admin() || rule_allows(rule, &who.auth_value(), file, None)
    }

    /// Sets a bucket's rules and limits (admins only).
    pub async fn configure(
        &self,
        who: &Principal,
        bucket: &str,
        config: BucketConfig,
    ) -> Result<BucketInfo> {
        who.require_admin("configure buckets")?;
        check_bucket(bucket)?;
        BucketPolicy::compile(&config, &self.inner.defaults, self.inner.max_size).map_err(
            |(name, e)| FilesError::InvalidRule {
                rule: name.into(),
                message: e.message,
                column: e.column,
            },
        )?;
        if config
            .max_size
            .is_some_and(|n| n == 0 || n > i64::MAX as u64)
        {
            return Err(invalid(
                format!("max_size must be from 1 to {}", i64::MAX),
                "max_size",
            ));
        }
        if let Some(types) = &config.content_types {
            if let Some(bad) = types.iter().find(|t| !safety::check_type_pattern(t)) {
                return Err(invalid(
                    format!("content type {bad:?} is not `type/subtype` or `type/*`"),
                    "content_types",
                ));
            }
        }
        let bytes = serde_json::to_vec(&config).map_err(internal)?;
        self.inner
            .store
            .kv_write(KvWrite::default().put(Space::Buckets, bucket.as_bytes(), bytes))
            .await?;
        Ok(BucketInfo::new(bucket, config))
    }

    /// A bucket's stored configuration (admins only).
    pub async fn bucket_config(&self, who: &Principal, bucket: &str) -> Result<BucketInfo> {
        who.require_admin("read bucket configs")?;
        check_bucket(bucket)?;
        let bytes = self
            .inner
            .store
            .kv_get(Space::Buckets, bucket.as_bytes())
            .await?
            .ok_or_else(|| FilesError::NotConfigured(bucket.into()))?;
        let config = serde_json::from_slice(&bytes).map_err(internal)?;
        Ok(BucketInfo::new(bucket, config))
    }

    /// The names of the buckets that hold files (admins only), configured or not.
    pub async fn buckets_with_files(&self, who: &Principal) -> Result<Vec<String>> {
        who.require_admin("list buckets")?;
        Ok(self.inner.store.file_buckets().await?)
    }

    /// Every configured bucket (admins only).
    pub async fn buckets(&self, who: &Principal) -> Result<Vec<BucketInfo>> {
        who.require_admin("read bucket configs")?;
        self.inner
            .store
            .kv_scan(Space::Buckets, None, usize::MAX)
            .await?
            .into_iter()
            .map(|(name, bytes)| {
                let config = serde_json::from_slice(&bytes).map_err(internal)?;
                Ok(BucketInfo::new(&String::from_utf8_lossy(&name), config))
            })
            .collect()
    }
}
