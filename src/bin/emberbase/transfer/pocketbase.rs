//! A PocketBase data directory (`pb_data`, PocketBase 0.23 or newer) as a source for
//! `import`, read straight from its SQLite database and its `storage/` folder:
//!
//! - each base collection's records become documents of the collection of the same name,
//!   with their ids and `created`/`updated` times; field values are as PocketBase's API shows
//!   them (dates as PocketBase writes them, multiple selects, relations and files as arrays);
//! - the records of every auth collection but `_superusers` become accounts, with their ids
//!   (so relations to them still hold), addresses, verification, their bcrypt password hash
//!   (accepted at the next sign-in, then replaced by an argon2id one) and their other fields
//!   as the profile, and the sign-ins with a provider PocketBase linked to them
//!   (`_externalAuths`) as linked identities under PocketBase's provider names;
//! - each file of a record's file fields becomes the file `<record id>/<file name>` of the
//!   bucket named after its collection, with the content type PocketBase stored;
//! - view collections (queries), system collections and rules are not imported: the summary
//!   lists them, and the collections run on the private default rules until a project file
//!   sets theirs.

use super::{Item, Source, SourceFile, Totals};
use emberbase::{LinkedIdentity, PortableDocument, PortableUser};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The auth collection of PocketBase's own admins, which are not app users.
const SUPERUSERS: &str = "_superusers";

/// Fields of an auth record that are the account itself, not its profile.
const ACCOUNT_FIELDS: [&str; 8] = [
    "id",
    "email",
    "emailVisibility",
    "verified",
    "password",
    "tokenKey",
    "created",
    "updated",
];

#[derive(Debug, Clone, Deserialize)]
struct Field {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "maxSelect", default)]
    max_select: Option<u64>,
}

impl Field {
    /// Whether the field holds a list (a select, relation or file field of more than one).
    fn is_multiple(&self) -> bool {
        matches!(self.kind.as_str(), "select" | "relation" | "file")
            && self.max_select.is_some_and(|n| n > 1)
    }
}

#[derive(Debug, Clone)]
struct Collection {
    id: String,
    name: String,
    kind: String,
    system: bool,
    fields: Vec<Field>,
    rules: Vec<(&'static str, Option<String>)>,
}

pub(crate) struct PocketBase {
    dir: PathBuf,
    db: Connection,
    collections: Vec<Collection>,
    /// A relation field whose value becomes each record's owner.
    owner_field: Option<String>,
}

/// A time as PocketBase writes it (`2024-05-01 10:00:00.123Z`) in RFC 3339.
fn rfc3339(time: &str) -> Option<String> {
    let time = time.trim();
    (!time.is_empty()).then(|| time.replacen(' ', "T", 1))
}

/// A record's `created` and `updated` times, in RFC 3339.
fn times_of(record: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let time = |field: &str| record.get(field).and_then(Value::as_str).and_then(rfc3339);
    (time("created"), time("updated"))
}

/// A column's value as PocketBase's API shows the field.
fn json_value(field: &Field, value: Sql) -> Value {
    let text_json = |text: &str| serde_json::from_str(text).unwrap_or(Value::Null);
    match (field.kind.as_str(), value) {
        (_, Sql::Null) if field.is_multiple() => Value::Array(Vec::new()),
        (_, Sql::Null) => Value::Null,
        ("bool", Sql::Integer(n)) => Value::Bool(n != 0),
        ("bool", Sql::Text(t)) => Value::Bool(t == "true" || t == "1"),
        ("json" | "geoPoint", Sql::Text(t)) => text_json(&t),
        (_, Sql::Text(t)) if field.is_multiple() => match text_json(&t) {
            Value::Array(items) => Value::Array(items),
            _ if t.is_empty() => Value::Array(Vec::new()),
            _ => Value::Array(vec![Value::String(t)]),
        },
        ("number", Sql::Text(t)) => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        (_, Sql::Integer(n)) => Value::from(n),
        (_, Sql::Real(x)) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        (_, Sql::Text(t)) => Value::String(t),
        (_, Sql::Blob(_)) => Value::Null,
    }
}

/// The names a file field holds.
fn file_names(value: &Value) -> Vec<String> {
    match value {
        Value::String(name) if !name.is_empty() => vec![name.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A quoted SQLite identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PocketBase {
    pub(crate) fn open(dir: &Path, owner_field: Option<String>) -> Result<PocketBase, String> {
        let path = dir.join("data.db");
        if !path.is_file() {
            return Err(format!(
                "{} has no data.db: pass PocketBase's data directory (pb_data)",
                dir.display()
            ));
        }
        let db = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let fail = |e: rusqlite::Error| {
            format!(
                "{}: {e} (PocketBase 0.23 or newer is read; run a newer PocketBase on it once to migrate it)",
                path.display()
            )
        };
        let mut statement = db
            .prepare(
                "SELECT id, name, type, system, fields, listRule, viewRule, createRule, \
                 updateRule, deleteRule FROM _collections ORDER BY name",
            )
            .map_err(fail)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    Collection {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        kind: row.get(2)?,
                        system: row.get(3)?,
                        fields: Vec::new(),
                        rules: vec![
                            ("list", row.get(5)?),
                            ("view", row.get(6)?),
                            ("create", row.get(7)?),
                            ("update", row.get(8)?),
                            ("delete", row.get(9)?),
                        ],
                    },
                    row.get::<_, String>(4)?,
                ))
            })
            .map_err(fail)?;
        let mut collections = Vec::new();
        for row in rows {
            let (mut collection, fields) = row.map_err(fail)?;
            collection.fields = serde_json::from_str(&fields)
                .map_err(|e| format!("{}: collection {}: {e}", path.display(), collection.name))?;
            collections.push(collection);
        }
        drop(statement);
        Ok(PocketBase {
            dir: dir.to_path_buf(),
            db,
            collections,
            owner_field,
        })
    }

