//! Sign-in with a provider, against real protocol peers on loopback (`tests/oidc/provider.mjs`):
//! oidc-provider from npm (an OpenID Certified implementation) for OpenID Connect, and a
//! GitHub-style OAuth2 server. The browser is an HTTP client that follows redirects by hand
//! and keeps cookies, as a browser does.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Where the app wants the browser back (never fetched: the test reads the redirect).
const APP: &str = "http://app.test/signed-in";

/// The test providers' process, stopped when dropped.
struct Peers {
    child: Child,
    url: String,
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peers {
    fn post(&self, path: &str, body: &Value) {
        let resp = send(
            agent()
                .post(&format!("{}{path}", self.url))
                .set("Content-Type", "application/json"),
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(resp.status, 200, "{path}: {}", resp.text);
    }

    /// The account the next sign-in at the OpenID provider is.
    fn next_login(&self, sub: &str, email: &str, verified: bool) {
        self.post(
            "/control/login",
            &json!({"sub": sub, "email": email, "email_verified": verified, "name": format!("User {sub}")}),
        );
    }
}

/// Starts the test providers with Emberbase's callback for provider `name` registered.
///
/// A provider that has not listened after a minute is killed and started again, once: on
/// 2026-12-05 one start of node hung before printing anything, using no CPU, and held the
/// whole suite for 25 minutes.
fn peers(srv: &TestServer, name: &str) -> Option<Peers> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    let spawn = || {
        Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env(
                "EMBERBASE_CALLBACK",
                srv.url(&format!("/v1/auth/oauth/{name}/callback")),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("the OpenID provider tests need node ({e})"))
    };
    let unavailable = |reason: String| {
        assert!(std::env::var_os("CI").is_none(), "CI needs node: {reason}");
        skip(&reason);
    };
    if let Err(reason) = npm_ci(&dir, "oidc-provider") {
        unavailable(reason);
        return None;
    }
    for attempt in 1..=2 {
        let mut child = match spawn() {
            Ok(child) => child,
            Err(reason) => {
                unavailable(reason);
                return None;
            }
        };
        let stdout = child.stdout.take().unwrap();
        let (listening, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let url = lines.by_ref().map_while(Result::ok).find_map(|line| {
                let v = serde_json::from_str::<Value>(&line).ok()?;
                v["url"].as_str().map(str::to_string)
            });
            let listens = url.is_some();
            let _ = listening.send(url);
            // What it prints later goes to the test's output (a closed pipe would kill it).
            if listens {
                lines
                    .map_while(Result::ok)
                    .for_each(|l| eprintln!("provider: {l}"));
            }
        });
        match url.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Some(url)) => return Some(Peers { child, url }),
            Ok(None) => panic!("the provider exits before it listens"),
            Err(_) => {
                eprintln!("the OpenID provider did not listen within 60 s (attempt {attempt})");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    panic!("the OpenID provider did not listen within 60 s, twice");
}

/// A server that may reach loopback providers.
fn start() -> TestServer {
    TestServer::start_with(|c| {
        fast(c);
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
    })
}

/// Adds the OpenID provider to `srv` as `test`, through the admin API.
fn add_oidc(srv: &TestServer, peers: &Peers) -> Value {
    srv.put(
        "/v1/admin/auth/providers/test",
        &json!({
            "kind": "oidc",
            "display_name": "Test ID",
            "issuer": peers.url,
            "client_id": "emberbase",
            "client_secret": "emberbase-secret",
            "redirect_urls": [APP],
            "audiences": ["mobile-app", "short-lived"],
            "callback_url": srv.url("/v1/auth/oauth/test/callback"),
        }),
    )
    .expect(200)
    .json
}

/// A browser: follows redirects one by one, keeping cookies per host, until one leads to
/// `stop` (returned, not fetched).
#[derive(Default)]
struct Browser {
    cookies: BTreeMap<String, BTreeMap<String, String>>,
}

impl Browser {
    fn go(&mut self, start: &str, stop: &str) -> String {
        let agent = by_hand();
        let mut url = start.to_string();
        for _ in 0..20 {
            if url.starts_with(stop) {
                return url;
            }
            let parsed = url::Url::parse(&url).unwrap();
            let host = format!("{}:{:?}", parsed.host_str().unwrap(), parsed.port());
            let jar = self.cookies.entry(host).or_default();
            let cookie = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut req = agent.get(&url);
            if !cookie.is_empty() {
                req = req.set("Cookie", &cookie);
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{url}: {e}"),
            };
            for set in resp.all("set-cookie") {
                let pair = set.split(';').next().unwrap();
                if let Some((k, v)) = pair.split_once('=') {
                    if v.is_empty() {
                        jar.remove(k);
                    } else {
                        jar.insert(k.to_string(), v.to_string());
                    }
                }
            }
            let status = resp.status();
            let Some(location) = resp.header("location").map(str::to_string) else {
                panic!(
                    "{url} answered {status} without a redirect: {}",
                    resp.into_string().unwrap_or_default()
                );
            };
            url = parsed.join(&location).unwrap().to_string();
        }
        panic!("too many redirects from {start}");
    }
}

/// A GET of this server that does not follow its redirect.
fn get_here(srv: &TestServer, path: &str) -> Resp {
    send(by_hand().get(&srv.url(path)), None)
}

/// An HTTP client that leaves redirects to its caller and gives up on a silent peer, so that a
/// stuck server or provider fails the test with the URL instead of hanging it.
fn by_hand() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(std::time::Duration::from_secs(30))
        .build()
}

