//! Embedding: the builder's extra routes, the in-process API and its change events.

use crate::common::{send, TestServer};
use emberbase::{ChangeKind, Config, Principal, ServerBuilder, Subject};
use serde_json::json;

#[test]
fn in_process_writes_are_visible_over_http_and_in_the_change_feed() {
    let srv = TestServer::start();
    let docs = srv.server().documents().clone();
    let feed = srv.server().changes().clone();
    let mut changes = feed.subscribe();
    let doc = srv
        .block_on(docs.create(&Principal::Service, "notes", json!({"text": "hi"})))
        .unwrap();
    let over_http = srv
        .get(&format!("/v1/collections/notes/docs/{}", doc.id))
        .expect(200);
    assert_eq!(over_http.json["data"]["text"], "hi");
    srv.patch(
        &format!("/v1/collections/notes/docs/{}", doc.id),
        &json!({"text": "bye"}),
    )
    .expect(200);
    srv.block_on(docs.delete(&Principal::Service, "notes", &doc.id, Some(2)))
        .unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let change = srv.block_on(changes.recv()).unwrap();
        let Subject::Document { before, after, .. } = &change.subject else {
            panic!("a document change: {change:?}");
        };
        seen.push((
            change.seq,
            change.kind,
            before.as_ref().map(|d| d.version),
            after.as_ref().map(|d| d.version),
        ));
    }
    assert_eq!(seen[0].1, ChangeKind::Create);
    assert_eq!(
        (seen[1].1, seen[1].2, seen[1].3),
        (ChangeKind::Update, Some(1), Some(2))
    );
    assert_eq!(
        (seen[2].1, seen[2].2, seen[2].3),
        (ChangeKind::Delete, Some(2), None)
    );
    assert!(seen[0].0 < seen[1].0 && seen[1].0 < seen[2].0);

    // The feed is durable: the same changes can be read back from the store.
    let replay = srv.block_on(feed.after(seen[0].0 - 1, 10)).unwrap();
    assert_eq!(
        replay.iter().map(|c| c.seq).collect::<Vec<_>>(),
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );

    // The in-process API enforces rules for non-admin principals too.
    let err = srv
        .block_on(docs.create(&Principal::Anonymous, "notes", json!({})))
        .unwrap_err();
    assert!(matches!(err, emberbase::DocsError::Forbidden(_)), "{err}");
}

#[test]
fn host_routes_are_served_beside_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = rt
        .block_on(
            ServerBuilder::new(Config::default())
                .data_dir(dir.path())
                .listener(listener)
                .routes(|cfg| {
                    cfg.route(
                        "/hello",
                        actix_web::web::get()
                            .to(|| async { actix_web::HttpResponse::Ok().body("hi") }),
                    );
                })
                .start(),
        )
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let hello = send(crate::common::agent().get(&format!("{base}/hello")), None).expect(200);
    assert_eq!(hello.text, "hi");
    send(
        crate::common::agent().get(&format!("{base}/v1/health")),
        None,
    )
    .expect(200);
    send(crate::common::agent().get(&format!("{base}/nope")), None).expect_error(404, "not_found");
    rt.block_on(server.shutdown());
}

#[test]
fn the_change_feed_keeps_only_its_retention_window() {
    let srv = TestServer::start_with(|c| c.store.change_retention_count = 5);
    for i in 0..20 {
        srv.post("/v1/collections/r/docs", &json!({"i": i}))
            .expect(201);
    }
    let feed = srv.server().changes().clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let first = srv.block_on(feed.first_retained_seq()).unwrap().unwrap();
        if first >= 16 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not pruned: first retained {first}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kept = srv.block_on(feed.after(0, 100)).unwrap();
    assert_eq!(kept.len(), 5);
    assert_eq!(kept.last().unwrap().seq, 20);
}
