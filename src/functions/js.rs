//! JavaScript functions. The server ships a JavaScript engine (QuickJS compiled to WebAssembly
//! by `js/build.sh` from pinned inputs; its C side is `js/engine.c`, its `emberbase` global
//! `js/prelude.js`). A JavaScript upload is loaded into the engine once (`load`: compile the ES
//! module, run its top level, keep its default export), and the engine's linear memory after
//! that is the function's artifact: a [`Snapshot`] of what differs from the engine's fresh
//! memory. Every event instantiates the engine, writes the snapshot over its memory and calls
//! `handle`, so it starts from a loaded module in a fresh sandbox without paying for the load.

use std::sync::Arc;

/// The engine module, as `js/build.sh` built it.
pub(super) const ENGINE: &[u8] = include_bytes!("js/engine.wasm");

/// What `js/build.sh` recorded of its output: `<sha256>  engine.wasm`.
pub(super) const ENGINE_RECORD: &str = include_str!("js/engine.wasm.sha256");

/// The start of a snapshot artifact (a compiled module's artifact never starts so).
const MAGIC: &[u8; 8] = b"EBJS\x01\0\0\0";

/// Runs of equal bytes at least this long end a changed run, so that a snapshot does not carry
/// the engine's untouched memory.
const GAP: usize = 64;

/// What a function's source is: a WebAssembly module, or JavaScript run by the shipped engine.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Wasm,
    JavaScript,
}

impl Language {
    /// A WebAssembly module starts with its header; anything else stored as a function's
    /// source was uploaded as JavaScript.
    pub fn of(source: &[u8]) -> Language {
        if source.starts_with(b"\0asm") {
            Language::Wasm
        } else {
            Language::JavaScript
        }
    }
}

/// The hash of the shipped engine, hex.
pub(super) fn engine_sha256() -> &'static str {
    ENGINE_RECORD.split_whitespace().next().unwrap_or_default()
}

/// A function's memory after its module loaded: the size, and the bytes that differ from a
/// fresh engine's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// Linear memory pages (64 KiB each).
    pub(super) pages: u32,
    /// Changed runs: offset and bytes.
    pub(super) runs: Vec<(u32, Vec<u8>)>,
}

