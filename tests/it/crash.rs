//! Durability: every write acknowledged before a `kill -9` is there after a restart, and so is
//! every value a reader saw, acknowledged or not (nothing is visible before it is durable).

use crate::common::{agent, send};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts the real binary on a free port and returns it with its address.
pub fn spawn(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_emberbase"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("EMBERBASE_LOG__LEVEL", "warn,emberbase=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "server did not start");
        let line = lines.next().expect("server exited").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// A write in flight at the kill may have landed without being acknowledged, so the stored
/// value may be newer than the acknowledged one; values only grow per id.
fn assert_at_least(doc: &serde_json::Value, acked: u64, id: &str) {
    let stored = doc["data"]["v"].as_u64().unwrap_or(0);
    assert!(
        stored >= acked,
        "{id}: acknowledged {acked}, found {stored}"
    );
}

/// The highest value of each id: acknowledged to a writer, or seen by a reader.
type Values = Arc<Mutex<BTreeMap<String, u64>>>;

fn raise(values: &Values, id: &str, value: u64) {
    let mut values = values.lock().unwrap();
    let entry = values.entry(id.to_string()).or_insert(0);
    *entry = (*entry).max(value);
}

/// Checks that every id holds at least its recorded value.
fn check_all(addr: &str, key: &str, values: &BTreeMap<String, u64>, what: &str) {
    for (id, value) in values {
        let resp = send(
            agent()
                .get(&format!("http://{addr}/v1/collections/crash/docs/{id}"))
                .set("Authorization", &format!("Bearer {key}")),
            None,
        );
        assert_eq!(resp.status, 200, "{what} {id} (value {value}) is gone");
        assert_at_least(&resp.json, *value, id);
    }
}

#[test]
fn acknowledged_and_seen_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Values = Arc::default();
    let seen: Values = Arc::default();
    // Acknowledged writes over all cycles (ids repeat across cycles; this counts each write).
    let acks = Arc::new(AtomicUsize::new(0));
    for cycle in 0..10u64 {
        let (mut child, addr) = spawn(dir.path());
        let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
        let key = key.trim().to_string();

        // Everything acknowledged or seen in earlier cycles is there, at least as new.
        check_all(&addr, &key, &acked.lock().unwrap().clone(), "acknowledged");
        check_all(&addr, &key, &seen.lock().unwrap().clone(), "seen");

        let stop = Arc::new(AtomicBool::new(false));
        // Ids being written, for the readers to look at while their writes are in flight.
        let attempted: Arc<Mutex<Vec<String>>> = Arc::default();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (stop, acked, acks, attempted, addr, key) = (
                    stop.clone(),
                    acked.clone(),
                    acks.clone(),
                    attempted.clone(),
                    addr.clone(),
                    key.clone(),
                );
                std::thread::spawn(move || {
                    let agent = agent();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Half the writes create new documents, half overwrite old ones.
                        let id = format!("w{w}-{}", if i.is_multiple_of(2) { i } else { i / 4 });
                        let value = cycle * 1_000_000 + i;
                        attempted.lock().unwrap().push(id.clone());
                        let req = agent
                            .put(&format!("http://{addr}/v1/collections/crash/docs/{id}"))
                            .set("Authorization", &format!("Bearer {key}"))
                            .set("Content-Type", "application/json");
                        match req.send_string(&json!({"v": value}).to_string()) {
                            Ok(r) if r.status() == 200 || r.status() == 201 => {
                                raise(&acked, &id, value);
                                acks.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            // The server was killed mid-request: not acknowledged.
                            Err(_) => return,
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        // Readers: the newest ids by GET, and the newest documents by list.
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let (stop, seen, attempted, addr, key) = (
                    stop.clone(),
                    seen.clone(),
                    attempted.clone(),
                    addr.clone(),
                    key.clone(),
                );
                std::thread::spawn(move || {
                    let agent = agent();
                    while !stop.load(Ordering::Relaxed) {
                        let url = if r == 0 {
                            format!(
                                "http://{addr}/v1/collections/crash/docs?sort=-updated_at&limit=50"
                            )
                        } else {
                            let Some(id) = attempted.lock().unwrap().iter().rev().nth(r).cloned()
                            else {
                                continue;
                            };
                            format!("http://{addr}/v1/collections/crash/docs/{id}")
                        };
                        let req = agent
                            .get(&url)
                            .set("Authorization", &format!("Bearer {key}"));
                        let resp = match req.call() {
                            Ok(resp) => resp,
                            // Not written yet (404): look again.
                            Err(ureq::Error::Status(..)) => continue,
                            // The server was killed.
                            Err(_) => return,
                        };
                        let Ok(body) = resp.into_json::<serde_json::Value>() else {
                            return;
                        };
                        let docs = match body["items"].as_array() {
                            Some(items) => items.clone(),
                            None => vec![body],
                        };
                        for doc in docs {
                            if let (Some(id), Some(v)) =
                                (doc["id"].as_str(), doc["data"]["v"].as_u64())
                            {
                                raise(&seen, id, v);
                            }
                        }
                    }
                })
            })
            .collect();
        // Kill once this cycle has had some writes acknowledged (a slow machine gets longer),
        // and never sooner than 300 ms, so the kill lands among writes in flight.
        let started = Instant::now();
        let wanted = acks.load(Ordering::Relaxed) + 40;
        while started.elapsed() < Duration::from_millis(300)
            || (acks.load(Ordering::Relaxed) < wanted
                && started.elapsed() < Duration::from_secs(20))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for t in writers.into_iter().chain(readers) {
            t.join().unwrap();
        }
    }
    let (mut child, addr) = spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let key = key.trim();
    let total = acks.load(Ordering::Relaxed);
    assert!(
        total > 300,
        "the test wrote too little to mean anything: {total}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > 20,
        "the readers saw too little: {}",
        seen.len()
    );
    check_all(&addr, key, &acked.lock().unwrap().clone(), "acknowledged");
    check_all(&addr, key, &seen, "seen");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGTERM: the server stops accepting, finishes in-flight writes, and exits 0; every write it
/// acknowledged is there after a restart.
#[cfg(unix)]
#[test]
fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let key = key.trim().to_string();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, addr, key) = (acked.clone(), addr.clone(), key.clone());
            std::thread::spawn(move || {
                let agent = agent();
                for i in 0u64.. {
                    let id = format!("g{w}-{i}");
                    let req = agent
                        .put(&format!("http://{addr}/v1/collections/graceful/docs/{id}"))
                        .set("Authorization", &format!("Bearer {key}"))
                        .set("Content-Type", "application/json");
                    match req.send_string(&json!({"v": i}).to_string()) {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id, i);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Some writes in flight, and at least one acknowledged (a loaded machine may take longer
    // than the pause for the first).
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no write was acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    for w in writers {
        w.join().unwrap();
    }
    let (mut child, addr) = spawn(dir.path());
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    for (id, value) in acked.iter() {
        let resp = send(
            agent()
                .get(&format!("http://{addr}/v1/collections/graceful/docs/{id}"))
                .set("Authorization", &format!("Bearer {key}")),
            None,
        )
        .expect(200);
        assert_eq!(resp.json["data"]["v"], *value, "{id}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
