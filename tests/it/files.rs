//! Files: streamed uploads, ranged downloads, safe serving, hostile paths, limits, concurrency,
//! crashes, signed URLs, bucket rules and change events, against a real server.

use crate::common::{
    agent, fast, raw_http, send, signup, signup_token, stream_until_refused, Resp, TestServer,
};
use emberbase::{ChangeKind, Subject};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

/// Deterministic bytes that do not compress or repeat.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn upload(srv: &TestServer, token: Option<&str>, path: &str, ct: &str, body: &[u8]) -> Resp {
    let mut req = srv.anon("PUT", path).set("Content-Type", ct);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    send(req, Some(body))
}

/// A GET whose body is kept as bytes.
fn download(req: ureq::Request) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.to_lowercase(), v.to_string())))
        .collect();
    let status = resp.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The blobs a server keeps: in its data directory, or in its test bucket when the suite
/// runs on the cluster's backends.
fn blobs(data_dir: &Path) -> Vec<String> {
    match crate::s3::bucket_of(data_dir) {
        Some(url) => crate::s3::list_blobs(&url),
        None => dir_entries(&data_dir.join("files/blobs")),
    }
}

fn temps(data_dir: &Path) -> Vec<String> {
    dir_entries(&data_dir.join("files/tmp"))
}

