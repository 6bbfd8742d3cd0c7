//! The data types every layer shares: the document envelope, change records, collection
//! configuration and the actor that caused a write. Plain serde types, no behaviour that needs
//! storage or HTTP.

use crate::query::{ast::Path, eval::walk, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A document as every endpoint returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Document {
    /// Unique within the collection. Server-generated ids are ULIDs, increasing in creation order.
    pub id: String,
    pub collection: String,
    /// The id of the user who created the document, or null (service, function, anonymous).
    pub owner: Option<String>,
    /// 1 on creation, +1 on every write.
    pub version: u64,
    /// RFC 3339 UTC with milliseconds.
    pub created_at: String,
    pub updated_at: String,
    /// The client's data.
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
}

impl Document {
    /// The value at an envelope path (`id`, `owner`, ..., `data.<field>...`), if present.
    pub(crate) fn lookup_segments(&self, segments: &[String]) -> Option<Cow<'_, Value>> {
        let owned = |v: Value| Some(Cow::Owned(v));
        match segments {
            [field] => match field.as_str() {
                "id" => owned(Value::String(self.id.clone())),
                "owner" => owned(self.owner.clone().map_or(Value::Null, Value::String)),
                "version" => owned(Value::from(self.version)),
                "created_at" => owned(Value::String(self.created_at.clone())),
                "updated_at" => owned(Value::String(self.updated_at.clone())),
                "collection" => owned(Value::String(self.collection.clone())),
                _ => None,
            },
            [data, first, rest @ ..] if data == "data" => {
                walk(self.data.get(first)?, rest).map(Cow::Borrowed)
            }
            _ => None,
        }
    }
}

impl Scope for Document {
    fn lookup(&self, path: &Path) -> Option<Cow<'_, Value>> {
        self.lookup_segments(&path.segments)
    }
}

/// Who caused a write, as recorded in the change feed and shown to functions as `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: Option<String>,
    pub email: Option<String>,
    /// `user`, `admin`, `service`, `function`, or `system` for what the server does by itself
    /// (a relation's `set_null` or `cascade`).
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

impl Actor {
    pub(crate) fn service() -> Self {
        Actor {
            id: None,
            email: None,
            role: "service".into(),
            function: None,
        }
    }

    /// The server acting by itself.
    pub(crate) fn system() -> Self {
        Actor {
            role: "system".into(),
            ..Actor::service()
        }
    }
}

/// What kind of change a write made to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One committed change, in commit order. Written in the same atomic commit as the document
/// or file it describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Strictly increasing across the whole database.
    pub seq: u64,
    pub kind: ChangeKind,
    /// What changed: a document or a file, as it was before and after.
    pub subject: Subject,
    pub time: String,
    pub actor: Option<Actor>,
    /// 0 for client and service writes; d + 1 for writes made while handling an event of depth d.
    pub depth: u32,
    /// The trace context of the work that made the change (a request, a function run's host
    /// call); absent for the server's own background writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceContext>,
}

/// The document or file a change is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Document {
        collection: String,
        id: String,
        before: Option<Document>,
        after: Option<Document>,
    },
    File {
        bucket: String,
        path: String,
        before: Option<FileInfo>,
        after: Option<FileInfo>,
    },
}

/// `collection/id` for a document, `bucket:path` for a file.
impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Document { collection, id, .. } => write!(f, "{collection}/{id}"),
            Subject::File { bucket, path, .. } => write!(f, "{bucket}:{path}"),
        }
    }
}

/// A stored file's metadata, as every file endpoint returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileInfo {
    pub bucket: String,
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The `Content-Type` it was uploaded with.
    pub content_type: String,
    /// SHA-256 of the bytes, lower-case hex. Also the file's `ETag`.
    pub sha256: String,
    /// The id of the user who first uploaded it, or null (service, function, anonymous).
    pub owner: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The four access rules of a collection, in the filter language. A missing (`null`) rule
/// allows admins only; `""` allows everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub read: Option<String>,
    #[serde(default)]
    pub create: Option<String>,
    #[serde(default)]
    pub update: Option<String>,
    #[serde(default)]
    pub delete: Option<String>,
}

/// The rules shipped in `config/emberbase.toml`: signed-in users read and create, owners
/// update and delete.
impl Default for Rules {
    fn default() -> Self {
        Rules {
            read: Some("auth != null && doc.owner == auth.id".into()),
            create: Some("auth != null".into()),
            update: Some("auth != null && doc.owner == auth.id".into()),
            delete: Some("auth != null && doc.owner == auth.id".into()),
        }
    }
}

