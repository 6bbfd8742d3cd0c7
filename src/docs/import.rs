//! Documents brought in as another system (or an export) recorded them: `emberbase import`,
//! and the PocketBase and Firestore importers. Ids, owners, versions and times are kept;
//! before-write hooks, triggers and webhooks do not run (the data was written already, once,
//! elsewhere), while the change feed and realtime see each document as created.

use super::{check_collection, check_id, DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::{now_rfc3339, DocumentImportReport, PortableDocument, SkippedDocument};
use crate::store::{Recorded, StoreError, WriteOp};
use serde_json::Value;
use std::collections::HashSet;

/// Why an owner an import was given is refused (the value is not repeated: it may be large).
pub(crate) const BAD_OWNER: &str = "owner is not a user id: use 1 to 128 of A-Z a-z 0-9 _ -";

/// The most documents one import call takes.
pub const MAX_IMPORT_DOCUMENTS: usize = 1000;

impl Documents {
    /// Makes the documents as given, in one write (admins only). A document that cannot be
    /// made (its id exists, its data breaks the collection's schema or a limit) is skipped with
    /// the reason, and the others are written without it.
    pub async fn import(
        &self,
        who: &Principal,
        collection: &str,
        documents: Vec<PortableDocument>,
    ) -> Result<DocumentImportReport> {
        who.require_admin("import documents")?;
        check_collection(collection)?;
        if documents.len() > MAX_IMPORT_DOCUMENTS {
            return Err(super::error::invalid(
                format!("import at most {MAX_IMPORT_DOCUMENTS} documents at once"),
                "documents",
            ));
        }
        let mut report = DocumentImportReport::default();
        let mut skip = |id: String, error: DocsError| {
            report.skipped.push(SkippedDocument {
                id,
                reason: error.to_string(),
            })
        };
        // Ids that exist (or come twice) are left out first, so that importing again does
        // not write once per document it skips.
        let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
        let stored = match ids.iter().all(|id| check_id(id).is_ok()) {
            true => self.inner.store.get_many(collection, &ids).await?,
            false => vec![None; ids.len()],
        };
        let mut seen = HashSet::new();
        let mut ops = Vec::with_capacity(documents.len());
        for (doc, stored) in documents.into_iter().zip(stored) {
            let id = doc.id.clone();
            if stored.is_some() || !seen.insert(id.clone()) {
                let exists = StoreError::Conflict {
                    collection: collection.to_string(),
                    id: id.clone(),
                };
                skip(id, exists.into());
                continue;
            }
            match self.import_op(collection, doc) {
                Ok(op) => ops.push((id, op)),
                Err(e) => skip(id, e),
            }
        }
        // Each refusal names its op; that one is left out and the rest written again.
        while !ops.is_empty() {
            let batch = ops.iter().map(|(_, op)| op.clone()).collect();
            match self.commit(who, batch).await {
                Ok(written) => {
                    report.imported += written.len();
                    break;
                }
                Err(failure) if failure.error.is_engine() => {
                    return Err(DocsError::from(failure.error))
                }
                Err(failure) => {
                    let at = failure.op.min(ops.len() - 1);
                    let (id, _) = ops.remove(at);
                    skip(id, failure.error.into());
                }
            }
        }
        Ok(report)
    }

    fn import_op(&self, collection: &str, doc: PortableDocument) -> Result<WriteOp> {
        check_id(&doc.id)?;
        if doc
            .owner
            .as_deref()
            .is_some_and(|o| !super::valid_document_id(o))
        {
            return Err(super::error::invalid(BAD_OWNER, "owner"));
        }
        let data = self.check_data(Value::Object(doc.data), "data")?;
        let time = |at: Option<String>, field: &str| match at {
            Some(at) if crate::query::parse_time(&at).is_some() => Ok(Some(at)),
            Some(at) => Err(super::error::invalid(
                format!("{field} {at:?} is not an RFC 3339 time"),
                field,
            )),
            None => Ok(None),
        };
        let created_at = time(doc.created_at, "created_at")?.unwrap_or_else(now_rfc3339);
        let updated_at = time(doc.updated_at, "updated_at")?.unwrap_or_else(|| created_at.clone());
        Ok(WriteOp::Import {
            collection: collection.to_string(),
            id: doc.id,
            data,
            recorded: Recorded {
                owner: doc.owner,
                version: doc.version,
                created_at,
                updated_at,
            },
        })
    }
}