#[test]
fn round_trip_head_304_ranges_list_and_delete() {
    let srv = TestServer::start();
    let data = bytes(5 * 1024 * 1024 + 123, 7);
    let size = data.len();
    let path = "/v1/files/photos/trip/day-1.bin";
    let stored = upload(
        &srv,
        Some(&srv.key),
        path,
        "application/octet-stream",
        &data,
    )
    .expect(201);
    assert_eq!(stored.json["sha256"], sha256_hex(&data));
    assert_eq!(stored.json["size"], size);
    assert_eq!(stored.json["bucket"], "photos");
    assert_eq!(stored.json["path"], "trip/day-1.bin");
    assert_eq!(stored.json["content_type"], "application/octet-stream");
    assert!(stored.json["owner"].is_null());

    let (status, headers, body) = download(srv.admin("GET", path));
    assert_eq!(status, 200);
    assert!(body == data, "the bytes came back different");
    let etag = format!("\"{}\"", sha256_hex(&data));
    assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    assert_eq!(
        header(&headers, "content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(header(&headers, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "content-security-policy"), Some("sandbox"));
    assert_eq!(
        header(&headers, "content-disposition"),
        Some("attachment; filename=\"day-1.bin\"")
    );
    assert!(header(&headers, "last-modified").is_some());

    // HEAD: the same headers, no body.
    let (status, headers, body) = download(srv.admin("HEAD", path));
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(header(&headers, "etag"), Some(etag.as_str()));

    // Conditional requests.
    let (status, _, body) = download(srv.admin("GET", path).set("If-None-Match", &etag));
    assert_eq!((status, body.len()), (304, 0));
    let (status, _, _) = download(srv.admin("GET", path).set("If-None-Match", "\"other\""));
    assert_eq!(status, 200);

    // Ranges: first bytes, middle, suffix, open-ended, unsatisfiable.
    for (range, first, last) in [
        ("bytes=0-99".to_string(), 0, 99),
        ("bytes=1000000-1999999".to_string(), 1_000_000, 1_999_999),
        ("bytes=-500".to_string(), size - 500, size - 1),
        (format!("bytes={}-", size - 10), size - 10, size - 1),
    ] {
        let (status, headers, body) = download(srv.admin("GET", path).set("Range", &range));
        assert_eq!(status, 206, "{range}");
        assert_eq!(
            header(&headers, "content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str())
        );
        assert!(body == data[first..=last], "{range}: wrong bytes");
    }
    let resp = send(
        srv.admin("GET", path)
            .set("Range", &format!("bytes={size}-")),
        None,
    )
    .expect_error(416, "range_not_satisfiable");
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    // A Range that does not parse is ignored.
    let (status, _, body) = download(srv.admin("GET", path).set("Range", "lines=1-2"));
    assert_eq!((status, body.len()), (200, size));

    // Replacing keeps created_at and the owner, and serves the new bytes.
    let small = b"replaced".to_vec();
    let replaced = upload(&srv, Some(&srv.key), path, "text/plain", &small).expect(200);
    assert_eq!(replaced.json["created_at"], stored.json["created_at"]);
    assert_eq!(replaced.json["size"], small.len());
    let (_, headers, body) = download(srv.admin("GET", path));
    assert_eq!(body, small);
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));
    assert!(header(&headers, "content-disposition")
        .unwrap()
        .starts_with("inline"));
    assert_eq!(
        blobs(srv.dir.path()).len(),
        1,
        "the replaced blob is removed"
    );

    // Listing with a prefix, in pages.
    for name in ["a/1", "a/2", "a/3", "a/4", "a/5", "b/1", "ab"] {
        upload(
            &srv,
            Some(&srv.key),
            &format!("/v1/files/photos/{name}"),
            "text/plain",
            name.as_bytes(),
        )
        .expect(201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = "/v1/files/photos?prefix=a/&limit=2".to_string();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = srv.get(&url).expect(200);
        let items = page.json["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|i| i["path"].as_str().unwrap().to_string()),
        );
        match page.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["a/1", "a/2", "a/3", "a/4", "a/5"]);
    let all = srv.get("/v1/files/photos").expect(200);
    assert_eq!(all.json["items"].as_array().unwrap().len(), 8);
    assert!(all.json["next_cursor"].is_null());
    srv.get("/v1/files/photos?limit=0")
        .expect_error(400, "bad_request");
    srv.get("/v1/files/photos?cursor=!!")
        .expect_error(400, "bad_request");
    srv.get("/v1/files/photos?prefix=%2e%2e%5c")
        .expect_error(400, "bad_request");

    // Delete removes the record and the bytes.
    let before = blobs(srv.dir.path()).len();
    srv.delete(path).expect(204);
    srv.get(path).expect_error(404, "not_found");
    srv.delete(path).expect_error(404, "not_found");
    assert_eq!(blobs(srv.dir.path()).len(), before - 1);
    assert!(temps(srv.dir.path()).is_empty());

    // Wrong methods on file routes are 405 with the error shape.
    send(srv.admin("PATCH", "/v1/files/photos/a/1"), Some(b"x"))
        .expect_error(405, "method_not_allowed");
}

#[test]
fn hostile_paths_are_refused_before_touching_the_disk() {
    let srv = TestServer::start();
    let long = format!("/v1/files/b/{}", "a".repeat(1025));
    let targets = [
        "/v1/files/b/../x",
        "/v1/files/b/a/../../x",
        "/v1/files/b/%2e%2e/x",
        "/v1/files/b/%2E%2E%2Fx",
        "/v1/files/b/a%2Fb",
        "/v1/files/b/a%5cb",
        "/v1/files/b/a\\b",
        "/v1/files/b/..\\..\\x",
        "/v1/files/b//etc/passwd",
        "/v1/files/b/a//b",
        "/v1/files/b/a/",
        "/v1/files/b/",
        "/v1/files/b/.",
        "/v1/files/b/%00",
        "/v1/files/b/a%00.png",
        "/v1/files/b/caf%C3%A9",
        "/v1/files/../x",
        "/v1/files/%2e%2e/x",
        "/v1/files/b%2fc/x",
        long.as_str(),
    ];
    for target in targets {
        for method in ["PUT", "GET", "DELETE"] {
            let request = format!(
                "{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                srv.key
            );
            let (status, text) = raw_http(srv.addr, request.as_bytes());
            assert!(
                status == 400 || status == 404,
                "{method} {target}: {status} {text}"
            );
            if method == "PUT" {
                assert_eq!(status, 400, "{method} {target}: {text}");
                assert!(
                    text.contains("\"bad_request\""),
                    "{method} {target}: {text}"
                );
            }
        }
    }
    // A NUL byte in the request line is refused by the HTTP parser itself.
    let (status, _) = raw_http(
        srv.addr,
        b"PUT /v1/files/b/a\0b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400);
    assert!(blobs(srv.dir.path()).is_empty());
    assert!(temps(srv.dir.path()).is_empty());
    let mut top = dir_entries(srv.dir.path());
    top.retain(|n| {
        ![
            "db",
            "files",
            "functions",
            "service_key",
            "jwt_keys.json",
            "url_signing_key",
            crate::common::BACKEND_MARKER,
        ]
        .contains(&n.as_str())
    });
    assert!(top.is_empty(), "unexpected files in the data dir: {top:?}");
    assert!(!srv.dir.path().parent().unwrap().join("x").exists());
}

#[test]
fn markup_is_never_served_inline_whatever_its_declared_type() {
    let srv = TestServer::start();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let cases: [(&str, &str, &[u8], bool); 6] = [
        (
            "lying.png",
            "image/png",
            b"<!DOCTYPE html><script>alert(1)</script>",
            false,
        ),
        (
            "lying2.png",
            "image/png",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
            false,
        ),
        ("page.html", "text/html", b"<p>hi</p>", false),
        ("pic.svg", "image/svg+xml", b"<svg/>", false),
        ("notes.txt", "text/plain", b"just text", true),
        ("real.png", "image/png", &png, true),
    ];
    for (name, ct, body, inline) in cases {
        let path = format!("/v1/files/up/{name}");
        upload(&srv, Some(&srv.key), &path, ct, body).expect(201);
        let (status, headers, got) = download(srv.admin("GET", &path));
        assert_eq!(status, 200);
        assert_eq!(got, body);
        assert_eq!(
            header(&headers, "x-content-type-options"),
            Some("nosniff"),
            "{name}"
        );
        assert_eq!(
            header(&headers, "content-security-policy"),
            Some("sandbox"),
            "{name}"
        );
        assert_eq!(header(&headers, "content-type"), Some(ct), "{name}");
        let disposition = header(&headers, "content-disposition").unwrap();
        let expected = if inline { "inline" } else { "attachment" };
        assert!(disposition.starts_with(expected), "{name}: {disposition}");
    }
}

#[test]
fn uploads_over_the_limit_are_refused_and_leave_nothing() {
    let srv = TestServer::start_with(|c| c.files.max_size = 1024 * 1024);
    let auth = format!("Authorization: Bearer {}\r\n", srv.key);

    // By Content-Length: refused before the body is sent.
    let request = format!(
        "PUT /v1/files/big/a.bin HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 2097152\r\nConnection: close\r\n\r\n"
    );
    let (status, text) = raw_http(srv.addr, request.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");

    // Chunked: refused as soon as the limit is passed, while the client is still sending
    // (up to ~10 s worth). The server answers after ~1 MiB and closes the connection after a
    // short linger, instead of reading the whole body.
    let head = format!(
        "PUT /v1/files/big/b.bin HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (text, stopped) = stream_until_refused(srv.addr, &head, 2000 * 64 * 1024);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(stopped, "the server kept reading the refused body");

    // A bucket's own limit, with an HTTP client.
    srv.put("/v1/admin/buckets/tiny", &json!({"max_size": 1000}))
        .expect(200);
    upload(
        &srv,
        Some(&srv.key),
        "/v1/files/tiny/x",
        "text/plain",
        &[b'a'; 1001],
    )
    .expect_error(413, "payload_too_large");
    upload(
        &srv,
        Some(&srv.key),
        "/v1/files/tiny/x",
        "text/plain",
        &[b'a'; 1000],
    )
    .expect(201);

    srv.get("/v1/files/big/a.bin")
        .expect_error(404, "not_found");
    srv.get("/v1/files/big/b.bin")
        .expect_error(404, "not_found");
    assert!(
        temps(srv.dir.path()).is_empty(),
        "temp files left: {:?}",
        temps(srv.dir.path())
    );
    assert_eq!(blobs(srv.dir.path()).len(), 1);
}

#[test]
fn concurrent_uploads_to_one_path_leave_one_whole_file() {
    let srv = TestServer::start();
    let url = srv.url("/v1/files/race/same.bin");
    for round in 0..4u64 {
        let bodies: Vec<Vec<u8>> = (0..2)
            .map(|i| bytes(3 * 1024 * 1024, round * 10 + i + 1))
            .collect();
        let handles: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|body| {
                let (url, key) = (url.clone(), srv.key.clone());
                std::thread::spawn(move || {
                    let req = agent()
                        .put(&url)
                        .set("Authorization", &format!("Bearer {key}"))
                        .set("Content-Type", "application/octet-stream");
                    let status = send(req, Some(&body)).status;
                    assert!(status == 200 || status == 201, "status {status}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let (_, headers, got) = download(srv.admin("GET", "/v1/files/race/same.bin"));
        assert!(
            bodies.contains(&got),
            "round {round}: the file is not one of the two uploads"
        );
        let etag = format!("\"{}\"", sha256_hex(&got));
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
        assert_eq!(
            blobs(srv.dir.path()).len(),
            1,
            "round {round}: one blob remains"
        );
    }
}

#[cfg(unix)]
#[test]
fn kill_9_during_an_upload_leaves_no_partial_file() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = crate::crash::spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let key = key.trim().to_string();
    let auth = format!("Bearer {key}");

    // One upload completes before the crash; it must survive.
    let done = bytes(512 * 1024, 3);
    let req = agent()
        .put(&format!("http://{addr}/v1/files/crash/done.bin"))
        .set("Authorization", &auth);
    send(req, Some(&done)).expect(201);

    // Another is half sent when the server dies.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "PUT /v1/files/crash/partial.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 10485760\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&bytes(2 * 1024 * 1024, 4)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while temps(dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upload never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stream);
    // A blob that no record points at (as a crash between rename and commit would leave).
    std::fs::write(
        dir.path()
            .join("files/blobs")
            .join(ulid::Ulid::new().to_string()),
        b"orphan",
    )
    .unwrap();

    let (mut child, addr) = crate::crash::spawn(dir.path());
    let get = |name: &str| {
        download(
            agent()
                .get(&format!("http://{addr}/v1/files/crash/{name}"))
                .set("Authorization", &auth),
        )
    };
    let (status, _, body) = get("done.bin");
    assert_eq!(status, 200);
    assert!(body == done);
    assert_eq!(get("partial.bin").0, 404);
    assert!(
        temps(dir.path()).is_empty(),
        "temp files survived: {:?}",
        temps(dir.path())
    );
    assert_eq!(
        blobs(dir.path()).len(),
        1,
        "only the committed blob remains"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn signed_urls_serve_without_a_token_until_they_expire() {
    let srv = TestServer::start_with(fast);
    let alice = signup(&srv, "alice@example.com");
    let alice = alice["access_token"].as_str().unwrap().to_string();
    let data = bytes(100_000, 9);
    upload(
        &srv,
        Some(&alice),
        "/v1/files/docs/report.pdf",
        "application/pdf",
        &data,
    )
    .expect(201);

    let sign = |token: Option<&str>, path: &str, body: serde_json::Value| {
        let mut req = srv
            .anon("POST", path)
            .set("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        send(req, Some(body.to_string().as_bytes()))
    };
    let signed = sign(
        Some(&alice),
        "/v1/sign/docs/report.pdf",
        json!({"expires_in": 60}),
    )
    .expect(200);
    let url = signed.json["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("http://{}/v1/files/docs/report.pdf?", srv.addr)),
        "{url}"
    );
    assert!(signed.json["expires_at"].as_str().unwrap().ends_with('Z'));

    // Valid: no token needed, ranges work too.
    let (status, headers, body) = download(agent().get(&url));
    assert_eq!(status, 200);
    assert!(body == data);
    assert_eq!(
        header(&headers, "content-disposition"),
        Some("inline; filename=\"report.pdf\"")
    );
    let (status, _, body) = download(agent().get(&url).set("Range", "bytes=0-9"));
    assert_eq!((status, body.as_slice()), (206, &data[..10]));
    // A token that is wrong does not matter on a signed URL.
    assert_eq!(
        download(agent().get(&url).set("Authorization", "Bearer nonsense")).0,
        200
    );

    // Tampered: the signature, the expiry, the path.
    let tampered_sig = {
        let i = url.rfind("signature=").unwrap() + "signature=".len();
        let c = if &url[i..i + 1] == "A" { "B" } else { "A" };
        format!("{}{}{}", &url[..i], c, &url[i + 1..])
    };
    let expires: u64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let later = url.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 3600),
    );
    upload(
        &srv,
        Some(&alice),
        "/v1/files/docs/other.pdf",
        "application/pdf",
        b"other",
    )
    .expect(201);
    let other_path = url.replace("report.pdf", "other.pdf");
    let no_sig = url.split("&signature").next().unwrap().to_string();
    for bad in [tampered_sig, later, other_path, no_sig] {
        send(agent().get(&bad), None).expect_error(403, "forbidden");
    }

    // Expired.
    let short = sign(
        Some(&alice),
        "/v1/sign/docs/report.pdf",
        json!({"expires_in": 1}),
    )
    .expect(200);
    std::thread::sleep(Duration::from_millis(2100));
    send(agent().get(short.json["url"].as_str().unwrap()), None).expect_error(403, "forbidden");

    // Who may sign, and what.
    sign(None, "/v1/sign/docs/report.pdf", json!({})).expect_error(403, "forbidden");
    // Under the private default rule, a missing file is no one's, so signing it is refused
    // like any file the caller may not read: a 403 never tells what exists.
    sign(Some(&alice), "/v1/sign/docs/missing.pdf", json!({})).expect_error(403, "forbidden");
    sign(
        Some(srv.key.as_str()),
        "/v1/sign/docs/missing.pdf",
        json!({}),
    )
    .expect_error(404, "not_found");
    sign(
        Some(&alice),
        "/v1/sign/docs/report.pdf",
        json!({"expires_in": 0}),
    )
    .expect_error(400, "validation_failed");
    sign(
        Some(&alice),
        "/v1/sign/docs/report.pdf",
        json!({"expires_in": 700_000}),
    )
    .expect_error(400, "validation_failed");
}

#[test]
fn bucket_rules_for_two_users() {
    let srv = TestServer::start_with(fast);
    let a = signup_token(&srv, "a@example.com");
    let b = signup_token(&srv, "b@example.com");
    let get = |token: Option<&str>, path: &str| {
        let mut req = srv.anon("GET", path);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        send(req, None)
    };
    let delete = |token: &str, path: &str| {
        send(
            srv.anon("DELETE", path)
                .set("Authorization", &format!("Bearer {token}")),
            None,
        )
    };

    // Default rules are private: the uploader alone reads, replaces and deletes.
    let stored = upload(
        &srv,
        Some(&a),
        "/v1/files/avatars/a.png",
        "image/png",
        b"png-a",
    )
    .expect(201);
    let a_id = srv.get("/v1/admin/users?limit=10").json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "a@example.com")
        .unwrap()["id"]
        .clone();
    assert_eq!(stored.json["owner"], a_id);
    get(Some(&b), "/v1/files/avatars/a.png").expect_error(403, "forbidden");
    get(Some(&a), "/v1/files/avatars/a.png").expect(200);
    get(None, "/v1/files/avatars/a.png").expect_error(403, "forbidden");
    get(None, "/v1/files/avatars").expect_error(403, "forbidden");
    upload(
        &srv,
        Some(&b),
        "/v1/files/avatars/a.png",
        "image/png",
        b"evil",
    )
    .expect_error(403, "forbidden");
    upload(
        &srv,
        None,
        "/v1/files/avatars/anon.png",
        "image/png",
        b"anon",
    )
    .expect_error(403, "forbidden");
    delete(&b, "/v1/files/avatars/a.png").expect_error(403, "forbidden");
    upload(
        &srv,
        Some(&a),
        "/v1/files/avatars/a.png",
        "image/png",
        b"png-a2",
    )
    .expect(200);
    assert_eq!(get(Some(&a), "/v1/files/avatars/a.png").text, "png-a2");
    // A file the service key uploaded has no owner: no user may delete it.
    upload(
        &srv,
        Some(&srv.key),
        "/v1/files/avatars/system.png",
        "image/png",
        b"sys",
    )
    .expect(201);
    delete(&a, "/v1/files/avatars/system.png").expect_error(403, "forbidden");
    delete(&a, "/v1/files/avatars/a.png").expect(204);

    // Private bucket: owners only, small images only.
    srv.put(
        "/v1/admin/buckets/private",
        &json!({
            "rules": {
                "read": "auth != null && file.owner == auth.id",
                "write": "auth != null && request.size <= 100 && (file == null || file.owner == auth.id)",
                "delete": "auth != null && file.owner == auth.id"
            },
            "content_types": ["image/*"]
        }),
    )
    .expect(200);
    upload(
        &srv,
        Some(&a),
        "/v1/files/private/a/1.png",
        "image/png",
        b"a1",
    )
    .expect(201);
    upload(
        &srv,
        Some(&a),
        "/v1/files/private/a/2.png",
        "image/png",
        b"a2",
    )
    .expect(201);
    upload(
        &srv,
        Some(&b),
        "/v1/files/private/b/1.png",
        "image/png",
        b"b1",
    )
    .expect(201);
    get(Some(&b), "/v1/files/private/a/1.png").expect_error(403, "forbidden");
    get(Some(&a), "/v1/files/private/a/1.png").expect(200);
    let listed = get(Some(&b), "/v1/files/private").expect(200);
    let paths: Vec<&str> = listed.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["b/1.png"]);
    let listed = get(Some(&a), "/v1/files/private?limit=1").expect(200);
    assert_eq!(listed.json["items"][0]["path"], "a/1.png");
    assert!(listed.json["next_cursor"].is_string());
    upload(
        &srv,
        Some(&a),
        "/v1/files/private/a/big.png",
        "image/png",
        &[0u8; 101],
    )
    .expect_error(403, "forbidden");
    upload(
        &srv,
        Some(&a),
        "/v1/files/private/a/n.txt",
        "text/plain",
        b"t",
    )
    .expect_error(415, "unsupported_media_type");
    send(
        srv.anon("POST", "/v1/sign/private/a/1.png")
            .set("Authorization", &format!("Bearer {b}"))
            .set("Content-Type", "application/json"),
        Some(b"{}"),
    )
    .expect_error(403, "forbidden");

    // Bucket configuration is for admins, and is validated.
    let got = srv.get("/v1/admin/buckets/private").expect(200);
    assert_eq!(got.json["content_types"], json!(["image/*"]));
    assert_eq!(
        srv.get("/v1/admin/buckets").json["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    srv.get("/v1/admin/buckets/nothing")
        .expect_error(404, "not_found");
    srv.put(
        "/v1/admin/buckets/x",
        &json!({"rules": {"read": "doc.owner == auth.id"}}),
    )
    .expect_error(400, "bad_request");
    srv.put("/v1/admin/buckets/x", &json!({"max_size": 0}))
        .expect_error(400, "validation_failed");
    srv.put("/v1/admin/buckets/x", &json!({"content_types": ["nope"]}))
        .expect_error(400, "validation_failed");
    send(
        srv.anon("PUT", "/v1/admin/buckets/x")
            .set("Authorization", &format!("Bearer {a}"))
            .set("Content-Type", "application/json"),
        Some(b"{}"),
    )
    .expect_error(403, "forbidden");
}

#[test]
fn file_changes_go_through_the_change_feed() {
    let srv = TestServer::start();
    let mut changes = srv.server().changes().subscribe();
    upload(
        &srv,
        Some(&srv.key),
        "/v1/files/feed/x.txt",
        "text/plain",
        b"one",
    )
    .expect(201);
    upload(
        &srv,
        Some(&srv.key),
        "/v1/files/feed/x.txt",
        "text/plain",
        b"two!",
    )
    .expect(200);
    srv.delete("/v1/files/feed/x.txt").expect(204);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let change = srv.block_on(changes.recv()).unwrap();
        let Subject::File {
            bucket,
            path,
            before,
            after,
        } = &change.subject
        else {
            panic!("a file change: {change:?}");
        };
        assert_eq!((bucket.as_str(), path.as_str()), ("feed", "x.txt"));
        assert_eq!(change.actor.as_ref().unwrap().role, "service");
        seen.push((
            change.kind,
            before.as_ref().map(|f| f.size),
            after.as_ref().map(|f| f.size),
        ));
    }
    assert_eq!(
        seen,
        [
            (ChangeKind::Create, None, Some(3)),
            (ChangeKind::Update, Some(3), Some(4)),
            (ChangeKind::Delete, Some(4), None),
        ]
    );
}
