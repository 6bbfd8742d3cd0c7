//! Several nodes over one PostgreSQL database: each sees every acknowledged write, tokens and
//! keys work on any node, configuration changed on one reaches the others, and realtime
//! subscribers on one node receive the writes of all of them, in commit order, and resume on
//! another node.

use crate::common::{fast, ids, login_token, signup, with_token, TestServer, SECRETS_KEY};
use crate::functions::{deploy, docs, env_reader, recorder};
use crate::realtime::Sse;
use emberbase::config::Config;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `n` nodes on the database of `url`, each with its own data directory.
fn nodes(url: &str, n: usize, configure: impl Fn(&mut Config)) -> Vec<TestServer> {
    (0..n)
        .map(|_| {
            TestServer::start_with(|c| {
                c.store.url = url.to_string();
                fast(c);
                configure(c);
            })
        })
        .collect()
}

/// Retries `check` until it holds, for at most ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_nodes_share_writes_and_one_ordered_change_feed() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let mut started = nodes(&url, 3, |_| {}).into_iter();
    let (a, b, c) = (
        started.next().unwrap(),
        started.next().unwrap(),
        started.next().unwrap(),
    );
    assert_eq!(a.key, b.key, "one service key for the cluster");
    assert_eq!(a.key, c.key);

    // A subscriber on C, then writes spread over A and B by several clients at once.
    let (mut sse, _) = Sse::live(&c, "subscribe=notes", Some(&c.key));
    let writers_nodes = [&a, &b];
    let written: Vec<(usize, String)> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let nodes = &writers_nodes;
                s.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let node = (w + i) % 2;
                            let doc = nodes[node]
                                .post("/v1/collections/notes/docs", &json!({"w": w, "i": i}))
                                .expect(201)
                                .json;
                            (node, doc["id"].as_str().unwrap().to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let created: HashSet<String> = written.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(created.len(), 30);

    // Every node reads every acknowledged write at once: no node caches documents.
    for node in [&a, &b, &c] {
        let list = node
            .get("/v1/collections/notes/docs?limit=100")
            .expect(200)
            .json;
        let seen: HashSet<String> = ids(&list).into_iter().collect();
        assert_eq!(seen, created);
    }

    // C's subscriber saw each write once, in commit order (ids of events only grow).
    let events = sse.take(30);
    let mut last = 0;
    let mut seen = HashSet::new();
    for event in &events {
        assert_eq!(event.event, "create", "{event:?}");
        let id = event.id.unwrap();
        assert!(id > last, "events in commit order: {id} after {last}");
        last = id;
        assert!(seen.insert(event.data["doc"]["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(seen, created);

    // C goes away; a client resumes on B from the middle of what it saw.
    let middle = events[14].id.unwrap();
    drop(sse);
    let rest: Vec<String> = events[15..]
        .iter()
        .map(|e| e.data["doc"]["id"].as_str().unwrap().to_string())
        .collect();
    c.stop();
    let mut resumed = Sse::open(&b, "subscribe=notes", Some(&b.key), Some(middle)).unwrap();
    let replayed: Vec<String> = resumed
        .take(15)
        .iter()
        .map(|e| e.data["doc"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        replayed, rest,
        "B replays exactly what followed, in the same order"
    );
}

#[test]
fn tokens_keys_and_configuration_reach_every_node() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let started = nodes(&url, 2, |c| c.store.poll_ms = 50);
    let (a, b) = (&started[0], &started[1]);

    // A user signed up on A is signed in on B with A's token.
    let session = signup(a, "ada@example.com");
    let token = session["access_token"].as_str().unwrap().to_string();
    let me = with_token(b, "GET", "/v1/auth/me", &token, None).expect(200);
    assert_eq!(me.json["email"], "ada@example.com");
    // Its refresh token works on the other node too, once.
    let refresh = json!({"refresh_token": session["refresh_token"]});
    let renewed = b.post("/v1/auth/refresh", &refresh).expect(200);
    a.post("/v1/auth/refresh", &refresh).expect(401);
    assert!(renewed.json["access_token"].is_string());

    // Rules set on A govern writes on B at once (a write's commit checks the configuration
    // epoch, and a write that B decided under the old rules runs again under the new ones),
    // and reads on B as soon as B reloads them.
    a.put(
        "/v1/admin/collections/posts",
        &json!({"rules": {"read": "auth != null && doc.owner == auth.id", "create": "false"}}),
    )
    .expect(200);
    let post = json!({"t": 1});
    with_token(b, "POST", "/v1/collections/posts/docs", &token, Some(&post)).expect(403);
    let bob = signup(b, "bob@example.com")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    crate::common::share(a, "posts");
    with_token(b, "POST", "/v1/collections/posts/docs", &token, Some(&post)).expect(201);
    eventually("B reading under A's new read rule", || {
        let list = with_token(b, "GET", "/v1/collections/posts/docs", &bob, None).expect(200);
        list.json["items"].as_array().unwrap().len() == 1
    });

    // An index declared on A is built once and used by B.
    a.put(
        "/v1/admin/collections/posts",
        &json!({"rules": {"read": "auth != null", "create": "auth != null"}, "indexes": [["data.t"]]}),
    )
    .expect(200);
    eventually("B seeing the index ready", || {
        b.get("/v1/admin/collections/posts").json["index_states"][0]["state"] == "ready"
    });

    // A key rotated on A signs tokens that B accepts at once, and B signs with it later.
    a.post("/v1/admin/auth/rotate-key", &json!({})).expect(200);
    let fresh = login_token(a, "ada@example.com");
    with_token(b, "GET", "/v1/auth/me", &fresh, None).expect(200);
    let kid = |token: &str| -> String {
        use base64::Engine;
        let header = token.split('.').next().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    eventually("B signing with the rotated key", || {
        kid(&login_token(b, "ada@example.com")) == kid(&fresh)
    });

    // A function's secret set on A opens on B: the nodes share functions.secrets_key.
    deploy(
        a,
        "envy",
        &env_reader("API_KEY"),
        json!({"triggers": [{"on": "http"}]}),
    );
    a.put(
        "/v1/admin/functions/envy/secrets/API_KEY",
        &json!({"value": "sk_cluster_value"}),
    )
    .expect(200);
    eventually("B running the function with its secret", || {
        let answer = b.post("/v1/functions/envy", &json!({}));
        answer.status == 200 && answer.text.contains("[secret]")
    });
}

#[test]
fn each_event_runs_once_on_one_node_and_moves_when_that_node_goes() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let mut started = nodes(&url, 3, |c| {
        c.store.poll_ms = 50;
        c.functions.retry_base_ms = 50;
    })
    .into_iter();
    let (a, b, c) = (
        started.next().unwrap(),
        started.next().unwrap(),
        started.next().unwrap(),
    );
    // Uploaded on A, the module reaches B and C through the shared store.
    deploy(
        &a,
        "record",
        &recorder("seen", None),
        json!({"triggers": [{"on": "create", "collection": "inbox"}]}),
    );
    deploy(
        &a,
        "tick",
        &recorder("ticks", None),
        json!({"triggers": [{"on": "schedule", "cron": "* * * * * *"}]}),
    );
    for (i, node) in [&a, &b, &c, &b, &c, &a].into_iter().enumerate() {
        node.post("/v1/collections/inbox/docs", &json!({"i": i}))
            .expect(201);
    }
    let events = |node: &TestServer| -> Vec<String> {
        docs(node, "seen")
            .iter()
            .map(|d| d["data"]["event"]["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    eventually("six deliveries", || events(&c).len() >= 6);
    std::thread::sleep(Duration::from_millis(500));
    let delivered = events(&b);
    let unique: HashSet<&String> = delivered.iter().collect();
    assert_eq!(delivered.len(), 6, "each event once: {delivered:?}");
    assert_eq!(unique.len(), 6);

    // A and B stop; C takes over the functions' leases once they end, and delivers on.
    a.stop();
    b.stop();
    for i in 6..9 {
        c.post("/v1/collections/inbox/docs", &json!({"i": i}))
            .expect(201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while events(&c).len() < 9 {
        assert!(
            Instant::now() < deadline,
            "C never delivered the later events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every schedule tick fired once in the cluster, whichever node fired it: one event per
    // tick (a delivery cut short by a stopping node runs again, with the same event id).
    let ticks_by_time = || {
        let mut ticks: std::collections::HashMap<String, HashSet<String>> = Default::default();
        for doc in docs(&c, "ticks") {
            let event = &doc["data"]["event"];
            ticks
                .entry(event["scheduled_for"].as_str().unwrap().to_string())
                .or_default()
                .insert(event["event_id"].as_str().unwrap().to_string());
        }
        ticks
    };
    // Ticks missed while no node held the schedule's lease fire once, as the latest: wait for
    // two, however slow the machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ticks = ticks_by_time();
    while ticks.len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        ticks = ticks_by_time();
    }
    assert!(ticks.len() >= 2, "ticks fired: {ticks:?}");
    assert!(
        ticks.values().all(|events| events.len() == 1),
        "a tick fired twice: {ticks:?}"
    );
}

#[test]
fn a_database_restart_answers_503_then_recovers_without_losing_writes() {
    if crate::pg::cluster().is_none() {
        return;
    }
    // A cluster of its own: the shared one serves the other tests meanwhile.
    let own = crate::pg::Cluster::start().unwrap();
    let url = own.database();
    let node = TestServer::start_with(|c| {
        c.store.url = url.clone();
        fast(c);
    });
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    let statuses = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r = node.post("/v1/collections/load/docs", &json!({"i": i}));
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "a request waited {:?} for the database",
                    started.elapsed()
                );
                if r.status == 201 {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(r.json["id"].as_str().unwrap().to_string());
                }
                statuses.lock().unwrap().push(r.status);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        own.pg_ctl("stop");
        let down = node.post("/v1/collections/load/docs", &json!({}));
        assert_eq!(down.status, 503, "{}", down.text);
        assert_eq!(down.code(), "unavailable");
        assert_eq!(down.header("retry-after"), Some("1"));
        let health = node.get("/v1/health");
        assert_eq!(health.status, 503);
        assert_eq!(health.json["storage"]["backend"], "postgres");
        assert_eq!(health.json["storage"]["ok"], false);
        own.pg_ctl("start");
        eventually("the node serving again", || {
            node.get("/v1/health").status == 200
        });
        eventually("writes succeeding again", || {
            node.post("/v1/collections/load/docs", &json!({})).status == 201
        });
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
    });
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 503),
        "only successes and 503s: {statuses:?}"
    );
    // Every acknowledged write survived the restart.
    for id in acknowledged.into_inner().unwrap() {
        node.get(&format!("/v1/collections/load/docs/{id}"))
            .expect(200);
    }
}

#[test]
fn files_live_in_a_shared_bucket() {
    let (Some(url), Some(s3)) = (crate::pg::database(), crate::s3::server()) else {
        return;
    };
    let bucket = s3.bucket();
    let started = nodes(&url, 2, |c| {
        c.files.url = bucket.clone();
        c.files.access_key_id = crate::s3::ACCESS_KEY.into();
        c.files.secret_access_key = crate::s3::SECRET_KEY.into();
    });
    let (a, b) = (&started[0], &started[1]);
    assert_eq!(
        a.get("/v1/health").expect(200).json["files"]["backend"],
        "s3"
    );

    // 20 MiB: a multipart upload of three parts, streamed from the temp file.
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let req = a
        .admin("PUT", "/v1/files/media/big.bin")
        .set("Content-Type", "application/octet-stream");
    let stored = crate::common::send(req, Some(&data)).expect(201);
    let read = |req: ureq::Request| -> (u16, Vec<u8>) {
        let resp = req.call().unwrap();
        let status = resp.status();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        (status, body)
    };
    let (status, body) = read(b.admin("GET", "/v1/files/media/big.bin"));
    assert_eq!(status, 200);
    assert!(body == data, "B reads the bytes A stored");
    let (status, part) = read(
        b.admin("GET", "/v1/files/media/big.bin")
            .set("Range", "bytes=9000000-9000099"),
    );
    assert_eq!(status, 206);
    assert_eq!(part, data[9_000_000..9_000_100]);
    assert!(stored.json["sha256"].is_string());

    // Deleted on B, gone on A.
    b.delete("/v1/files/media/big.bin").expect(204);
    a.get("/v1/files/media/big.bin").expect(404);
}

/// The suites that store, stream and deliver data, run again on PostgreSQL and S3: the same
/// test binary, with `EB_TEST_BACKEND=cluster` (see `common::cluster_backend`), so the one
/// test command covers both configurations.
#[test]
fn the_storage_suites_pass_on_postgres_and_s3() {
    if crate::common::cluster_backend()
        || crate::pg::cluster().is_none()
        || crate::s3::server().is_none()
    {
        return;
    }
    let suites = [
        "collections::",
        "documents::",
        "files::",
        "realtime::",
        "functions::",
        "function_mail::",
        "webhooks::",
        "queries::",
        "storage::",
        "project::",
        "transfer::",
    ];
    // Its output goes to files, not pipes: a process a failed test leaves behind could hold a
    // pipe open, and reading it to its end would then wait for ever.
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(suites)
        .args(["--test-threads", "4"])
        .env("EB_TEST_BACKEND", "cluster")
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .status()
        .unwrap();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    let summary = stdout
        .lines()
        .filter(|l| l.starts_with("test result"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("on PostgreSQL and S3: {summary}");
    for line in stderr.lines().filter(|l| l.starts_with("SKIPPED")) {
        eprintln!("{line}");
    }
}

#[test]
fn a_single_node_moves_into_the_cluster_store() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    // A single node with data, an account, rules, an index and a function.
    let single = TestServer::start_with(fast);
    let session = signup(&single, "ada@example.com");
    let token = session["access_token"].as_str().unwrap().to_string();
    single
        .put(
            "/v1/admin/collections/notes",
            &json!({"rules": {"read": "auth != null", "create": "auth != null"}, "indexes": [["data.n"]]}),
        )
        .expect(200);
    for n in 0..1200 {
        single
            .post("/v1/collections/notes/docs", &json!({"n": n}))
            .expect(201);
    }
    deploy(
        &single,
        "record",
        &recorder("seen", None),
        json!({"triggers": [{"on": "create", "collection": "inbox"}]}),
    );
    deploy(
        &single,
        "envy",
        &env_reader("API_KEY"),
        json!({"triggers": [{"on": "http"}]}),
    );
    single
        .put(
            "/v1/admin/functions/envy/secrets/API_KEY",
            &json!({"value": "sk_single_value"}),
        )
        .expect(200);
    let service_key = single.key.clone();
    let dir = single.stop();

    let bin = env!("CARGO_BIN_EXE_emberbase");
    let from = format!("sled:{}", dir.path().display());
    let out = std::process::Command::new(bin)
        .args(["migrate-storage", "--from", &from, "--to", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 secrets") || stdout.contains("3 secrets"),
        "{stdout}"
    );
    assert!(stdout.contains("2 function modules"), "{stdout}");
    assert!(stdout.contains("functions.secrets_key"), "{stdout}");
    // A second run refuses: the target is no longer empty.
    let again = std::process::Command::new(bin)
        .args(["migrate-storage", "--from", &from, "--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds data"));

    // A node on the cluster store serves it all: the same service key, the token issued
    // before, the password, the index, the function.
    let secrets_key = std::fs::read_to_string(dir.path().join("functions/secrets_key")).unwrap();
    let node = TestServer::start_with(|c| {
        c.store.url = url.clone();
        c.functions.secrets_key = secrets_key.trim().into();
        fast(c);
    });
    assert_eq!(node.key, service_key);
    let answer = node.post("/v1/functions/envy", &json!({})).expect(200);
    assert!(answer.text.contains("[secret]"), "{}", answer.text);
    let me = with_token(&node, "GET", "/v1/auth/me", &token, None).expect(200);
    assert_eq!(me.json["email"], "ada@example.com");
    login_token(&node, "ada@example.com");
    let page = with_token(
        &node,
        "GET",
        "/v1/collections/notes/docs?filter=data.n%20%3E%3D%201190&sort=data.n",
        &token,
        None,
    )
    .expect(200);
    assert_eq!(page.json["items"].as_array().unwrap().len(), 10);
    node.post("/v1/collections/inbox/docs", &json!({}))
        .expect(201);
    eventually("the migrated function running", || {
        docs(&node, "seen").len() == 1
    });
}

/// Three server processes on one database; one is killed (`kill -9`) while clients write
/// through all three. Every write acknowledged by any node is stored, and its trigger event is
/// delivered, by the survivors; a realtime client of the killed node resumes on another and
/// misses nothing.
#[cfg(unix)]
#[test]
fn a_node_killed_under_load_loses_no_acknowledged_write_or_event() {
    use crate::common::Spawned;
    let Some(url) = crate::pg::database() else {
        return;
    };
    let env = [
        ("EMBERBASE_STORE__URL", url.as_str()),
        ("EMBERBASE_STORE__POLL_MS", "50"),
        ("EMBERBASE_FUNCTIONS__RETRY_BASE_MS", "50"),
        ("EMBERBASE_FUNCTIONS__SECRETS_KEY", SECRETS_KEY),
    ];
    let mut spawned: Vec<Option<Spawned>> = (0..3)
        .map(|_| Some(Spawned::start(&env, None).unwrap()))
        .collect();
    let addrs: Vec<String> = spawned
        .iter()
        .map(|s| s.as_ref().unwrap().addr.clone())
        .collect();
    let key = spawned[0].as_ref().unwrap().key.clone();
    let put = spawned[0]
        .as_ref()
        .unwrap()
        .admin("PUT", "/v1/admin/functions/record")
        .set("Content-Type", "application/wasm");
    crate::common::send(put, Some(&recorder("seen", None))).expect(200);
    let configure = spawned[0].as_ref().unwrap().json(
        "PUT",
        "/v1/admin/functions/record/config",
        &json!({"triggers": [{"on": "create", "collection": "load"}]}),
    );
    configure.expect(200);

    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    let streamed = Mutex::new(Vec::new());
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    std::thread::scope(|s| {
        // A subscriber on the node that will be killed: it reads until the connection dies.
        let (first, streamed_ref, key_ref) = (&addrs[0], &streamed, &key);
        s.spawn(move || read_changes(first, key_ref, None, streamed_ref));
        std::thread::sleep(Duration::from_millis(300));
        for w in 0..4 {
            let (stop, acknowledged, agent, addrs, key) =
                (&stop, &acknowledged, &agent, &addrs, &key);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let addr = &addrs[(w + i) % addrs.len()];
                    i += 1;
                    let sent = agent
                        .post(&format!("http://{addr}/v1/collections/load/docs"))
                        .set("Authorization", &format!("Bearer {key}"))
                        .set("Content-Type", "application/json")
                        .send_string(&json!({"w": w, "i": i}).to_string());
                    match sent {
                        Ok(resp) if resp.status() == 201 => {
                            let doc: Value = resp.into_json().unwrap();
                            acknowledged
                                .lock()
                                .unwrap()
                                .push(doc["id"].as_str().unwrap().to_string());
                        }
                        // The killed node refuses or drops connections; a node may also
                        // answer 503 for a moment. Neither acknowledged anything.
                        Ok(resp) => assert_eq!(resp.status(), 503),
                        Err(ureq::Error::Status(status, _)) => assert_eq!(status, 503),
                        Err(_) => {}
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let killed = spawned[0].take().unwrap();
        drop(killed.stop());
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::SeqCst);
    });

    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() > 50,
        "too little load: {}",
        acknowledged.len()
    );
    // The subscriber resumes on a survivor after the last event the dead node sent it, and
    // gets every change after it once, in order: together, every acknowledged write.
    let mut changes = streamed.into_inner().unwrap();
    let last = changes.last().map(|(seq, _)| *seq);
    assert!(
        last.is_some(),
        "the killed node streamed nothing before it died"
    );
    // (The survivor publishes the cluster's changes within its poll interval; give it that.)
    std::thread::sleep(Duration::from_millis(500));
    let resumed = Mutex::new(Vec::new());
    read_changes(&addrs[1], &key, last, &resumed);
    changes.extend(resumed.into_inner().unwrap());
    assert!(
        changes.windows(2).all(|w| w[0].0 < w[1].0),
        "changes in order, none twice"
    );
    let seen: HashSet<&String> = changes.iter().map(|(_, id)| id).collect();
    for id in &acknowledged {
        assert!(
            seen.contains(id),
            "the subscriber missed acknowledged write {id}"
        );
    }
    let survivor = spawned[1].as_ref().unwrap();
    let stored: HashSet<String> = every_doc(survivor, "load")
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged write {id} was lost");
    }
    // Every acknowledged write's event runs, on a survivor (the killed node's lease, if it
    // held one, ends within ten seconds).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen: HashSet<String> = every_doc(survivor, "seen")
            .iter()
            .map(|d| d["data"]["event"]["id"].as_str().unwrap().to_string())
            .collect();
        let missing = acknowledged.iter().filter(|id| !seen.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged writes never had their event delivered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every document of a collection, page by page.
#[cfg(unix)]
fn every_doc(node: &crate::common::Spawned, collection: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/collections/{collection}/docs?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = crate::common::send(node.admin("GET", &path), None).expect(200);
        all.extend(page.json["items"].as_array().unwrap().iter().cloned());
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return all,
        }
    }
}

#[test]
fn failed_logins_count_across_nodes() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let started = nodes(&url, 2, |c| c.auth.max_failures_per_account = 3);
    let (a, b) = (&started[0], &started[1]);
    signup(a, "target@example.com");
    let attempt = |node: &TestServer, password: &str| {
        let body = json!({"email": "target@example.com", "password": password});
        node.post("/v1/auth/login", &body)
    };
    // Failures spread over both nodes fill one window.
    attempt(a, "wrong password!").expect_error(401, "unauthenticated");
    attempt(b, "wrong password!").expect_error(401, "unauthenticated");
    attempt(a, "wrong password!").expect_error(401, "unauthenticated");
    attempt(b, "correct horse battery").expect_error(429, "rate_limited");
    attempt(a, "correct horse battery").expect_error(429, "rate_limited");
}

#[test]
fn without_notifications_the_timer_delivers_every_change() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let started = nodes(&url, 2, |c| {
        c.store.notify = false;
        c.store.poll_ms = 100;
    });
    let (a, b) = (&started[0], &started[1]);
    let (mut sse, _) = Sse::live(b, "subscribe=quiet", Some(&b.key));
    let written: Vec<String> = (0..10)
        .map(|i| {
            a.post("/v1/collections/quiet/docs", &json!({"i": i}))
                .expect(201)
                .json["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let received: Vec<String> = sse
        .take(10)
        .iter()
        .map(|e| e.data["doc"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        received, written,
        "every change, in commit order, with no doorbell"
    );
}

#[test]
fn connections_to_the_database_can_use_tls() {
    if crate::pg::cluster().is_none() {
        return;
    }
    let own = crate::pg::Cluster::start_tls().unwrap();
    let url = format!("{}?sslmode=require", own.database());
    let ca = own.ca_file();
    let node = TestServer::start_with(|c| {
        c.store.url = url.clone();
        c.store.ca_file = ca.display().to_string();
    });
    node.post("/v1/collections/secure/docs", &json!({"over": "tls"}))
        .expect(201);
    let encrypted = own
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'emberbase'",
        )
        .unwrap();
    assert!(encrypted.parse::<u32>().unwrap() > 0, "no TLS connection");
    drop(node);
    // Without the CA, the server's certificate is not trusted: the node does not start.
    let mut config = emberbase::Config::default();
    config.store.url = url;
    config.functions.secrets_key = SECRETS_KEY.into();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(
        emberbase::ServerBuilder::new(config)
            .data_dir(dir.path())
            .bind("127.0.0.1:0")
            .start(),
    );
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("store.url"), "{error}");
    assert!(
        !error.contains("postgres://"),
        "the URL (and a password) stays out: {error}"
    );
}

/// Reads the `load` changes streamed by the node at `addr` (resuming after `last` if given)
/// into `out` as (sequence, document id), until the stream ends: the node died, or, when
/// resuming, the replay reached the live `ready`.
#[cfg(unix)]
fn read_changes(addr: &str, key: &str, last: Option<u64>, out: &Mutex<Vec<(u64, String)>>) {
    use std::io::BufRead;
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(20))
        .build();
    let mut req = agent
        .get(&format!("http://{addr}/v1/realtime?subscribe=load"))
        .set("Authorization", &format!("Bearer {key}"));
    if let Some(last) = last {
        req = req.set("Last-Event-ID", &last.to_string());
    }
    let Ok(resp) = req.call() else {
        return;
    };
    let mut reader = std::io::BufReader::new(resp.into_reader());
    let (mut id, mut event) = (None, String::new());
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if event == "ready" && last.is_some() {
                return;
            }
            if event == "create" {
                let data: Value = serde_json::from_str(data).unwrap();
                let doc = data["doc"]["id"].as_str().unwrap().to_string();
                out.lock().unwrap().push((id.unwrap(), doc));
            }
        }
    }
}

#[test]
fn a_connection_held_by_one_node_is_changed_through_another() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let mut started = nodes(&url, 2, |_| {}).into_iter();
    let (a, b) = (started.next().unwrap(), started.next().unwrap());
    let (mut sse, connection, _) = crate::realtime::connect(&a.url(""), &json!([]), &a.key, None);
    let path = format!("/v1/realtime/connection/{connection}/subscriptions/notes");
    // Until node A has announced itself, B does not know it (a made-up node stays unknown).
    eventually("node A known to node B", || {
        b.put(&path, &json!({"subscribe": "notes"})).status == 202
    });
    b.put(
        "/v1/realtime/connection/deadbeef.x/subscriptions/n",
        &json!({"subscribe": "notes"}),
    )
    .expect_error(404, "not_found");
    let confirmed = sse.next_event().expect("subscribed");
    assert_eq!(confirmed.event, "subscribed", "{confirmed:?}");
    b.post("/v1/collections/notes/docs", &json!({"n": 1}))
        .expect(201);
    let event = sse.next_event().expect("the create");
    assert_eq!(event.event, "create");
    assert_eq!(event.data["subscriptions"], json!(["notes"]));
    b.delete(&path).expect(202);
    assert_eq!(
        sse.next_event().expect("unsubscribed").event,
        "unsubscribed"
    );
    // Node A answers for its own connection at once.
    a.put(&path, &json!({"subscribe": "notes"})).expect(200);
}
