//! Backups: an archive made while the server serves, downloaded, checked and restored into a
//! new data directory by the real binary, and a server started on what it restored.

use crate::common::{
    agent, cli, cluster_backend, login_token, send, signup, signup_token, with_token, TestServer,
};
use crate::functions::{call, deploy, env_reader};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A restored data directory is a single node's: the cluster backends keep their data elsewhere.
fn skipped() -> bool {
    if cluster_backend() {
        eprintln!("skipped: a restore makes a single node's data directory");
    }
    cluster_backend()
}

/// Polls the list until backup `name` is no longer running; returns its entry.
fn wait_ready(srv: &TestServer, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = srv.get("/v1/admin/backups").expect(200).json;
        let item = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not listed: {list}"));
        if item["state"] != "running" {
            return item;
        }
        assert!(Instant::now() < deadline, "{name} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a backup through the API and downloads it.
fn backup(srv: &TestServer) -> (String, Vec<u8>) {
    let started = srv.post("/v1/admin/backups", &json!({})).expect(202).json;
    assert_eq!(started["state"], "running");
    let name = started["name"].as_str().unwrap().to_string();
    let ready = wait_ready(srv, &name);
    assert_eq!(ready["state"], "ready", "{ready}");
    (name.clone(), download(srv, &name))
}

fn download(srv: &TestServer, name: &str) -> Vec<u8> {
    let resp = srv
        .admin("GET", &format!("/v1/admin/backups/{name}"))
        .call()
        .unwrap();
    assert_eq!(resp.header("Content-Type"), Some("application/gzip"));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    bytes
}

/// `emberbase backup --url` against `srv`, saving to `archive`.
fn backup_with_cli(srv: &TestServer, archive: &Path) -> (i32, String, String) {
    cli(
        &[
            "backup",
            "--url",
            &srv.url(""),
            "--out",
            archive.to_str().unwrap(),
        ],
        &[("EB_SERVICE_KEY", srv_key(srv).as_str())],
    )
}

fn restore(archive: &Path, dir: &Path, force: bool) -> (i32, String, String) {
    let mut args = vec![
        "restore",
        archive.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    if force {
        args.push("--force");
    }
    cli(&args, &[])
}

/// Deploys `envy`, an HTTP function that reads its secret `API_KEY`, set to `value`.
fn deploy_secret_reader(srv: &TestServer, value: &str) {
    deploy(
        srv,
        "envy",
        &env_reader("API_KEY"),
        json!({"triggers": [{"on": "http"}]}),
    );
    srv.put(
        "/v1/admin/functions/envy/secrets/API_KEY",
        &json!({"value": value}),
    )
    .expect(200);
}

/// A server started on what the binary restored from `archive`.
fn restored_from(archive: &[u8]) -> TestServer {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("b.tar.gz");
    std::fs::write(&path, archive).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = restore(&path, dir.path(), false);
    assert_eq!(code, 0, "{out}{err}");
    TestServer::start_in(dir, |_| {})
}

fn put_file(srv: &TestServer, path: &str, body: &[u8]) {
    let req = srv
        .admin("PUT", path)
        .set("Content-Type", "application/octet-stream");
    send(req, Some(body)).expect(201);
}

fn get_bytes(srv: &TestServer, path: &str) -> Vec<u8> {
    let resp = srv.admin("GET", path).call().unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    bytes
}

#[test]
fn a_backup_restores_documents_files_accounts_functions_and_rules() {
    if skipped() {
        return;
    }
    let srv = TestServer::start();
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"rules": {"read": "auth != null", "create": "auth != null",
                          "update": "false", "delete": "false"}}),
    )
    .expect(200);
    let ada = signup(&srv, "ada@example.com");
    let token = ada["access_token"].as_str().unwrap();
    let note = with_token(
        &srv,
        "POST",
        "/v1/collections/notes/docs",
        token,
        Some(&json!({"text": "kept"})),
    )
    .expect(201)
    .json;
    let photo: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    put_file(&srv, "/v1/files/photos/trip/day-1.bin", &photo);
    deploy_secret_reader(&srv, "sk_live_backup");

    // The CLI starts the backup, waits for it and downloads it.
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("site.tar.gz");
    let (code, out, err) = backup_with_cli(&srv, &archive);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("saved to"), "{out}");
    // Written after the backup: not in it.
    with_token(
        &srv,
        "POST",
        "/v1/collections/notes/docs",
        token,
        Some(&json!({"text": "later"})),
    )
    .expect(201);
    let listed = srv.get("/v1/admin/backups").expect(200).json;
    let kept = &listed["items"][0];
    assert_eq!(kept["state"], "ready");
    assert_eq!(kept["scheduled"], false);
    assert_eq!(
        kept["size"].as_u64().unwrap(),
        std::fs::metadata(&archive).unwrap().len()
    );
    let old_key = srv_key(&srv);
    drop(srv);

    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = restore(&archive, dir.path(), false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored backup-"), "{out}");
    let restored = TestServer::start_in(dir, |_| {});
    // The same service key, the same account (its password and its session), the same data.
    assert_eq!(srv_key(&restored), old_key);
    let token = login_token(&restored, "ada@example.com");
    let notes = with_token(&restored, "GET", "/v1/collections/notes/docs", &token, None)
        .expect(200)
        .json;
    let texts: Vec<&str> = notes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["kept"]);
    assert_eq!(notes["items"][0]["id"], note["id"]);
    with_token(
        &restored,
        "GET",
        &format!(
            "/v1/collections/notes/docs/{}",
            note["id"].as_str().unwrap()
        ),
        ada["access_token"].as_str().unwrap(),
        None,
    )
    .expect(200);
    // The rules came back: updates are refused.
    with_token(
        &restored,
        "PATCH",
        &format!(
            "/v1/collections/notes/docs/{}",
            note["id"].as_str().unwrap()
        ),
        &token,
        Some(&json!({"text": "changed"})),
    )
    .expect(403);
    assert_eq!(
        get_bytes(&restored, "/v1/files/photos/trip/day-1.bin"),
        photo
    );
    // The function runs, and reads its secret (sealed in the archive, opened with the key).
    let answer = call(&restored, "envy", None, &json!({})).expect(200);
    assert!(answer.text.contains("[secret]"), "{}", answer.text);
}