impl Snapshot {
    /// The runs where `loaded` differs from `fresh` (the memory a new instance starts with;
    /// beyond its end, zeros).
    pub(super) fn between(fresh: &[u8], loaded: &[u8], pages: u32) -> Snapshot {
        let at = |i: usize| fresh.get(i).copied().unwrap_or(0);
        let mut runs = Vec::new();
        let mut i = 0;
        while i < loaded.len() {
            if loaded[i] == at(i) {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i + 1;
            let mut same = 0;
            i += 1;
            while i < loaded.len() && same < GAP {
                if loaded[i] == at(i) {
                    same += 1;
                } else {
                    same = 0;
                    end = i + 1;
                }
                i += 1;
            }
            runs.push((start as u32, loaded[start..end].to_vec()));
        }
        Snapshot { pages, runs }
    }

    /// The artifact: magic, the engine's hash, the pages, then each run.
    pub(super) fn encode(&self) -> Vec<u8> {
        let size: usize = self.runs.iter().map(|(_, b)| b.len() + 8).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 64 + 8 + size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(engine_sha256().as_bytes());
        out.extend_from_slice(&self.pages.to_le_bytes());
        out.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for (offset, bytes) in &self.runs {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Whether `artifact` is a snapshot (rather than a compiled module).
    pub(super) fn is_snapshot(artifact: &[u8]) -> bool {
        artifact.starts_with(MAGIC)
    }

    /// Reads an artifact `encode` wrote for the shipped engine.
    pub(super) fn decode(artifact: &[u8]) -> Result<Arc<Snapshot>, String> {
        let bad = || "the JavaScript snapshot is damaged".to_string();
        let rest = artifact.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
        let (engine, mut rest) = rest.split_at_checked(64).ok_or_else(bad)?;
        if engine != engine_sha256().as_bytes() {
            return Err("the JavaScript snapshot was made by another engine".into());
        }
        fn word(rest: &mut &[u8]) -> Option<u32> {
            let (w, tail) = rest.split_first_chunk::<4>()?;
            *rest = tail;
            Some(u32::from_le_bytes(*w))
        }
        let pages = word(&mut rest).ok_or_else(bad)?;
        let count = word(&mut rest).ok_or_else(bad)?;
        let mut runs = Vec::new();
        for _ in 0..count {
            let offset = word(&mut rest).ok_or_else(bad)?;
            let len = word(&mut rest).ok_or_else(bad)? as usize;
            let (bytes, tail) = rest.split_at_checked(len).ok_or_else(bad)?;
            rest = tail;
            if offset as u64 + len as u64 > pages as u64 * 65536 {
                return Err(bad());
            }
            runs.push((offset, bytes.to_vec()));
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(Arc::new(Snapshot { pages, runs }))
    }
}

/// What `load` reports of a module that does not load: `{"message", "stack"?}`.
#[derive(serde::Deserialize)]
struct LoadError {
    message: String,
    #[serde(default)]
    stack: Option<String>,
}

/// A one-paragraph reason from `load`'s error report, with the line and column of the source
/// where the engine gave them (`function.js:3:10` in the stack).
pub(super) fn load_error(report: &[u8]) -> String {
    let Ok(error) = serde_json::from_slice::<LoadError>(report) else {
        return format!(
            "the JavaScript module does not load: {}",
            String::from_utf8_lossy(report)
        );
    };
    let place = error.stack.as_deref().and_then(source_position);
    match place {
        Some((line, column)) => format!(
            "the JavaScript module does not load: {} (line {line}, column {column})",
            error.message
        ),
        None => format!("the JavaScript module does not load: {}", error.message),
    }
}

/// The first `function.js:LINE:COLUMN` of a stack.
fn source_position(stack: &str) -> Option<(u32, u32)> {
    let at = stack.find("function.js:")? + "function.js:".len();
    let mut parts = stack[at..].splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let column: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((line, column.parse().ok()?))
}

/// An uncaught exception as the invocation record shows it: the message, then the stack.
pub(super) fn thrown(report: &[u8]) -> String {
    match serde_json::from_slice::<LoadError>(report) {
        Ok(LoadError {
            message,
            stack: Some(stack),
        }) if !stack.trim().is_empty() => format!("{message}\n{}", stack.trim_end()),
        Ok(LoadError { message, .. }) => message,
        Err(_) => String::from_utf8_lossy(report).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_shipped_engine_is_the_one_its_build_recorded() {
        let actual = super::super::registry::hex(&sha2::Sha256::digest(ENGINE));
        assert_eq!(
            actual,
            engine_sha256(),
            "src/functions/js/engine.wasm does not match engine.wasm.sha256: rebuild it with src/functions/js/build.sh"
        );
    }

    #[test]
    fn snapshots_keep_only_what_changed_and_read_back() {
        let fresh = vec![7u8; 1000];
        let mut loaded = fresh.clone();
        loaded[10] = 0;
        loaded[12] = 1;
        loaded[500] = 9;
        loaded.extend_from_slice(&[0; 100]);
        loaded[1050] = 3;
        let snapshot = Snapshot::between(&fresh, &loaded, 1);
        assert_eq!(
            snapshot.runs,
            vec![(10, vec![0, 7, 1]), (500, vec![9]), (1050, vec![3])]
        );
        let back = Snapshot::decode(&snapshot.encode()).expect("decodes");
        assert_eq!(*back, snapshot);
        assert!(Snapshot::decode(&snapshot.encode()[..30]).is_err());
    }

    #[test]
    fn load_errors_say_where() {
        let report = br#"{"message":"SyntaxError: unexpected token in expression: ')'","stack":"    at function.js:3:10\n"}"#;
        assert_eq!(
            load_error(report),
            "the JavaScript module does not load: SyntaxError: unexpected token in expression: ')' (line 3, column 10)"
        );
    }
}
