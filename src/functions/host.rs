//! The host side of the guest ABI's `call`: document reads and writes with the same semantics,
//! validation and change events as HTTP, made as the function (admin rights, one depth deeper
//! than the event it handles).

use super::runtime::Host;
use crate::auth::Principal;
use crate::docs::{Documents, ListParams};
use crate::error::{Error, ErrorCode};
use serde_json::{json, Value};

pub struct DocumentHost {
    pub docs: Documents,
    pub who: Principal,
    pub runtime: tokio::runtime::Handle,
    pub function: String,
}

fn field<'a>(request: &'a Value, name: &str) -> Result<&'a str, Error> {
    request
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_request(format!("`{name}` must be a string")))
}

impl DocumentHost {
    fn answer(&self, op: &str, request: &Value) -> Result<Value, Error> {
        let who = &self.who;
        let docs = &self.docs;
        let collection = field(request, "collection")?;
        let id = || field(request, "id");
        let data = || request.get("data").cloned().unwrap_or(Value::Null);
        let if_version = request.get("if_version").and_then(Value::as_u64);
        let to_json = |doc| serde_json::to_value(doc).map_err(Error::internal);
        match op {
            "get" => match docs.get(who, collection, id()?) {
                Ok(doc) => to_json(doc),
                Err(e) if e.code == ErrorCode::NotFound => Ok(Value::Null),
                Err(e) => Err(e),
            },
            "create" => to_json(
                self.runtime
                    .block_on(docs.create(who, collection, data()))?,
            ),
            "set" => {
                let (doc, _) =
                    self.runtime
                        .block_on(docs.set(who, collection, id()?, data(), if_version))?;
                to_json(doc)
            }
            "update" => to_json(self.runtime.block_on(docs.update(
                who,
                collection,
                id()?,
                data(),
                if_version,
            ))?),
            "delete" => {
                self.runtime
                    .block_on(docs.delete(who, collection, id()?, if_version))?;
                Ok(json!({"deleted": true}))
            }
            "query" => {
                let text = |name: &str| request.get(name).and_then(Value::as_str);
                let params = ListParams {
                    filter: text("filter"),
                    sort: text("sort"),
                    limit: request
                        .get("limit")
                        .and_then(Value::as_u64)
                        .map(|n| n as usize),
                    cursor: text("cursor"),
                };
                let page = docs.list(who, collection, &params)?;
                serde_json::to_value(page).map_err(Error::internal)
            }
            _ => Err(Error::bad_request(format!("unknown op {op:?}"))),
        }
    }
}

impl Host for DocumentHost {
    fn call(&self, request: &Value) -> Option<Vec<u8>> {
        let op = request.get("op").and_then(Value::as_str)?;
        if !matches!(op, "get" | "create" | "set" | "update" | "delete" | "query") {
            return None;
        }
        let reply = match self.answer(op, request) {
            Ok(value) => value,
            Err(e) => json!({"error": {"code": e.code.as_str(), "message": e.message}}),
        };
        serde_json::to_vec(&reply).ok()
    }

    fn log(&self, level: &str, message: &str) {
        let function = self.function.as_str();
        match level {
            "error" => tracing::error!(function, "{message}"),
            "warn" => tracing::warn!(function, "{message}"),
            "info" => tracing::info!(function, "{message}"),
            _ => tracing::debug!(function, "{message}"),
        }
    }
}
