//! Every shell command in the README, the examples' READMEs and `docs/` runs against a real
//! server, the way a reader pastes them, so that they cannot drift from the product.
//!
//! Each file's `sh` blocks run in order as one bash script, in a temporary folder laid out like
//! the repository (a copy of `examples/` and `sdk/functions/`, and `emberbase_data/service_key`
//! holding the test server's key), with `127.0.0.1:7070` pointed at the test server and the
//! built `emberbase` first on `PATH`. `curl` is wrapped to record every response's status: a
//! command fails the test on a `404`, `405` or `5xx`, or on any other `4xx` unless it carries a
//! placeholder (`...`) the reader is meant to fill in. A `GET` that finds nothing yet is tried
//! again for a few seconds, as a reader would, since triggers run just after the write that
//! fires them. Commands that cannot run here are listed in [`EXCLUDED`], each with its reason.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A command (a whole line of an `sh` block, as written) that is not run, and why.
struct Excluded {
    file: &'static str,
    line: &'static str,
    reason: &'static str,
}

const SERVE: &str = "the test starts the server itself, on a free port that the commands' \
                     127.0.0.1:7070 is pointed at";
const SDK_BUILD: &str = "tests/it/sdk.rs runs it in the same folder (and the SDK's tests); \
                         both at once would race";

const CONNECTION: &str = "it needs the id of a connection that a stream holds open while it runs, \
                          which a command here cannot; tests/it/realtime.rs makes the same requests \
                          on a live connection";

const EXCLUDED: &[Excluded] = &[
    Excluded {
        file: "docs/functions.md",
        line: "npx emberbase functions bundle index.ts --out function.js          # to read, or to upload yourself",
        reason: "it needs a function project with the SDK installed; the order-total example's \
                 README (run here too) and sdk/typescript/test/functions.test.mjs bundle and deploy",
    },
    Excluded {
        file: "docs/functions.md",
        line: "EB_SERVICE_KEY=... npx emberbase functions deploy order-total index.ts --config config.json --url http://127.0.0.1:7070",
        reason: "the same: it needs a function project with the SDK installed",
    },
    Excluded {
        file: "README.md",
        line: r#"  -H 'Content-Type: application/json' -d '{"event_id": "01J...", "version": 1}'"#,
        reason: "it needs an event id from the invocation log, which a command here cannot wait \
                 for; tests/it/functions.rs replays a dead event",
    },
    Excluded {
        file: "README.md",
        line: r#"curl -s -X POST $EB/admin/functions/comment-counter/replay -H "Authorization: Bearer $KEY" \"#,
        reason: "the first line of the replay command excluded below",
    },
    Excluded {
        file: "README.md",
        line: r#"curl -s -X POST $EB/admin/webhooks/$HOOK/messages/msg_…/redeliver -H "Authorization: Bearer $KEY""#,
        reason: "it needs a dead message, which takes hours of failed attempts; \
                 tests/it/webhooks.rs redelivers one",
    },
    Excluded {
        file: "README.md",
        line: r#"curl -s -X PUT "$EB/realtime/connection/$CONNECTION/subscriptions/open-todos" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"subscribe": "todos", "filter": "data.done == false"}'"#,
        reason: CONNECTION,
    },
    Excluded {
        file: "README.md",
        line: r#"curl -s -X DELETE "$EB/realtime/connection/$CONNECTION/subscriptions/open-todos" -H "Authorization: Bearer $TOKEN""#,
        reason: CONNECTION,
    },
    Excluded {
        file: "README.md",
        line: "cargo run --release -- serve      # start the server: http://127.0.0.1:7070, data in ./emberbase_data",
        reason: SERVE,
    },
    Excluded {
        file: "README.md",
        line: "cargo test --locked               # run the whole test suite",
        reason: "it is this suite",
    },
    Excluded {
        file: "examples/node-quickstart/README.md",
        line: "cargo run --release -- serve                      # in one terminal",
        reason: SERVE,
    },
    Excluded {
        file: "examples/node-quickstart/README.md",
        line: "(cd sdk/typescript && npm ci && npm run build)    # the SDK, once",
        reason: SDK_BUILD,
    },
    Excluded {
        file: "examples/node-quickstart/README.md",
        line: "cd examples/node-quickstart && npm install && npm start",
        reason: "tests/it/sdk.rs runs the quickstart against the SDK it builds",
    },
    Excluded {
        file: "examples/todo-web/README.md",
        line: "EMBERBASE_AUTH__REDIRECT_URLS='[\"http://127.0.0.1:8000/examples/todo-web/\"]' cargo run --release -- serve",
        reason: SERVE,
    },
    Excluded {
        file: "examples/todo-web/README.md",
        line: "(cd sdk/typescript && npm ci && npm run build)    # dist/emberbase.browser.js",
        reason: SDK_BUILD,
    },
    Excluded {
        file: "examples/todo-web/README.md",
        line: "python3 -m http.server 8000                       # any static server, from the repository root",
        reason: "a static server that runs until stopped; the browser test (tests/it/sdk.rs) \
                 serves the page the same way and drives it in Chromium",
    },
    Excluded {
        file: "sdk/typescript/README.md",
        line: "EB_SERVICE_KEY=$(cat emberbase_data/service_key) npx emberbase types --url http://127.0.0.1:7070 --out src/emberbase-types.ts",
        reason: "outside an app that has the SDK installed, npx would fetch a package from the \
                 registry; the SDK's own tests (test/types.test.mjs, run by tests/it/sdk.rs) \
                 run this command's CLI against a server and type-check an app with its output",
    },
    Excluded {
        file: "sdk/typescript/README.md",
        line: "npm ci",
        reason: SDK_BUILD,
    },
    Excluded {
        file: "sdk/typescript/README.md",
        line: "npm run generate          # src/generated/schema.ts from ../openapi.json (after `cargo run -- openapi > sdk/openapi.json`)",
        reason: "tests/it/sdk.rs runs `npm run check:generated`, which fails when generating \
                 would change the committed types",
    },
    Excluded {
        file: "sdk/typescript/README.md",
        line: "npm run check:generated   # fails when the committed types are stale (the Rust suite runs it)",
        reason: SDK_BUILD,
    },
    Excluded {
        file: "sdk/typescript/README.md",
        line: "npm run build             # dist/: ESM + .d.ts, and dist/emberbase.browser.js (one file, for <script type=module>)",
        reason: SDK_BUILD,
    },
    Excluded {
        file: "sdk/typescript/README.md",
        line: "npm test                  # against target/debug/emberbase, or SDK_TEST_BIN=/path/to/emberbase",
        reason: SDK_BUILD,
    },
];