/// The value of query parameter `name` of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let verifier = format!("verifier-{}-0123456789abcdefghijklmnop", ulid::Ulid::new());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Signs in through the whole redirect flow; returns where the app was sent back to.
fn redirect_sign_in(srv: &TestServer, provider: &str, challenge: &str) -> String {
    let start = srv.url(&format!(
        "/v1/auth/oauth/{provider}/authorize?redirect_url={}&code_challenge={challenge}",
        enc(APP)
    ));
    Browser::default().go(&start, APP)
}

fn exchange(srv: &TestServer, code: &str, verifier: Option<&str>) -> Resp {
    srv.post(
        "/v1/auth/oauth/exchange",
        &json!({"code": code, "code_verifier": verifier}),
    )
}

/// An ID token the OpenID provider issues to app `client` (its own flow, as a platform SDK
/// runs it), with `nonce`.
fn id_token_for(peers: &Peers, client: &str, nonce: &str) -> String {
    let (verifier, challenge) = pkce();
    let start = format!(
        "{}/auth?response_type=code&client_id={client}&redirect_uri={}&scope=openid%20email&nonce={nonce}&state=s&code_challenge={challenge}&code_challenge_method=S256&claims={}",
        peers.url,
        enc("http://127.0.0.1/mobile"),
        enc(r#"{"id_token": {"email": null, "email_verified": null}}"#)
    );
    let back = Browser::default().go(&start, "http://127.0.0.1/mobile");
    let code = param(&back, "code").unwrap_or_else(|| panic!("no code: {back}"));
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}",
        enc("http://127.0.0.1/mobile")
    );
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{client}:{client}-secret"));
    let resp = send(
        agent()
            .post(&format!("{}/token", peers.url))
            .set("Authorization", &format!("Basic {basic}"))
            .set("Content-Type", "application/x-www-form-urlencoded"),
        Some(form.as_bytes()),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json["id_token"].as_str().unwrap().to_string()
}

fn me(srv: &TestServer, token: &str) -> Value {
    with_token(srv, "GET", "/v1/auth/me", token, None)
        .expect(200)
        .json
}