/// The admin-set configuration of a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The access rules; when absent, the server's default rules (`[rules]` in the config).
    #[serde(default)]
    pub rules: Option<Rules>,
    /// Each index is a list of field paths, e.g. `[["data.n"], ["data.tag", "data.n"]]`.
    #[serde(default)]
    pub indexes: Vec<Vec<String>>,
    /// A JSON Schema (draft 2020-12) that every document's `data` must satisfy, checked on
    /// every write; absent, any object goes. At most 64 KiB; `$ref` only within the schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, example = json!({"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "maxLength": 500}}}))]
    pub schema: Option<Value>,
    /// Fields that reference documents of another collection, by their dotted path under the
    /// data (`author`, `meta.editor`): each holds a document id, an array of at most 100 ids,
    /// or null. A reference must name an existing document; `expand` embeds it in reads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(example = json!({"author": {"collection": "people", "on_delete": "restrict"}}))]
    pub relations: BTreeMap<String, Relation>,
}

/// A field's reference to another collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Relation {
    /// The collection whose documents the field names by id.
    pub collection: String,
    /// What deleting a referenced document does to the documents that reference it.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// What deleting a referenced document does to the documents that reference it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Nothing: the reference dangles (`expand` gives `null`).
    #[default]
    None,
    /// The delete is refused (`409`) while any document references it.
    Restrict,
    /// The reference is removed: a single one becomes `null`, the id leaves an array.
    SetNull,
    /// The referencing documents are deleted too (and what references them, by their rules).
    Cascade,
}

/// A stored collection configuration, with its name. (The fields of `CollectionConfig` are
/// spelled out rather than flattened, so that the schema of a response is not bound by the
/// request's `additionalProperties: false`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    /// The access rules; `null` when the collection follows the server's defaults.
    pub rules: Option<Rules>,
    pub indexes: Vec<Vec<String>>,
    /// Stored rules that no longer compile (for example, over a limit added since they were
    /// stored). Until they are fixed every such collection allows admins only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_errors: Vec<RuleError>,
    /// Each declared index, in order, and whether queries use it yet.
    #[serde(default)]
    pub index_states: Vec<IndexState>,
    /// The exact number of documents in the collection.
    #[serde(default)]
    pub documents: u64,
    /// Whether a delete of the collection is under way (see `DELETE
    /// /v1/admin/collections/{collection}`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// The collection's JSON Schema, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// A stored schema that no longer compiles: writes to the collection are refused until it
    /// is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_error: Option<String>,
    /// After a schema is set: how the documents already stored measure up against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_report: Option<SchemaReport>,
    /// The collection's relations (see `CollectionConfig`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relations: BTreeMap<String, Relation>,
}

/// How the documents stored when a schema was set measure up against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaReport {
    /// Documents checked.
    pub checked: u64,
    /// Of those, how many do not conform.
    pub nonconforming: u64,
    /// Whether every document was checked (the check stops after `limits.max_scan_documents`);
    /// `GET /v1/admin/collections/{collection}/nonconforming` pages through all of them.
    pub complete: bool,
    /// The first few that do not conform.
    pub examples: Vec<Nonconforming>,
}

/// A stored document that does not conform to its collection's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Nonconforming {
    pub id: String,
    pub violations: Vec<Violation>,
}

/// One way a document's data breaks its collection's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// A JSON pointer into the document's `data` (`""` for the data as a whole).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

/// An index and whether the planner uses it yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexState {
    /// The index's fields, as declared.
    pub fields: Vec<String>,
    /// `building` while the entries of the documents already stored are being written (writes
    /// go on meanwhile, and queries do not use the index yet), then `ready`.
    #[schema(example = "ready")]
    pub state: String,
}

/// A stored rule that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleError {
    /// `read`, `create`, `update` or `delete`.
    pub rule: String,
    pub message: String,
}

/// The three access rules of a bucket, in the filter language with `auth`, `file` and
/// `request` bound. A missing (`null`) rule allows admins only; `""` allows everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketRules {
    #[serde(default)]
    pub read: Option<String>,
    #[serde(default)]
    pub write: Option<String>,
    #[serde(default)]
    pub delete: Option<String>,
}

