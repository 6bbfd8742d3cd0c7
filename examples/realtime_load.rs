//! Realtime load client for `benches/load/harness.py`: opens N event-stream subscribers to
//! Emberbase (`/v1/realtime`) or PocketBase (`/api/realtime`), writes documents that carry their
//! write time, and reports write-to-receive latency (p50/p99 over every subscriber and event),
//! delivered events/s, and the server's RSS before and after the subscribers connected.
//!
//! ```text
//! cargo run --release --example realtime_load -- <emberbase|emberbase-muxK|pocketbase> \
//!     <host:port> <token> <subscribers> <writes> <writes_per_sec, 0 = as fast as possible> \
//!     <server pid> [<host:port to write to>]
//! ```
//!
//! `emberbase-muxK` opens `subscribers` multiplexed connections (`/v1/realtime/connection`),
//! each holding K subscriptions with distinct filters that every write matches
//! (`data.t >= 0`, `data.t >= 1`, ...): the server evaluates each subscription, and sends
//! one event per connection naming the K subscriptions it matches. Every subscription named
//! counts as one delivery.
//!
//! With a second address, writes go to that node and subscribers listen on the first: the
//! fan-out between two nodes of a cluster.
//!
//! Each subscriber is a thread with a blocking socket (small stacks), so the client's own cost
//! per event is a read and a JSON parse. Prints one JSON object.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Emberbase,
    /// Multiplexed connections holding this many subscriptions each.
    Multiplexed(usize),
    PocketBase,
}

impl Flavour {
    /// Subscriptions per connection.
    fn per_connection(self) -> usize {
        match self {
            Flavour::Multiplexed(k) => k,
            _ => 1,
        }
    }
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Target {
    flavour: Flavour,
    addr: String,
    /// Where writes go (`addr` unless another node is named).
    write_addr: String,
    token: String,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One HTTP/1.1 request on a fresh connection; returns the response body.
fn http(addr: &str, method: &str, path: &str, auth: &str, body: &Value) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).ok();
    let body = body.to_string();
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("Authorization: {auth}\r\n")
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).ok();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A subscriber: connects, subscribes, signals `ready`, then records the latency of every event.
fn subscriber(
    target: Arc<Target>,
    ready: Arc<Barrier>,
    latencies: Arc<Mutex<Vec<u64>>>,
    received: Arc<AtomicUsize>,
) {
    let mut stream = TcpStream::connect(&target.addr).expect("connect");
    let path = match target.flavour {
        Flavour::Emberbase => "/v1/realtime?subscribe=bench".to_string(),
        Flavour::Multiplexed(k) => {
            let subscriptions: Vec<Value> = (0..k)
                .map(|j| json!({"name": format!("s{j}"), "subscribe": "bench", "filter": format!("data.t >= {j}")}))
                .collect();
            let list = Value::Array(subscriptions).to_string();
            format!("/v1/realtime/connection?subscriptions={}", encode(&list))
        }
        Flavour::PocketBase => "/api/realtime".to_string(),
    };
    let auth = match target.flavour {
        Flavour::PocketBase => String::new(),
        _ => format!("Authorization: Bearer {}\r\n", target.token),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{auth}\r\n",
        target.addr
    )
    .expect("write");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut subscribed = false;
    let mut mine = Vec::new();
    let mut status = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if status.is_empty() {
            status = line.trim_end().to_string();
        }
        let Some(data) = line.trim_end().strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        if !subscribed {
            match target.flavour {
                Flavour::Emberbase | Flavour::Multiplexed(_) if v.get("seq").is_some() => {}
                Flavour::PocketBase if v.get("clientId").is_some() => {
                    let id = v["clientId"].as_str().unwrap_or_default();
                    http(
                        &target.addr,
                        "POST",
                        "/api/realtime",
                        &target.token,
                        &json!({"clientId": id, "subscriptions": ["bench"]}),
                    );
                }
                _ => continue,
            }
            subscribed = true;
            ready.wait();
            continue;
        }
        let sent = match target.flavour {
            Flavour::PocketBase => v["record"]["t"].as_u64(),
            _ => v["doc"]["data"]["t"].as_u64(),
        };
        let deliveries = match target.flavour {
            Flavour::Multiplexed(_) => v["subscriptions"].as_array().map_or(0, Vec::len),
            _ => 1,
        };
        match sent {
            // The end marker.
            Some(0) => break,
            Some(sent) => {
                let latency = now_us().saturating_sub(sent);
                mine.extend(std::iter::repeat_n(latency, deliveries));
                received.fetch_add(deliveries, Ordering::Relaxed);
            }
            None => {}
        }
    }
    if !subscribed {
        // Refused (a limit, a bad token): the barrier would wait for this thread forever.
        eprintln!("a subscriber's stream ended before it was live: {status}");
        std::process::exit(1);
    }
    if let Ok(mut all) = latencies.lock() {
        all.extend(mine);
    }
}

fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn write_one(target: &Target, t: u64) {
    let (path, auth) = match target.flavour {
        Flavour::PocketBase => ("/api/collections/bench/records", target.token.clone()),
        _ => (
            "/v1/collections/bench/docs",
            format!("Bearer {}", target.token),
        ),
    };
    http(&target.write_addr, "POST", path, &auth, &json!({"t": t}));
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 && args.len() != 9 {
        eprintln!("usage: realtime_load <emberbase|pocketbase> <host:port> <token> <subscribers> <writes> <writes_per_sec> <server pid> [<write host:port>]");
        std::process::exit(2);
    }
    let flavour = match args[1].as_str() {
        "pocketbase" => Flavour::PocketBase,
        mux if mux.starts_with("emberbase-mux") => Flavour::Multiplexed(
            mux["emberbase-mux".len()..]
                .parse()
                .expect("emberbase-muxK"),
        ),
        _ => Flavour::Emberbase,
    };
    let target = Arc::new(Target {
        flavour,
        addr: args[2].clone(),
        write_addr: args.get(8).unwrap_or(&args[2]).clone(),
        token: args[3].clone(),
    });
    let subscribers: usize = args[4].parse().expect("subscribers");
    let writes: usize = args[5].parse().expect("writes");
    let rate: f64 = args[6].parse().expect("writes_per_sec");
    let pid = &args[7];

    let rss_before = rss_kb(pid);
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..subscribers)
        .map(|_| {
            let (t, r, l, n) = (
                target.clone(),
                ready.clone(),
                latencies.clone(),
                received.clone(),
            );
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || subscriber(t, r, l, n))
                .expect("spawn")
        })
        .collect();
    ready.wait();
    // Let the last subscriptions settle, then measure memory with every stream idle.
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kb(pid);

    let started = Instant::now();
    if rate > 0.0 {
        let gap = Duration::from_secs_f64(1.0 / rate);
        for i in 0..writes {
            let due = started + gap * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            write_one(&target, now_us());
        }
    } else {
        // As fast as the server takes them, from 4 writers.
        let next = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (t, next) = (target.clone(), next.clone());
                std::thread::spawn(move || {
                    while next.fetch_add(1, Ordering::Relaxed) < writes {
                        write_one(&t, now_us());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().ok();
        }
    }
    let writes_done = started.elapsed();
    // Wait for delivery to finish (or stall), then end every stream with a final marker event.
    let expected = writes * subscribers * flavour.per_connection();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let delivered_in = last.1.duration_since(started).max(writes_done);
    let delivered = received.load(Ordering::Relaxed);
    write_one(&target, 0);
    for h in handles {
        h.join().ok();
    }
    let mut all = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    all.sort_unstable();
    println!(
        "{}",
        json!({
            "subscribers": subscribers * flavour.per_connection(),
            "connections": subscribers,
            "writes": writes,
            "delivered": delivered,
            "expected": expected,
            "p50_ms": percentile(&all, 0.50),
            "p99_ms": percentile(&all, 0.99),
            "events_per_sec": delivered as f64 / delivered_in.as_secs_f64(),
            "writes_per_sec": writes as f64 / writes_done.as_secs_f64(),
            "rss_before_kb": rss_before,
            "rss_idle_kb": rss_idle,
        })
    );
}