#[test]
fn the_redirect_flow_signs_in_with_pkce_a_one_time_code_and_a_verified_address() {
    let srv = start();
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    let info = add_oidc(&srv, &peers);
    assert_eq!(info["source"], "api");
    assert_eq!(info["has_client_secret"], true);
    assert_eq!(info["settings"]["client_secret"], "");
    assert!(!info.to_string().contains("emberbase-secret"));
    let listed = srv.get("/v1/auth/oauth/providers").expect(200).json;
    assert_eq!(
        listed,
        json!([{"name": "test", "display_name": "Test ID", "kind": "oidc", "id_tokens": true}])
    );

    // The redirect to the provider carries PKCE (S256), state and nonce.
    let (verifier, challenge) = pkce();
    let to_provider = get_here(
        &srv,
        &format!(
            "/v1/auth/oauth/test/authorize?redirect_url={}&code_challenge={challenge}",
            enc(APP)
        ),
    )
    .expect(302);
    let location = to_provider.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/auth?", peers.url)),
        "{location}"
    );
    assert_eq!(
        param(&location, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        param(&location, "code_challenge").map(|c| c.len()),
        Some(43)
    );
    assert_ne!(
        param(&location, "code_challenge").as_deref(),
        Some(challenge.as_str())
    );
    assert!(param(&location, "state").is_some() && param(&location, "nonce").is_some());
    assert_eq!(
        param(&location, "redirect_uri").as_deref(),
        Some(srv.url("/v1/auth/oauth/test/callback").as_str())
    );

    // The whole flow: the app gets a one-time code, never tokens.
    peers.next_login("ada-sub", "Ada@Example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    assert!(
        param(&back, "access_token").is_none() && param(&back, "error").is_none(),
        "{back}"
    );
    let code = param(&back, "code").unwrap_or_else(|| panic!("{back}"));
    assert!(code.starts_with("ebauth_"));
    // The app's own PKCE: without the verifier, or with another, the code is refused (and spent).
    exchange(&srv, &code, None).expect_error(401, "unauthenticated");
    exchange(&srv, &code, Some(&verifier)).expect_error(401, "unauthenticated");
    peers.next_login("ada-sub", "Ada@Example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let code = param(&back, "code").unwrap();
    exchange(
        &srv,
        &code,
        Some("another-verifier-0123456789-0123456789-01"),
    )
    .expect(401);
    peers.next_login("ada-sub", "Ada@Example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let code = param(&back, "code").unwrap();
    let session = exchange(&srv, &code, Some(&verifier)).expect(200).json;
    let user = &session["user"];
    assert_eq!(user["email"], "Ada@example.com");
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["profile"]["name"], "User ada-sub");
    assert_eq!(user["identities"][0]["provider"], "test");
    assert_eq!(user["identities"][0]["subject"], "ada-sub");
    // Once only.
    exchange(&srv, &code, Some(&verifier)).expect(401);
    let token = session["access_token"].as_str().unwrap();
    let who = me(&srv, token);
    assert_eq!(who["id"], user["id"]);
    assert_eq!(who["identities"].as_array().unwrap().len(), 1);

    // The same identity signs in as the same account; the address matches in any case.
    peers.next_login("ada-sub", "ada@example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let again = exchange(&srv, &param(&back, "code").unwrap(), Some(&verifier))
        .expect(200)
        .json;
    assert_eq!(again["user"]["id"], user["id"]);
}

#[test]
fn a_wrong_state_a_replayed_code_and_a_redirect_off_the_list_are_refused() {
    let srv = start();
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    add_oidc(&srv, &peers);
    let (_, challenge) = pkce();
    // Only allow-listed redirects.
    srv.get(&format!(
        "/v1/auth/oauth/test/authorize?redirect_url={}",
        enc("https://evil.test/")
    ))
    .expect_error(400, "validation_failed");
    srv.get(&format!(
        "/v1/auth/oauth/nope/authorize?redirect_url={}",
        enc(APP)
    ))
    .expect_error(404, "not_found");
    srv.get(&format!(
        "/v1/auth/oauth/test/authorize?redirect_url={}&code_challenge=plain",
        enc(APP)
    ))
    .expect_error(400, "validation_failed");

    // Walk a sign-in up to the provider's redirect back, and keep that URL.
    peers.next_login("sam-sub", "sam@example.com", true);
    let start = srv.url(&format!(
        "/v1/auth/oauth/test/authorize?redirect_url={}&code_challenge={challenge}",
        enc(APP)
    ));
    let callback = srv.url("/v1/auth/oauth/test/callback");
    let mut browser = Browser::default();
    let back_here = browser.go(&start, &callback);
    let code = param(&back_here, "code").unwrap();
    let state = param(&back_here, "state").unwrap();

    // A state this server did not issue is refused, with nowhere to redirect.
    srv.get(&format!(
        "/v1/auth/oauth/test/callback?code={code}&state=forged"
    ))
    .expect_error(400, "bad_request");
    srv.get(&format!("/v1/auth/oauth/test/callback?code={code}"))
        .expect_error(400, "bad_request");
    // The real one works once: the provider's extra parameters (`iss`) are ignored.
    let path = &back_here[srv.url("").len()..];
    let done = get_here(&srv, path).expect(302);
    let app = done.header("location").unwrap().to_string();
    assert!(
        app.starts_with(APP) && param(&app, "code").is_some(),
        "{app}"
    );
    get_here(&srv, path).expect_error(400, "bad_request");
    // The provider's code with a fresh state of ours: the provider refuses the replayed code,
    // and the app hears why.
    let authorize = format!("/v1/auth/oauth/test/authorize?redirect_url={}", enc(APP));
    let fresh = get_here(&srv, &authorize).expect(302);
    let fresh_state = param(fresh.header("location").unwrap(), "state").unwrap();
    assert_ne!(fresh_state, state);
    let replay = get_here(
        &srv,
        &format!("/v1/auth/oauth/test/callback?code={code}&state={fresh_state}"),
    );
    let app = replay.expect(302).header("location").unwrap().to_string();
    assert_eq!(
        param(&app, "error").as_deref(),
        Some("access_denied"),
        "{app}"
    );
    assert!(
        param(&app, "error_description")
            .unwrap()
            .contains("invalid_grant"),
        "{app}"
    );
    // The user declining at the provider reaches the app too.
    let declined = get_here(&srv, &authorize).expect(302);
    let state = param(declined.header("location").unwrap(), "state").unwrap();
    let app = get_here(
        &srv,
        &format!("/v1/auth/oauth/test/callback?error=access_denied&state={state}"),
    )
    .expect(302)
    .header("location")
    .unwrap()
    .to_string();
    assert_eq!(param(&app, "error").as_deref(), Some("access_denied"));
}

#[test]
fn id_tokens_from_apps_are_checked_for_audience_expiry_nonce_and_single_use() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        c.auth.id_token_leeway_secs = 0;
    });
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    add_oidc(&srv, &peers);
    peers.next_login("mia-sub", "mia@example.com", true);
    let exchange_token = |token: &str, nonce: Option<&str>| {
        srv.post(
            "/v1/auth/oauth/test/token",
            &json!({"id_token": token, "nonce": nonce}),
        )
    };

    // A token for an app in the provider's `audiences`, with the nonce the app gave its SDK.
    let token = id_token_for(&peers, "mobile-app", "n-123");
    exchange_token(&token, Some("another")).expect_error(401, "unauthenticated");
    exchange_token(&token, None).expect(401);
    let token = id_token_for(&peers, "mobile-app", "n-123");
    let session = exchange_token(&token, Some("n-123")).expect(200).json;
    assert_eq!(session["user"]["email"], "mia@example.com");
    // Once only.
    let again = exchange_token(&token, Some("n-123")).expect(401);
    assert!(again.text.contains("already"), "{}", again.text);

    // A token for another app.
    let foreign = id_token_for(&peers, "other-app", "n-1");
    let refused = exchange_token(&foreign, Some("n-1")).expect(401);
    assert!(refused.text.contains("another client"), "{}", refused.text);
    // A token that has expired (it lives one second; no leeway here).
    let short = id_token_for(&peers, "short-lived", "n-2");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let expired = exchange_token(&short, Some("n-2")).expect(401);
    assert!(expired.text.contains("expired"), "{}", expired.text);
    // Not a JWT, and a token signed by someone else.
    exchange_token("not-a-token", None).expect(401);
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    exchange_token(&parts.join("."), Some("n-123")).expect(401);
}

