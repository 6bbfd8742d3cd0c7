//! Durability: every write acknowledged before a `kill -9` is there after a restart.

use crate::common::{agent, send};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    for cycle in 0..6u64 {
        let (mut child, addr) = spawn(dir.path());
        let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
        let key = key.trim().to_string();

        // Everything acknowledged in earlier cycles is there, with the acknowledged value.
        let before = acked.lock().unwrap().clone();
        for (id, value) in &before {
            let resp = send(
                agent()
                    .get(&format!("http://{addr}/v1/collections/crash/docs/{id}"))
                    .set("Authorization", &format!("Bearer {key}")),
                None,
            )
            .expect(200);
            assert_at_least(&resp.json, *value, id);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (stop, acked, addr, key) =
                    (stop.clone(), acked.clone(), addr.clone(), key.clone());
                std::thread::spawn(move || {
                    let agent = agent();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Half the writes create new documents, half overwrite old ones.
                        let id = format!("w{w}-{}", if i.is_multiple_of(2) { i } else { i / 4 });
                        let value = cycle * 1_000_000 + i;
                        let req = agent
                            .put(&format!("http://{addr}/v1/collections/crash/docs/{id}"))
                            .set("Authorization", &format!("Bearer {key}"))
                            .set("Content-Type", "application/json");
                        match req.send_string(&json!({"v": value}).to_string()) {
                            Ok(r) if r.status() == 200 || r.status() == 201 => {
                                acked.lock().unwrap().insert(id, value);
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
        std::thread::sleep(Duration::from_millis(400));
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    let (mut child, addr) = spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let total = acked.lock().unwrap().len();
    assert!(
        total > 100,
        "the test wrote too little to mean anything: {total}"
    );
    for (id, value) in acked.lock().unwrap().iter() {
        let resp = send(
            agent()
                .get(&format!("http://{addr}/v1/collections/crash/docs/{id}"))
                .set("Authorization", &format!("Bearer {}", key.trim())),
            None,
        )
        .expect(200);
        assert_at_least(&resp.json, *value, id);
    }
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
    std::thread::sleep(Duration::from_millis(300));
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