    fn is_users(c: &Collection) -> bool {
        c.kind == "auth" && c.name != SUPERUSERS
    }

    fn is_documents(c: &Collection) -> bool {
        c.kind == "base" && !c.system
    }

    fn count(&self, collection: &Collection) -> Result<u64, String> {
        self.db
            .query_row(
                &format!("SELECT COUNT(*) FROM {}", ident(&collection.name)),
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| format!("collection {}: {e}", collection.name))
    }

    /// Each record of a collection, as its fields' values by name.
    fn records(
        &self,
        collection: &Collection,
        each: &mut dyn FnMut(Map<String, Value>) -> Result<(), String>,
    ) -> Result<(), String> {
        let fail = |e: rusqlite::Error| format!("collection {}: {e}", collection.name);
        let columns: Vec<String> = collection.fields.iter().map(|f| ident(&f.name)).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY id",
            columns.join(", "),
            ident(&collection.name)
        );
        let mut statement = self.db.prepare(&sql).map_err(fail)?;
        let mut rows = statement.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let mut record = Map::new();
            for (i, field) in collection.fields.iter().enumerate() {
                let value: Sql = row.get(i).map_err(fail)?;
                record.insert(field.name.clone(), json_value(field, value));
            }
            each(record)?;
        }
        Ok(())
    }

    /// The provider identities PocketBase linked to the records of an auth collection, by
    /// record id. PocketBase keeps no address with them.
    fn identities(
        &self,
        collection: &Collection,
    ) -> Result<HashMap<String, Vec<LinkedIdentity>>, String> {
        let fail = |e: rusqlite::Error| format!("_externalAuths of {}: {e}", collection.name);
        let mut statement = self
            .db
            .prepare(
                "SELECT recordRef, provider, providerId, created FROM _externalAuths \
                 WHERE collectionRef = ?1 ORDER BY recordRef, provider",
            )
            .map_err(fail)?;
        let mut rows = statement.query([&collection.id]).map_err(fail)?;
        let mut linked: HashMap<String, Vec<LinkedIdentity>> = HashMap::new();
        while let Some(row) = rows.next().map_err(fail)? {
            let created: String = row.get(3).map_err(fail)?;
            linked
                .entry(row.get(0).map_err(fail)?)
                .or_default()
                .push(LinkedIdentity {
                    provider: row.get(1).map_err(fail)?,
                    subject: row.get(2).map_err(fail)?,
                    email: None,
                    email_verified: false,
                    linked_at: rfc3339(&created).unwrap_or(created),
                });
        }
        Ok(linked)
    }

    /// The files a record's file fields name.
    fn files_of(&self, collection: &Collection, record: &Map<String, Value>) -> Vec<SourceFile> {
        let id = record.get("id").and_then(Value::as_str).unwrap_or_default();
        let (created_at, updated_at) = times_of(record);
        let folder = self.dir.join("storage").join(&collection.id).join(id);
        collection
            .fields
            .iter()
            .filter(|f| f.kind == "file")
            .flat_map(|f| file_names(record.get(&f.name).unwrap_or(&Value::Null)))
            .map(|name| SourceFile {
                bucket: collection.name.clone(),
                path: format!("{id}/{name}"),
                content_type: stored_type(&folder.join(format!("{name}.attrs"))),
                local: folder.join(&name),
                owner: self.owner_of(record),
                created_at: created_at.clone(),
                updated_at: updated_at.clone(),
            })
            .collect()
    }

    fn owner_of(&self, record: &Map<String, Value>) -> Option<String> {
        let field = self.owner_field.as_ref()?;
        record
            .get(field)
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    }
}