#[test]
fn a_key_rotated_at_the_provider_is_fetched_on_its_first_use() {
    let srv = start();
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    add_oidc(&srv, &peers);
    let (verifier, challenge) = pkce();
    peers.next_login("rot-sub", "rot@example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let first = exchange(&srv, &param(&back, "code").unwrap(), Some(&verifier))
        .expect(200)
        .json;
    // A new signing key (a new `kid`); keys are fetched again at most once a second.
    peers.post("/control/rotate", &json!({}));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    peers.next_login("rot-sub", "rot@example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let code = param(&back, "code").unwrap_or_else(|| panic!("{back}"));
    let second = exchange(&srv, &code, Some(&verifier)).expect(200).json;
    assert_eq!(first["user"]["id"], second["user"]["id"]);
}

#[test]
fn only_a_verified_address_links_an_existing_account() {
    let srv = start();
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    add_oidc(&srv, &peers);
    let (verifier, challenge) = pkce();
    let sign_in = |sub: &str, email: &str, verified: bool| -> Value {
        peers.next_login(sub, email, verified);
        let back = redirect_sign_in(&srv, "test", &challenge);
        let code = param(&back, "code").unwrap_or_else(|| panic!("{back}"));
        exchange(&srv, &code, Some(&verifier)).expect(200).json
    };

    // Someone signed up with Bob's address (unverified) and a password. The provider vouches
    // for Bob's address: the identity joins that account, and the password set by whoever did
    // not prove the address stops working.
    let squatter = signup(&srv, "bob@example.com");
    let bob = sign_in("bob-sub", "bob@example.com", true);
    assert_eq!(bob["user"]["id"], squatter["user"]["id"]);
    assert_eq!(bob["user"]["email_verified"], true);
    let login = json!({"email": "bob@example.com", "password": "correct horse battery"});
    srv.post("/v1/auth/login", &login).expect(401);
    with_token(
        &srv,
        "GET",
        "/v1/auth/me",
        squatter["access_token"].as_str().unwrap(),
        None,
    )
    .expect(401);

    // A verified account keeps its password when a vouched identity joins it.
    let cat = signup(&srv, "cat@example.com");
    let cat_token = cat["access_token"].as_str().unwrap().to_string();
    with_token(&srv, "POST", "/v1/auth/verify/request", &cat_token, None).expect(202);
    let verify = crate::auth::mailed_token(&srv, "cat@example.com", "Confirm your email");
    srv.post("/v1/auth/verify/confirm", &json!({"token": verify}))
        .expect(200);
    let joined = sign_in("cat-sub", "cat@example.com", true);
    assert_eq!(joined["user"]["id"], cat["user"]["id"]);
    let token = login_token(&srv, "cat@example.com");
    assert_eq!(me(&srv, &cat_token)["identities"][0]["subject"], "cat-sub");
    // An address the provider does not vouch for never claims an account: a new account
    // without an address.
    let eve = sign_in("eve-sub", "cat@example.com", false);
    assert_ne!(eve["user"]["id"], me(&srv, &token)["id"]);
    assert_eq!(eve["user"]["email"], Value::Null);
    assert_eq!(eve["user"]["anonymous"], false);
    assert_eq!(eve["user"]["identities"][0]["email"], "cat@example.com");
    assert_eq!(eve["user"]["identities"][0]["email_verified"], false);
    srv.post(
        "/v1/auth/login",
        &json!({"email": "cat@example.com", "password": "correct horse battery"}),
    )
    .expect(200);
    // Rules see such an account as signed in, without an address, not anonymous.
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"rules": {"read": "auth != null", "create": "auth != null && auth.anonymous == false && auth.email == null"}}),
    )
    .expect(200);
    let eve_token = eve["access_token"].as_str().unwrap();
    with_token(
        &srv,
        "POST",
        "/v1/collections/notes/docs",
        eve_token,
        Some(&json!({"data": {}})),
    )
    .expect(201);
    // Its only way in is the identity: unlinking it is refused.
    with_token(&srv, "DELETE", "/v1/auth/identities/test", eve_token, None)
        .expect_error(409, "conflict");
}

