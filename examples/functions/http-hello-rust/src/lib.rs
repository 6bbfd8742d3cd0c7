//! The HTTP example in Rust: `POST /v1/functions/hello-rust {"name": "Ada"}` answers a
//! greeting, the caller's email and how many documents `greetings` holds after recording this
//! one. Trigger: `{"on": "http"}`.

use emberbase_function::{db, function, json, log, Value};

function!(|event: Value| -> Option<Value> {
    let name = event["body"]["name"]
        .as_str()
        .unwrap_or("world")
        .to_string();
    let caller = event["auth"]["email"]
        .as_str()
        .unwrap_or("anonymous")
        .to_string();
    if let Err(e) = db::create("greetings", &json!({"name": name})) {
        log::error(&format!("could not record the greeting: {}", e.message));
        return Some(json!({"status": 500, "body": {"error": e.message}}));
    }
    let count = db::query("greetings", None, None, Some(1000)).map_or(0, |items| items.len());
    Some(json!({"status": 200, "body": {
        "greeting": format!("hello, {name}"), "caller": caller, "greetings": count
    }}))
});