/// A command that shows a refusal on purpose: its status is expected, not a failure.
struct Refusal {
    file: &'static str,
    /// Text of the command (as curl gets its arguments).
    command: &'static str,
    status: u16,
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        file: "README.md",
        command: r#"-d {"text": "", "stars": 9}"#,
        status: 400,
    },
    Refusal {
        file: "examples/functions/post-guard/README.md",
        command: r#"-d {"title": " "}"#,
        status: 400,
    },
    Refusal {
        file: "examples/functions/post-guard/README.md",
        command: "/collections/posts/docs/hello",
        status: 403,
    },
    Refusal {
        file: "examples/functions/order-total/README.md",
        command: r#"-d {"lines": []}"#,
        status: 400,
    },
];

/// Records each response's status (to `$EB_STATUS_LOG`) and retries a `GET` that answers
/// `404` for up to 10 s. A stream (`-N`) is cut after 2 s, which is how it ends here.
const PRELUDE: &str = r#"set -euo pipefail
is_get() {
  local arg post=0 query=0
  for arg in "$@"; do
    case "$arg" in
      -X|--request) return 1 ;;
      -d|--data|--data-binary|--data-raw|--data-urlencode|-F|--form) post=1 ;;
      -G|--get) query=1 ;;
      -I|--head) return 1 ;;
    esac
  done
  [ $post -eq 0 ] || [ $query -eq 1 ]
}
curl() {
  local tries=0 out status rc limit=60
  case " $* " in *" -N "*) limit=2 ;; esac
  out=$(mktemp)
  while :; do
    rc=0
    command curl --max-time "$limit" -w '%{stderr}%{http_code}\n' "$@" >"$out" 2>"$out.status" || rc=$?
    if [ $rc -ne 0 ] && ! { [ $rc -eq 28 ] && [ "$limit" = 2 ]; }; then
      cat "$out"; cat "$out.status" >&2; return $rc
    fi
    status=$(tail -n 1 "$out.status")
    if [ "$status" = 404 ] && [ $tries -lt 20 ] && is_get "$@"; then
      tries=$((tries + 1)); sleep 0.5; continue
    fi
    cat "$out"
    local command="$*"
    printf '%s\t%s\n' "$status" "${command//$'\n'/ }" >> "$EB_STATUS_LOG"
    rm -f "$out" "$out.status"
    return 0
  done
}
"#;

/// The `sh` blocks of a Markdown file, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(current.take());
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Copies `from` to `to`, leaving out what builds produce.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if matches!(name.as_ref(), "node_modules" | "target" | "dist") || name.ends_with(".wasm") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&*name));
        } else {
            std::fs::copy(&path, to.join(&*name)).unwrap();
        }
    }
}