#[test]
fn identities_link_to_a_signed_in_account_upgrade_a_guest_and_unlink() {
    let srv = start();
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    add_oidc(&srv, &peers);

    // A guest links an identity: same id, now a regular account with the vouched address.
    let guest = srv.post("/v1/auth/anonymous", &json!({})).expect(201).json;
    let guest_token = guest["access_token"].as_str().unwrap().to_string();
    let link = |token: &str| -> String {
        let started = with_token(
            &srv,
            "POST",
            "/v1/auth/identities/test/authorize",
            token,
            Some(&json!({"redirect_url": APP})),
        )
        .expect(200)
        .json;
        Browser::default().go(started["authorize_url"].as_str().unwrap(), APP)
    };
    peers.next_login("gus-sub", "gus@example.com", true);
    let back = link(&guest_token);
    assert_eq!(param(&back, "linked").as_deref(), Some("test"), "{back}");
    assert!(param(&back, "code").is_none());
    let upgraded = me(&srv, &guest_token);
    assert_eq!(upgraded["id"], guest["user"]["id"]);
    assert_eq!(upgraded["anonymous"], false);
    assert_eq!(upgraded["email"], "gus@example.com");
    assert_eq!(upgraded["identities"][0]["subject"], "gus-sub");

    // An identity linked to one account cannot be linked to another.
    let other = signup_token(&srv, "other@example.com");
    peers.next_login("gus-sub", "gus@example.com", true);
    let back = link(&other);
    assert_eq!(
        param(&back, "error").as_deref(),
        Some("identity_conflict"),
        "{back}"
    );
    // Linking takes a signed-in user.
    let body = json!({"redirect_url": APP}).to_string();
    let anonymous = srv
        .anon("POST", "/v1/auth/identities/test/authorize")
        .set("Content-Type", "application/json");
    send(anonymous, Some(body.as_bytes())).expect_error(401, "unauthenticated");

    // Unlinking: the account keeps its address, so it can still sign in.
    let unlinked = with_token(
        &srv,
        "DELETE",
        "/v1/auth/identities/test",
        &guest_token,
        None,
    )
    .expect(200)
    .json;
    assert_eq!(unlinked["identities"], json!([]));
    with_token(
        &srv,
        "DELETE",
        "/v1/auth/identities/test",
        &guest_token,
        None,
    )
    .expect_error(404, "not_found");
    // And the identity is free again: it now joins the account of its vouched address.
    let (verifier, challenge) = pkce();
    peers.next_login("gus-sub", "gus@example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let again = exchange(&srv, &param(&back, "code").unwrap(), Some(&verifier))
        .expect(200)
        .json;
    assert_eq!(again["user"]["id"], guest["user"]["id"]);

    // An app's ID token links too, once.
    let token = id_token_for(&peers, "mobile-app", "n-9");
    let linked = with_token(
        &srv,
        "POST",
        "/v1/auth/identities/test",
        &other,
        Some(&json!({"id_token": token, "nonce": "n-9"})),
    );
    // gus-sub is the provider's account again (the last login): linked to the guest.
    linked.expect_error(409, "conflict");
    peers.next_login("oli-sub", "oli@example.com", true);
    let token = id_token_for(&peers, "mobile-app", "n-10");
    let body = json!({"id_token": token, "nonce": "n-10"});
    let linked = with_token(
        &srv,
        "POST",
        "/v1/auth/identities/test",
        &other,
        Some(&body),
    )
    .expect(200)
    .json;
    assert_eq!(linked["identities"][0]["subject"], "oli-sub");
    assert_eq!(linked["email"], "other@example.com");
}

#[test]
fn totp_turns_a_provider_sign_in_into_a_challenge() {
    let srv = start();
    let Some(peers) = peers(&srv, "test") else {
        return;
    };
    add_oidc(&srv, &peers);
    let (verifier, challenge) = pkce();
    peers.next_login("tia-sub", "tia@example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let session = exchange(&srv, &param(&back, "code").unwrap(), Some(&verifier))
        .expect(200)
        .json;
    let token = session["access_token"].as_str().unwrap();
    let enrolled = with_token(&srv, "POST", "/v1/auth/mfa/totp/enroll", token, None)
        .expect(200)
        .json;
    let secret = enrolled["secret"].as_str().unwrap();
    with_token(
        &srv,
        "POST",
        "/v1/auth/mfa/totp/confirm",
        token,
        Some(&json!({"code": crate::auth::totp_code(secret, 0)})),
    )
    .expect(200);

    peers.next_login("tia-sub", "tia@example.com", true);
    let back = redirect_sign_in(&srv, "test", &challenge);
    let answer = exchange(&srv, &param(&back, "code").unwrap(), Some(&verifier))
        .expect(200)
        .json;
    assert_eq!(answer["mfa_required"], true);
    assert!(answer["access_token"].is_null());
    let mfa_token = answer["mfa_token"].as_str().unwrap();
    let done = srv
        .post(
            "/v1/auth/mfa/verify",
            &json!({"mfa_token": mfa_token, "code": crate::auth::totp_code(secret, 1)}),
        )
        .expect(200)
        .json;
    assert_eq!(done["user"]["id"], session["user"]["id"]);
}

#[test]
fn github_style_oauth2_signs_in_from_the_verified_primary_address() {
    let srv = start();
    let Some(peers) = peers(&srv, "github") else {
        return;
    };
    let github = |path: &str| format!("{}/github{path}", peers.url);
    let info = srv
        .put(
            "/v1/admin/auth/providers/github",
            &json!({
                "client_id": "gh-client",
                "client_secret": "gh-secret",
                "redirect_urls": [APP],
                "authorization_url": github("/login/oauth/authorize"),
                "token_url": github("/login/oauth/access_token"),
                "userinfo_url": github("/user"),
                "callback_url": srv.url("/v1/auth/oauth/github/callback"),
            }),
        )
        .expect(200)
        .json;
    assert_eq!(info["kind"], "github");
    assert_eq!(info["display_name"], "GitHub");
    let (verifier, challenge) = pkce();
    let back = redirect_sign_in(&srv, "github", &challenge);
    let session = exchange(
        &srv,
        &param(&back, "code").unwrap_or_else(|| panic!("{back}")),
        Some(&verifier),
    )
    .expect(200)
    .json;
    let user = &session["user"];
    assert_eq!(user["email"], "octocat@example.com");
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["profile"]["name"], "The Octocat");
    assert_eq!(user["identities"][0]["subject"], "4242");
    // GitHub issues no ID tokens.
    srv.post("/v1/auth/oauth/github/token", &json!({"id_token": "x.y.z"}))
        .expect_error(400, "bad_request");

    // A primary address GitHub has not verified does not become the account's.
    peers.post(
        "/control/github",
        &json!({
            "user": {"id": 777, "login": "newbie", "name": null, "email": "newbie@example.com"},
            "emails": [{"email": "newbie@example.com", "primary": true, "verified": false}],
        }),
    );
    let back = redirect_sign_in(&srv, "github", &challenge);
    let newbie = exchange(&srv, &param(&back, "code").unwrap(), Some(&verifier))
        .expect(200)
        .json;
    assert_eq!(newbie["user"]["email"], Value::Null);
    assert_eq!(newbie["user"]["profile"]["name"], "newbie");

    // A wrong client secret: the app hears that the provider refused.
    let mut bad = srv.get("/v1/admin/auth/providers").expect(200).json[0]["settings"].clone();
    bad["client_secret"] = json!("wrong");
    srv.put("/v1/admin/auth/providers/github", &bad).expect(200);
    let back = redirect_sign_in(&srv, "github", &challenge);
    assert_eq!(
        param(&back, "error").as_deref(),
        Some("access_denied"),
        "{back}"
    );
}

#[test]
fn providers_from_the_config_file_are_listed_read_only_and_checked() {
    let Some(probe) = ({
        let srv = start();
        peers(&srv, "corp")
    }) else {
        return;
    };
    let issuer = probe.url.clone();
    let srv = TestServer::start_with(|c| {
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        c.auth.public_url = "https://api.example.com".into();
        fast(c);
        c.auth.redirect_urls = vec![APP.into()];
        c.auth.providers.insert(
            "corp".into(),
            emberbase::config::OAuthProviderConfig {
                issuer: issuer.clone(),
                client_id: "emberbase".into(),
                client_secret: "from-the-environment".into(),
                ..Default::default()
            },
        );
    });
    let listed = srv.get("/v1/admin/auth/providers").expect(200).json;
    assert_eq!(listed[0]["name"], "corp");
    assert_eq!(listed[0]["source"], "config");
    assert_eq!(listed[0]["kind"], "oidc");
    assert_eq!(
        listed[0]["callback_url"],
        "https://api.example.com/v1/auth/oauth/corp/callback"
    );
    assert!(!listed.to_string().contains("from-the-environment"));
    srv.put(
        "/v1/admin/auth/providers/corp",
        &json!({"issuer": issuer, "client_id": "x", "client_secret": "y"}),
    )
    .expect_error(409, "conflict");
    srv.delete("/v1/admin/auth/providers/corp")
        .expect_error(409, "conflict");
    let to_provider = get_here(
        &srv,
        &format!("/v1/auth/oauth/corp/authorize?redirect_url={}", enc(APP)),
    )
    .expect(302);
    let location = to_provider.header("location").unwrap();
    assert_eq!(
        param(location, "redirect_uri").as_deref(),
        Some("https://api.example.com/v1/auth/oauth/corp/callback")
    );

    // Settings that cannot work are refused with the reason, before anything is stored.
    let bad = srv
        .put(
            "/v1/admin/auth/providers/acme",
            &json!({"kind": "oidc", "client_id": "x", "client_secret": "y"}),
        )
        .expect_error(400, "validation_failed");
    assert!(bad.text.contains("issuer is required"), "{}", bad.text);
    let unreachable = srv
        .put(
            "/v1/admin/auth/providers/acme",
            &json!({"kind": "oidc", "issuer": "http://127.0.0.1:9/", "client_id": "x", "client_secret": "y"}),
        )
        .expect_error(400, "validation_failed");
    assert!(
        unreachable.text.contains("cannot reach"),
        "{}",
        unreachable.text
    );
    assert_eq!(
        srv.get("/v1/admin/auth/providers")
            .expect(200)
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Nor at a private address unless allow-listed (as every outbound request of the server).
    let private = srv
        .put(
            "/v1/admin/auth/providers/acme",
            &json!({"kind": "oidc", "issuer": "http://10.0.0.1/", "client_id": "x", "client_secret": "y"}),
        )
        .expect_error(400, "validation_failed");
    assert!(private.text.contains("private"), "{}", private.text);
    // Not an admin.
    let user = signup_token(&srv, "plain@example.com");
    with_token(&srv, "GET", "/v1/admin/auth/providers", &user, None).expect(403);
    // A bad provider in the config file stops the start with its name.
    let mut config = emberbase::Config::default();
    config.auth.providers.insert(
        "corp".into(),
        emberbase::config::OAuthProviderConfig {
            client_id: "x".into(),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let refused = srv.block_on(
        emberbase::ServerBuilder::new(config)
            .data_dir(dir.path())
            .bind("127.0.0.1:0")
            .start(),
    );
    let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("auth.providers.corp"), "{err}");
    assert!(err.contains("issuer is required"), "{err}");
}