/// The bucket rules shipped in `config/emberbase.toml`: signed-in users read; the uploader
/// alone replaces and deletes.
impl Default for BucketRules {
    fn default() -> Self {
        BucketRules {
            read: Some("auth != null && file.owner == auth.id".into()),
            write: Some("auth != null && (file == null || file.owner == auth.id)".into()),
            delete: Some("auth != null && file.owner == auth.id".into()),
        }
    }
}

/// The admin-set configuration of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// The access rules; when absent, the server's defaults (`[files.rules]` in the config).
    #[serde(default)]
    pub rules: Option<BucketRules>,
    /// The largest file, in bytes; when absent, `files.max_size` of the config.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    pub max_size: Option<u64>,
    /// Allowed `Content-Type`s (`image/png`, or `image/*`); when absent, any.
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
}

/// A stored bucket configuration, with its name (its fields spelled out, as for
/// `CollectionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BucketInfo {
    pub name: String,
    /// The access rules; `null` when the bucket follows the server's defaults.
    pub rules: Option<BucketRules>,
    pub max_size: Option<u64>,
    pub content_types: Option<Vec<String>>,
}

impl BucketInfo {
    pub(crate) fn new(name: &str, config: BucketConfig) -> BucketInfo {
        BucketInfo {
            name: name.to_string(),
            rules: config.rules,
            max_size: config.max_size,
            content_types: config.content_types,
        }
    }
}

/// How a value compares with a stored secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretComparison {
    /// The stored value is this one.
    Same,
    /// A different value is stored.
    Different,
    /// Nothing is stored under this name.
    Absent,
}

/// A document as `emberbase export` writes it (one JSON Lines record) and an import takes it:
/// its id, owner, version and times are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortableDocument {
    pub id: String,
    #[serde(deserialize_with = "json_object")]
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
    /// The id of the user who created it; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// At least 1; absent: 1.
    #[serde(default = "first_version", deserialize_with = "version_number")]
    #[schema(minimum = 1)]
    pub version: u64,
    /// RFC 3339; absent: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339; absent: `created_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

fn first_version() -> u64 {
    1
}

/// A document version: 1 or more, within the signed 64-bit integers of the API document.
fn version_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("a version is at least 1")),
        n if n > i64::MAX as u64 => Err(serde::de::Error::custom("a version is at most 2^63 - 1")),
        n => Ok(n),
    }
}

impl From<Document> for PortableDocument {
    fn from(doc: Document) -> Self {
        PortableDocument {
            id: doc.id,
            data: doc.data,
            owner: doc.owner,
            version: doc.version,
            created_at: Some(doc.created_at),
            updated_at: Some(doc.updated_at),
        }
    }
}

/// What an import of documents did with each one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentImportReport {
    /// Documents made.
    pub imported: usize,
    /// Documents left out, each with why (the id exists, the data breaks the schema, ...).
    pub skipped: Vec<SkippedDocument>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedDocument {
    pub id: String,
    pub reason: String,
}

/// Deserialises a JSON object, and nothing else (not `null`): for `deserialize_with` on
/// object fields whose schema says object.
pub(crate) fn json_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Map<String, Value>, D::Error> {
    match Value::deserialize(d)? {
        Value::Object(map) => Ok(map),
        _ => Err(serde::de::Error::custom("expected a JSON object")),
    }
}

/// Deserialises a JSON object or `null` (`None`), and nothing else.
pub(crate) fn optional_json_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Map<String, Value>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        _ => Err(serde::de::Error::custom("expected a JSON object or null")),
    }
}

/// Now, in seconds since the Unix epoch.
pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, as the RFC 3339 UTC string with milliseconds used everywhere in the API.
pub(crate) fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// Seconds since the Unix epoch as the API's RFC 3339 string.
pub(crate) fn unix_rfc3339(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| String::new(), format_time)
}

pub(crate) fn format_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

/// Applies a JSON merge patch (RFC 7386) to `target`: objects merge recursively, `null`
/// removes a member, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// What happened to an account (`signup`, `login`, `delete`), committed with the account's own
/// write, so that the webhooks that deliver account events queue it in the same transaction.
#[derive(Debug, Clone)]
pub(crate) struct AccountEvent {
    pub(crate) kind: &'static str,
    /// The account as the API shows it.
    pub(crate) user: serde_json::Value,
    pub(crate) time: String,
    /// The trace context of the request that caused it.
    pub(crate) trace: Option<crate::trace::TraceContext>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The examples of RFC 7386, appendix A.
    #[test]
    fn merge_patch_rfc_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }
}
