//! Batches: up to `limits.max_batch_ops` ops applied all or nothing in one transaction.

use super::error::invalid;
use super::{check_collection, check_id, DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::Document;
use crate::store::WriteOp;
use serde::Deserialize;
use serde_json::Value;

/// One op of `POST /v1/batch`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    pub op: BatchOpKind,
    pub collection: String,
    /// Required for `set`, `update` and `delete`; optional for `create`.
    #[serde(default)]
    pub id: Option<String>,
    /// The data (`create`, `set`) or merge patch (`update`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// `update` only: atomic field transforms applied after the patch, as
    /// `{"path": {"$op": argument}}` (`$inc`, `$serverTime`, `$arrayUnion`, `$arrayRemove`,
    /// `$delete`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub transforms: Option<Value>,
    #[serde(default)]
    pub if_version: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchOpKind {
    Create,
    Set,
    Update,
    Delete,
}

impl Documents {
    /// Applies a batch of ops, all or nothing.
    pub async fn batch(&self, who: &Principal, ops: Vec<BatchOp>) -> Result<Vec<Option<Document>>> {
        let max = self.inner.limits.max_batch_ops;
        if ops.is_empty() || ops.len() > max {
            return Err(invalid(format!("a batch holds 1 to {max} ops"), "ops"));
        }
        let mut write_ops = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            write_ops.push(self.batch_op(op).map_err(|e| DocsError::BatchOp {
                op: i,
                error: Box::new(e),
            })?);
        }
        let written =
            self.write(who, write_ops)
                .await
                .map_err(|(op, error)| DocsError::BatchOp {
                    op,
                    error: Box::new(error),
                })?;
        Ok(written.into_iter().map(|w| w.document).collect())
    }

    fn batch_op(&self, op: BatchOp) -> Result<WriteOp> {
        check_collection(&op.collection)?;
        if let Some(id) = &op.id {
            check_id(id)?;
        }
        let need_id = || {
            op.id
                .clone()
                .ok_or_else(|| invalid("this op needs an id", "id"))
        };
        let need_data = |field: &str| match op.data.clone() {
            Some(d) => self.check_data(d, field),
            None => Err(invalid("this op needs data", "data")),
        };
        if op.transforms.is_some() && op.op != BatchOpKind::Update {
            return Err(invalid("only an update takes transforms", "transforms"));
        }
        Ok(match op.op {
            BatchOpKind::Create => WriteOp::Create {
                collection: op.collection.clone(),
                id: op.id.clone(),
                data: need_data("data")?,
            },
            BatchOpKind::Set => WriteOp::Set {
                collection: op.collection.clone(),
                id: need_id()?,
                data: need_data("data")?,
                if_version: op.if_version,
            },
            BatchOpKind::Update => self.update_op(
                &op.collection,
                &need_id()?,
                op.data.clone(),
                op.transforms.as_ref(),
                op.if_version,
            )?,
            BatchOpKind::Delete => {
                if op.data.is_some() {
                    return Err(invalid("a delete takes no data", "data"));
                }
                WriteOp::Delete {
                    collection: op.collection.clone(),
                    id: need_id()?,
                    if_version: op.if_version,
                }
            }
        })
    }
}