fn srv_key(srv: &TestServer) -> String {
    std::fs::read_to_string(srv.server().data_dir().join("service_key"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_backup_under_concurrent_writes_holds_whole_batches() {
    if skipped() {
        return;
    }
    let srv = Arc::new(TestServer::start());
    const PER_BATCH: usize = 5;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (srv, stop, acknowledged) = (srv.clone(), stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let batch = format!("w{w}-{i}");
                    let ops: Vec<Value> = (0..PER_BATCH)
                        .map(|n| {
                            json!({"op": "create", "collection": "ledger",
                                        "data": {"batch": batch, "n": n}})
                        })
                        .collect();
                    srv.post("/v1/batch", &json!({"ops": ops})).expect(200);
                    acknowledged.lock().unwrap().push(batch);
                    i += 1;
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let (_, archive) = backup(&srv);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let total = acknowledged.lock().unwrap().len();

    let restored = restored_from(&archive);
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => format!("/v1/collections/ledger/docs?limit=500&cursor={c}"),
            None => "/v1/collections/ledger/docs?limit=500".to_string(),
        };
        let page = restored.get(&page).expect(200).json;
        for doc in page["items"].as_array().unwrap() {
            *counts
                .entry(doc["data"]["batch"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // Every batch is whole or absent, and every batch acknowledged before the backup began
    // is in it.
    assert!(counts.values().all(|n| *n == PER_BATCH), "{counts:?}");
    for batch in &before {
        assert!(counts.contains_key(batch), "{batch} is missing");
    }
    assert!(counts.len() <= total);
}

#[test]
fn files_deleted_while_a_backup_runs_are_still_in_it() {
    if skipped() {
        return;
    }
    let srv = TestServer::start();
    let body = vec![42u8; 64 * 1024];
    for i in 0..150 {
        put_file(&srv, &format!("/v1/files/bulk/f{i:03}"), &body);
    }
    let started = srv.post("/v1/admin/backups", &json!({})).expect(202).json;
    let name = started["name"].as_str().unwrap().to_string();
    // Deleting while the archive is read, last file first (the archive reads blobs in path
    // order): the blobs of records in its snapshot must stay until it is written.
    for i in (0..150).rev() {
        srv.delete(&format!("/v1/files/bulk/f{i:03}")).expect(204);
    }
    let ready = wait_ready(&srv, &name);
    assert_eq!(ready["state"], "ready", "{ready}");
    let archive = download(&srv, &name);

    let restored = restored_from(&archive);
    let listed = restored.get("/v1/files/bulk?limit=1000").expect(200).json;
    for file in listed["items"].as_array().unwrap() {
        let path = file["path"].as_str().unwrap();
        assert_eq!(
            get_bytes(&restored, &format!("/v1/files/bulk/{path}")),
            body
        );
    }
    // The deferred deletions ran once the backup ended: the source keeps no stray blob.
    let blobs = srv.server().data_dir().join("files/blobs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&blobs).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "blobs left after the backup");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `archive` with one byte flipped, as near its middle as a flip changes what it holds: some
/// bits of a compressed stream (code lengths of symbols it never uses) can change and leave the
/// content, and so every checksum, as it was; such an archive is not damaged.
fn damage_in_the_middle(archive: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let content = |bytes: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .ok()
            .map(|_| out)
    };
    let intact = content(archive);
    (archive.len() / 2..archive.len())
        .map(|at| {
            let mut flipped = archive.to_vec();
            flipped[at] ^= 0x55;
            flipped
        })
        .find(|flipped| content(flipped) != intact)
        .expect("no flip changes the archive")
}

#[test]
fn a_damaged_archive_is_refused_before_anything_is_touched() {
    if skipped() {
        return;
    }
    let srv = TestServer::start();
    srv.post("/v1/collections/things/docs", &json!({"n": 1}))
        .expect(201);
    put_file(&srv, "/v1/files/b/x.bin", &vec![9u8; 100_000]);
    let (_, archive) = backup(&srv);
    // Operators can alert on backups from the metrics.
    let metrics = srv.get("/metrics").expect(200).text;
    assert_eq!(
        crate::common::metric(&metrics, "emberbase_backups_total{outcome=\"ready\"}"),
        1.0
    );
    assert!(
        crate::common::metric(&metrics, "emberbase_backup_last_success_timestamp_seconds") > 1e9
    );
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("data");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "mine").unwrap();
    let untouched = |what: &str| {
        let names: Vec<String> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".tar.gz"))
            .collect();
        assert_eq!(names, ["data"], "{what}");
        let inside: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
        assert_eq!(inside.len(), 1, "{what}");
    };

    // A flipped byte, then a truncated archive.
    let flipped = damage_in_the_middle(&archive);
    let path = work.path().join("flipped.tar.gz");
    std::fs::write(&path, &flipped).unwrap();
    let (code, _, err) = restore(&path, &target, true);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("damaged") && err.contains("nothing was changed"),
        "{err}"
    );
    untouched("flipped");
    let path = work.path().join("short.tar.gz");
    std::fs::write(&path, &archive[..archive.len() - 100]).unwrap();
    let (code, _, err) = restore(&path, &target, true);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("damaged"), "{err}");
    untouched("truncated");

    // A good archive over a directory with data: refused without --force, moved aside with it.
    let path = work.path().join("good.tar.gz");
    std::fs::write(&path, &archive).unwrap();
    let (code, _, err) = restore(&path, &target, false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    untouched("not forced");
    // Not over a data directory a server has open.
    let (code, _, err) = restore(&path, srv.server().data_dir(), true);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a server is using"), "{err}");
    let (code, out, err) = restore(&path, &target, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(target.join("db").exists());
    let aside: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data.before-restore-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{out}");
    assert_eq!(
        std::fs::read_to_string(aside[0].join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn the_cli_waits_for_a_running_backup_and_then_makes_its_own() {
    let srv = TestServer::start();
    // Bytes that do not compress, so that a backup runs long enough for the CLI to find it.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4 << 20)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    put_file(&srv, "/v1/files/bulk/noise.bin", &noise);
    let started = Instant::now();
    let first = srv.post("/v1/admin/backups", &json!({})).expect(202).json;
    let first = first["name"].as_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("mine.tar.gz");
    let (code, out, err) = backup_with_cli(&srv, &archive);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("backup {first} is running on the server; waiting")),
        "{err} (the first backup took {:?})",
        started.elapsed()
    );
    let items = srv.get("/v1/admin/backups").expect(200).json["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items.iter().all(|i| i["state"] == "ready"), "{items:?}");
    let mine = items.iter().find(|i| i["name"] != first).unwrap();
    assert!(out.contains(mine["name"].as_str().unwrap()), "{out}");
    assert_eq!(
        mine["size"].as_u64().unwrap(),
        std::fs::metadata(&archive).unwrap().len()
    );
}

#[test]
fn scheduled_backups_keep_the_newest_and_leave_requested_ones() {
    let srv = TestServer::start_with(|c| {
        c.backups.schedule = "* * * * * *".into();
        c.backups.keep = 2;
    });
    // The schedule may have a backup running already: one runs at a time, and the refusal
    // names it, so wait for that one and ask again.
    let manual = loop {
        let resp = srv.post("/v1/admin/backups", &json!({}));
        if resp.status == 202 {
            break resp.json["name"].as_str().unwrap().to_string();
        }
        let running = resp.expect_error(409, "conflict").json["error"]["details"]["running"]
            .as_str()
            .unwrap()
            .to_string();
        wait_ready(&srv, &running);
    };
    assert_eq!(wait_ready(&srv, &manual)["state"], "ready");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 4 {
        assert!(Instant::now() < deadline, "only {seen:?} were made");
        let list = srv.get("/v1/admin/backups").expect(200).json;
        for item in list["items"].as_array().unwrap() {
            let name = item["name"].as_str().unwrap();
            if item["scheduled"] == true && item["state"] == "ready" {
                assert!(name.starts_with("auto-"), "{name}");
                seen.insert(name.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Retention runs after each scheduled backup: at most two (and the newest) are kept.
    let list = srv.get("/v1/admin/backups").expect(200).json;
    let items = list["items"].as_array().unwrap();
    let kept: Vec<&str> = items
        .iter()
        .filter(|i| i["scheduled"] == true && i["state"] == "ready")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(kept.len() <= 2, "{kept:?}");
    assert!(seen
        .iter()
        .rev()
        .take(2)
        .any(|n| kept.contains(&n.as_str())));
    assert!(!kept.contains(&seen.iter().next().unwrap().as_str()));
    assert!(items.iter().any(|i| i["name"] == manual.as_str()));
    // Deleting, and what is refused.
    srv.delete(&format!("/v1/admin/backups/{manual}"))
        .expect(204);
    srv.delete(&format!("/v1/admin/backups/{manual}"))
        .expect_error(404, "not_found");
    srv.get("/v1/admin/backups/..%2Fservice_key")
        .expect_error(404, "not_found");
    let user = signup(&srv, "nosy@example.com");
    with_token(
        &srv,
        "POST",
        "/v1/admin/backups",
        user["access_token"].as_str().unwrap(),
        None,
    )
    .expect_error(403, "forbidden");
    send(srv.anon("GET", "/v1/admin/backups"), None).expect_error(401, "unauthenticated");
}

/// The bytes of a GET without a token.
fn fetch_anonymously(srv: &TestServer, url: &str) -> Result<Vec<u8>, (u16, Value)> {
    match agent().get(url).call() {
        Ok(resp) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
            Ok(bytes)
        }
        Err(ureq::Error::Status(code, resp)) => Err((code, resp.into_json().unwrap())),
        Err(e) => panic!("GET {url} on {}: {e}", srv.url("")),
    }
}

#[test]
fn a_download_link_serves_the_archive_without_a_token_and_only_that_archive() {
    let srv = TestServer::start();
    srv.post("/v1/collections/things/docs", &json!({"n": 7}))
        .expect(201);
    let (name, archive) = backup(&srv);
    let link = srv
        .post(&format!("/v1/admin/backups/{name}/link"), &json!({}))
        .expect(200)
        .json;
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&srv.url(&format!("/v1/admin/backups/{name}?expires="))),
        "{link}"
    );
    assert!(
        link["expires_at"].as_str().unwrap().ends_with('Z'),
        "{link}"
    );
    assert_eq!(fetch_anonymously(&srv, url).unwrap(), archive);

    // Only admins get links; a changed name, expiry or signature opens nothing.
    let token = signup_token(&srv, "ada@example.com");
    with_token(
        &srv,
        "POST",
        &format!("/v1/admin/backups/{name}/link"),
        &token,
        Some(&json!({})),
    )
    .expect_error(403, "forbidden");
    srv.post(
        "/v1/admin/backups/manual-20200101T000000Z.tar.gz/link",
        &json!({}),
    )
    .expect_error(404, "not_found");
    let query = url.split_once('?').unwrap().1;
    let expires: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let signature = query.split_once("&signature=").unwrap().1;
    for forged in [
        url.replace(
            &format!("expires={expires}"),
            &format!("expires={}", expires + 3600),
        ),
        url.replace(signature, &signature.chars().rev().collect::<String>()),
        url.replace(&name, "manual-20200101T000000Z.tar.gz"),
        url.replace(&format!("&signature={signature}"), ""),
    ] {
        let (code, body) = fetch_anonymously(&srv, &forged).unwrap_err();
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{forged}: {body}"
        );
    }
    // Nor does a file's signature, with the same key.
    put_file(&srv, "/v1/files/docs/a.txt", b"hello");
    let file = srv.post("/v1/sign/docs/a.txt", &json!({})).expect(200).json;
    let file_query = file["url"]
        .as_str()
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_string();
    let (code, _) = fetch_anonymously(
        &srv,
        &srv.url(&format!("/v1/admin/backups/{name}?{file_query}")),
    )
    .unwrap_err();
    assert_eq!(code, 403);
    // Without a link, the archive still needs an admin.
    let (code, _) =
        fetch_anonymously(&srv, &srv.url(&format!("/v1/admin/backups/{name}"))).unwrap_err();
    assert_eq!(code, 401);
}

#[test]
fn backups_can_go_to_a_bucket() {
    let Some(s3) = crate::s3::server() else {
        return;
    };
    let url = s3.bucket();
    let srv = TestServer::start_with(|c| {
        c.backups.url = url.clone();
        c.backups.access_key_id = crate::s3::ACCESS_KEY.into();
        c.backups.secret_access_key = crate::s3::SECRET_KEY.into();
    });
    srv.post("/v1/collections/things/docs", &json!({"n": 7}))
        .expect(201);
    let (name, archive) = backup(&srv);
    let listed = srv.get("/v1/admin/backups").expect(200).json;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["items"][0]["size"], archive.len() as u64);
    // Nothing was left in the staging folder.
    let staging = srv.server().data_dir().join("tmp");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    if !skipped() {
        let work = tempfile::tempdir().unwrap();
        let path = work.path().join("b.tar.gz");
        std::fs::write(&path, &archive).unwrap();
        let dir = work.path().join("data");
        let (code, out, err) = restore(&path, &dir, false);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(", 0 files,"), "{out}");
    }
    srv.delete(&format!("/v1/admin/backups/{name}")).expect(204);
    let listed = srv.get("/v1/admin/backups").expect(200).json;
    assert_eq!(listed["items"], json!([]));
}

#[test]
fn a_single_node_backup_restores_into_an_empty_cluster() {
    let (Some(database), Some(s3)) = (crate::pg::database(), crate::s3::server()) else {
        return;
    };
    if skipped() {
        return;
    }
    let srv = TestServer::start();
    let ada = signup(&srv, "ada@example.com");
    srv.post("/v1/collections/things/docs", &json!({"n": 1}))
        .expect(201);
    let bytes = vec![5u8; 70_000];
    put_file(&srv, "/v1/files/docs/a.bin", &bytes);
    deploy_secret_reader(&srv, "sk_live_cluster");
    let (_, archive) = backup(&srv);
    let sealing_key =
        std::fs::read_to_string(srv.server().data_dir().join("functions/secrets_key")).unwrap();

    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("b.tar.gz");
    std::fs::write(&path, &archive).unwrap();
    let files = s3.bucket();
    // The cluster's nodes share one sealing key: the one the single node's secrets use.
    let env = [
        ("EMBERBASE_FUNCTIONS__SECRETS_KEY", sealing_key.trim()),
        ("EMBERBASE_STORE__URL", database.as_str()),
        ("EMBERBASE_FILES__URL", files.as_str()),
        ("EMBERBASE_FILES__ACCESS_KEY_ID", crate::s3::ACCESS_KEY),
        ("EMBERBASE_FILES__SECRET_ACCESS_KEY", crate::s3::SECRET_KEY),
    ];
    let restore_cluster = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberbase"))
            .args(["restore", path.to_str().unwrap(), "--cluster"])
            .envs(env)
            .current_dir(work.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = restore_cluster();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored backup-"), "{out}");
    assert!(!out.contains("note:"), "{out}");

    let node = TestServer::start_with(|c| {
        c.store.url = database.clone();
        c.files.url = files.clone();
        c.files.access_key_id = crate::s3::ACCESS_KEY.into();
        c.files.secret_access_key = crate::s3::SECRET_KEY.into();
        c.functions.secrets_key = sealing_key.trim().to_string();
    });
    let token = login_token(&node, "ada@example.com");
    assert!(!token.is_empty());
    // The session from before the move still works: the signing keys came along.
    with_token(
        &node,
        "GET",
        "/v1/auth/me",
        ada["access_token"].as_str().unwrap(),
        None,
    )
    .expect(200);
    let things = node.get("/v1/collections/things/docs").expect(200).json;
    assert_eq!(things["items"][0]["data"]["n"], 1);
    assert_eq!(get_bytes(&node, "/v1/files/docs/a.bin"), bytes);
    let answer = call(&node, "envy", None, &json!({})).expect(200);
    assert!(answer.text.contains("[secret]"), "{}", answer.text);
    // New changes follow the restored ones.
    node.post("/v1/collections/things/docs", &json!({"n": 2}))
        .expect(201);
    assert_eq!(
        node.get("/v1/collections/things/docs").expect(200).json["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The database is no longer empty: a second restore is refused.
    let (code, _, err) = restore_cluster();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds data already"), "{err}");
}