/// The content type PocketBase stored beside a file (its `.attrs`), or a neutral one.
fn stored_type(attrs: &Path) -> String {
    std::fs::read(attrs)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|attrs| {
            attrs["user.content_type"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "application/octet-stream".into())
}

fn take_str(record: &mut Map<String, Value>, field: &str) -> String {
    match record.remove(field) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

impl Source for PocketBase {
    fn describe(&self) -> String {
        format!("the PocketBase data directory {}", self.dir.display())
    }

    fn totals(&mut self) -> Result<Totals, String> {
        let mut users = 0;
        let mut documents = 0;
        for collection in &self.collections {
            if Self::is_users(collection) {
                users += self.count(collection)?;
            } else if Self::is_documents(collection) {
                documents += self.count(collection)?;
            }
        }
        Ok(Totals {
            users: Some(users),
            documents: Some(documents),
            files: None,
        })
    }

    fn read(&mut self, out: &mut dyn FnMut(Item) -> Result<(), String>) -> Result<(), String> {
        let mut files = Vec::new();
        for collection in self.collections.iter().filter(|c| Self::is_users(c)) {
            let mut identities = self.identities(collection)?;
            self.records(collection, &mut |mut record| {
                files.extend(self.files_of(collection, &record));
                let id = take_str(&mut record, "id");
                let linked = identities.remove(&id).unwrap_or_default();
                let email = take_str(&mut record, "email");
                let password_hash = take_str(&mut record, "password");
                let verified = record.get("verified") == Some(&Value::Bool(true));
                let created_at = rfc3339(&take_str(&mut record, "created"));
                record.retain(|name, _| !ACCOUNT_FIELDS.contains(&name.as_str()));
                out(Item::User(PortableUser {
                    id,
                    email,
                    role: "user".into(),
                    created_at,
                    email_verified: verified,
                    disabled: false,
                    profile: record,
                    password_hash,
                    totp: None,
                    identities: linked,
                }))
            })?;
        }
        for collection in self.collections.iter().filter(|c| Self::is_documents(c)) {
            self.records(collection, &mut |mut record| {
                files.extend(self.files_of(collection, &record));
                let owner = self.owner_of(&record);
                let id = take_str(&mut record, "id");
                let (created_at, updated_at) = times_of(&record);
                for autodate in ["created", "updated"] {
                    let is_autodate = collection
                        .fields
                        .iter()
                        .any(|f| f.name == autodate && f.kind == "autodate");
                    if is_autodate {
                        record.remove(autodate);
                    }
                }
                out(Item::Document {
                    collection: collection.name.clone(),
                    document: PortableDocument {
                        id,
                        data: record,
                        owner,
                        version: 1,
                        created_at,
                        updated_at,
                    },
                })
            })?;
        }
        for file in files {
            out(Item::File(file))?;
        }
        Ok(())
    }

    fn left_out(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for c in &self.collections {
            if c.name == SUPERUSERS {
                notes.push(format!(
                    "{SUPERUSERS}: PocketBase's admins (make Emberbase admins with `emberbase admin create`)"
                ));
            } else if c.kind == "view" {
                notes.push(format!("{}: a view collection (a query, not data)", c.name));
            } else if Self::is_documents(c) {
                let rules: Vec<String> = c
                    .rules
                    .iter()
                    .map(|(name, rule)| match rule {
                        Some(rule) => format!("{name} {rule:?}"),
                        None => format!("{name} admins only"),
                    })
                    .collect();
                notes.push(format!(
                    "{}: its PocketBase rules ({}); it runs on the default rules until you set its own",
                    c.name,
                    rules.join(", ")
                ));
            }
        }
        notes
    }
}