/// A folder laid out like the repository for the commands of a README to run in.
fn workspace(srv: &TestServer) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&root.join("examples"), &dir.path().join("examples"));
    for sdk in ["sdk/functions", "sdk/typescript"] {
        copy_tree(&root.join(sdk), &dir.path().join(sdk));
    }
    std::fs::create_dir_all(dir.path().join("emberbase_data")).unwrap();
    std::fs::write(dir.path().join("emberbase_data/service_key"), &srv.key).unwrap();
    // The picture the files quickstart uploads: a 1x1 PNG.
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    std::fs::write(dir.path().join("me.png"), PNG).unwrap();
    dir
}

/// Runs the `sh` blocks of `file` (relative to the repository) against `srv` in `dir` and
/// returns what they printed; panics with the output and the failing responses when a command
/// fails.
fn run_file(srv: &TestServer, dir: &Path, file: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let blocks = sh_blocks(&text);
    assert!(!blocks.is_empty(), "{file} has no sh block");
    let mut script = String::from(PRELUDE);
    for block in &blocks {
        for line in block.lines() {
            match EXCLUDED.iter().find(|e| e.file == file && e.line == line) {
                Some(e) => script.push_str(&format!("# excluded: {}", e.reason)),
                None => script.push_str(&line.replace("127.0.0.1:7070", &srv.addr.to_string())),
            }
            script.push('\n');
        }
    }
    let log = dir.join(format!("statuses-{}.tsv", file.replace('/', "_")));
    let bin_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_emberbase"))
        .parent()
        .unwrap()
        .into();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("PATH", path)
        .env("EB_STATUS_LOG", &log)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a command of {file} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let statuses = std::fs::read_to_string(&log).unwrap_or_default();
    let refused: Vec<&str> = statuses
        .lines()
        .filter(|line| {
            let (status, command) = line.split_once('\t').unwrap_or((line, ""));
            let code: u16 = status.parse().unwrap_or(0);
            if REFUSALS
                .iter()
                .any(|r| r.file == file && r.status == code && command.contains(r.command))
            {
                return false;
            }
            let placeholder = command.contains("...") || command.contains('…');
            match code {
                404 | 405 | 0 => true,
                400..=499 => !placeholder,
                500.. => true,
                _ => false,
            }
        })
        .collect();
    assert!(
        refused.is_empty(),
        "commands of {file} were refused:\n{}\n--- stdout\n{stdout}",
        refused.join("\n")
    );
    stdout.into_owned()
}

#[test]
fn every_exclusion_and_refusal_names_a_command_that_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in EXCLUDED {
        let text = std::fs::read_to_string(root.join(e.file)).unwrap();
        let found = sh_blocks(&text)
            .iter()
            .any(|block| block.lines().any(|line| line == e.line));
        assert!(
            found,
            "{}: no command {:?} (stale exclusion)",
            e.file, e.line
        );
    }
    for r in REFUSALS {
        let text = std::fs::read_to_string(root.join(r.file)).unwrap();
        let arguments = r.command.replacen("-d ", "-d '", 1);
        assert!(
            text.contains(&arguments),
            "{}: no command {:?} (stale)",
            r.file,
            r.command
        );
    }
}

#[test]
fn the_readme_commands_work() {
    let srv = TestServer::start();
    let dir = workspace(&srv);
    run_file(&srv, dir.path(), "README.md");
}

/// The Rust example, which needs the wasm32 target (its own test).
const RUST_EXAMPLE: &str = "examples/functions/http-hello-rust/README.md";

/// Every Markdown file of the examples, `docs/` and the SDKs that has an `sh` block, relative
/// to the repository, except the README (its own test).
fn documents() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "node_modules" | "target" | "dist") {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".md")
                && !sh_blocks(&std::fs::read_to_string(&path).unwrap()).is_empty()
            {
                let relative = path.strip_prefix(root).unwrap();
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["examples", "docs", "sdk"] {
        walk(root, &root.join(dir), &mut out);
    }
    out.sort();
    out
}

#[test]
fn the_examples_docs_and_sdk_commands_work() {
    let found = documents();
    assert!(found.iter().any(|f| f == RUST_EXAMPLE));
    assert!(found.iter().any(|f| f == "docs/functions.md"));
    let srv = TestServer::start();
    for file in found.iter().filter(|f| *f != RUST_EXAMPLE) {
        let dir = workspace(&srv);
        run_file(&srv, dir.path(), file);
    }
}

#[test]
fn the_rust_example_commands_work() {
    if !wasm32_target() {
        return;
    }
    let srv = TestServer::start();
    let dir = workspace(&srv);
    let stdout = {
        let _build = guest_build();
        run_file(&srv, dir.path(), RUST_EXAMPLE)
    };
    // The example records each greeting and counts them.
    assert!(
        stdout.contains(r#""greeting":"hello, Ada""#) && stdout.contains(r#""greetings":1"#),
        "{stdout}"
    );
}
