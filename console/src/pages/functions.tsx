// Functions: upload a module or JavaScript source, activate a kept version again, set its
// secrets (write-only), edit the config, follow the invocation log live (the server's
// per-function SSE stream), filter it by status, run a failed or dead event again, and call an
// HTTP function with a JSON body.
import { useEffect, useState } from "preact/hooks";
import { api, call, eb, problem, when, type Problem, type Schemas } from "../api";
import { JsonEditor } from "../json-editor";
import { bytes, Empty, Field, Link, ProblemLine, useAction, useLoad, Grid } from "../ui";
import { navigate } from "../router";

type Invocation = Schemas["Invocation"];
const STATUSES = ["", "ok", "error", "timeout", "dead", "dropped"];
/** The most records the log keeps on screen. */
const KEPT = 200;

export function Functions() {
  const list = useLoad(() => call((headers) => api.GET("/v1/admin/functions", { headers })), []);
  const [name, setName] = useState("");
  const [file, setFile] = useState<File | null>(null);
  const [error, setError] = useState<Problem | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!file) return;
    setError(null);
    try {
      await upload(name.trim(), file);
      navigate(`/functions/${encodeURIComponent(name.trim())}`);
    } catch (err) {
      setError(problem(err));
    }
  };
  return (
    <section aria-labelledby="functions-title">
      <h1 id="functions-title">Functions</h1>
      <ProblemLine problem={list.error} />
      {list.value && list.value.items.length === 0 && <Empty>No functions yet.</Empty>}
      {list.value && list.value.items.length > 0 && (
        <Grid columns={["Name", "Language", "Triggers", "Version", "Updated"]}>
            {list.value.items.map((f) => (
              <tr key={f.name} data-function={f.name}>
                <td>
                  <Link to={`/functions/${encodeURIComponent(f.name)}`}>{f.name}</Link>
                </td>
                <td>{f.language ?? "wasm"}</td>
                <td>{(f.config.triggers ?? []).map((t) => [t.on, t.collection ?? t.bucket ?? t.cron].filter(Boolean).join(" ")).join(", ") || "none"}</td>
                <td class="num">{f.version ?? ""}</td>
                <td>{when(f.updated_at)}</td>
              </tr>
            ))}
        </Grid>
      )}
      <form class="card" onSubmit={submit} aria-labelledby="deploy-title">
        <h2 id="deploy-title">Upload a function</h2>
        <div class="row">
          <Field label="Name">
            <input name="function-name" class="mono" value={name} onInput={(e) => setName(e.currentTarget.value)} required />
          </Field>
          <Field label="Module (.wasm) or JavaScript (.js)">
            <input name="module" type="file" accept=".wasm,.js,.mjs" onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)} required />
          </Field>
          <button type="submit" class="primary">
            Upload
          </button>
        </div>
        <ProblemLine problem={error} />
      </form>
    </section>
  );
}

/** Sends a function's code with the session's token: a module, or JavaScript source. */
async function upload(name: string, file: File): Promise<void> {
  const javascript = /\.m?js$/.test(file.name);
  await call((headers) =>
    api.PUT("/v1/admin/functions/{name}", {
      headers: { ...headers, "Content-Type": javascript ? "text/javascript" : "application/wasm" },
      params: { path: { name } },
      body: file as unknown as string,
      bodySerializer: (body: unknown) => body as BodyInit,
    }),
  );
}

export function FunctionPage(props: { name: string }) {
  const info = useLoad(() => call((headers) => api.GET("/v1/admin/functions/{name}", { headers, params: { path: { name: props.name } } })), [props.name]);
  const [file, setFile] = useState<File | null>(null);
  const [uploaded, setUploaded] = useState<Problem | null>(null);
  const [notice, setNotice] = useState("");
  const send = async (e: Event) => {
    e.preventDefault();
    if (!file) return;
    setUploaded(null);
    try {
      await upload(props.name, file);
      setNotice("Uploaded: the new version is active.");
      info.reload();
    } catch (err) {
      setUploaded(problem(err));
    }
  };
  const http = info.value?.config.triggers?.some((t) => t.on === "http");
  return (
    <section aria-labelledby="function-title">
      <p class="crumbs">
        <Link to="/functions">Functions</Link> /
      </p>
      <h1 id="function-title">
        {props.name} {info.value && <span class="badge">version {info.value.version} · {info.value.language ?? "wasm"}</span>}
      </h1>
      <ProblemLine problem={info.error} />
      <form class="inline" onSubmit={send}>
        <Field label="New version (.wasm or .js)">
          <input name="new-version" type="file" accept=".wasm,.js,.mjs" onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)} />
        </Field>
        <button type="submit">Upload</button>
        {notice && <span role="status">{notice}</span>}
      </form>
      <ProblemLine problem={uploaded} />
      {info.value && (
        <Versions
          name={props.name}
          active={info.value.version}
          changed={() => {
            setNotice("");
            info.reload();
          }}
        />
      )}
      <Secrets name={props.name} />
      {info.value && <ConfigEditor name={props.name} config={info.value.config} saved={info.reload} />}
      {http && <Invoke name={props.name} />}
      <InvocationLog name={props.name} />
    </section>
  );
}

/** The kept versions, newest first; any can be made the active one again (a rollback). */
function Versions(props: { name: string; active: number | undefined; changed: () => void }) {
  const path = { path: { name: props.name } };
  const list = useLoad(
    () => call((headers) => api.GET("/v1/admin/functions/{name}/versions", { headers, params: path })),
    [props.name, props.active],
  );
  const [error, setError] = useState<Problem | null>(null);
  const activate = async (version: number) => {
    setError(null);
    try {
      await call((headers) =>
        api.POST("/v1/admin/functions/{name}/versions/{version}/activate", { headers, params: { path: { name: props.name, version } } }),
      );
      props.changed();
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <section class="card" aria-labelledby="versions-title">
      <h2 id="versions-title">Versions</h2>
      <p class="hint">Events and calls run the active version; an event records the version it ran on.</p>
      <ProblemLine problem={error ?? list.error} />
      {list.value && (
        <Grid columns={["Version", "Uploaded", "Size", "SHA-256", ""]}>
          {list.value.items.map((v) => (
            <tr key={v.version} data-version={v.version}>
              <td class="num">{v.version}</td>
              <td>{when(v.created_at)}</td>
              <td>{bytes(v.size)}</td>
              <td class="mono" title={v.sha256}>
                {v.sha256.slice(0, 12)}
              </td>
              <td>
                {v.active ? (
                  <span class="tag ready">active</span>
                ) : (
                  <button type="button" onClick={() => activate(v.version)}>
                    Activate
                  </button>
                )}
              </td>
            </tr>
          ))}
        </Grid>
      )}
    </section>
  );
}

/** The function's secrets by name: set or replaced with a value never shown again, or deleted. */
function Secrets(props: { name: string }) {
  const path = { path: { name: props.name } };
  const list = useLoad(() => call((headers) => api.GET("/v1/admin/functions/{name}/secrets", { headers, params: path })), [props.name]);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const { error, notice, act } = useAction(list.reload);
  const set = (e: Event) => {
    e.preventDefault();
    const secret = name.trim();
    void act(`${secret} is set: the guest reads it with env.get, and it is never shown again.`, async () => {
      await call((headers) =>
        api.PUT("/v1/admin/functions/{name}/secrets/{secret}", { headers, params: { path: { name: props.name, secret } }, body: { value } }),
      );
      setName("");
      setValue("");
    });
  };
  const remove = (secret: string) =>
    act(`${secret} is deleted.`, () =>
      call((headers) => api.DELETE("/v1/admin/functions/{name}/secrets/{secret}", { headers, params: { path: { name: props.name, secret } } })),
    );
  return (
    <form class="card" onSubmit={set} aria-labelledby="secrets-title">
      <h2 id="secrets-title">Secrets</h2>
      <ProblemLine problem={list.error} />
      {list.value && list.value.length === 0 && <Empty>No secrets.</Empty>}
      {list.value && list.value.length > 0 && (
        <Grid columns={["Name", "Set", ""]}>
          {list.value.map((s) => (
            <tr key={s.name} data-secret={s.name}>
              <td class="mono">{s.name}</td>
              <td>{when(s.updated_at)}</td>
              <td>
                <button type="button" class="danger" onClick={() => remove(s.name)}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </Grid>
      )}
      <div class="row">
        <Field label="Secret name" hint="A-Z, 0-9 and _; a name that exists is replaced.">
          <input name="secret-name" class="mono" value={name} onInput={(e) => setName(e.currentTarget.value)} required />
        </Field>
        <Field label="Value">
          <input name="secret-value" type="password" autocomplete="off" value={value} onInput={(e) => setValue(e.currentTarget.value)} required />
        </Field>
      </div>
      <button type="submit">Set secret</button>
      <ProblemLine problem={error} />
      {notice && <p role="status">{notice}</p>}
    </form>
  );
}

function ConfigEditor(props: { name: string; config: Schemas["FunctionConfig"]; saved: () => void }) {
  const initial = JSON.stringify(props.config, null, 2);
  const [text, setText] = useState(initial);
  const [error, setError] = useState<Problem | null>(null);
  const [done, setDone] = useState(false);
  const save = async () => {
    setError(null);
    setDone(false);
    let config: Schemas["FunctionConfig"];
    try {
      config = JSON.parse(text);
    } catch (e) {
      setError({ message: `Not valid JSON: ${(e as Error).message}` });
      return;
    }
    try {
      await call((headers) => api.PUT("/v1/admin/functions/{name}/config", { headers, params: { path: { name: props.name } }, body: config }));
      setDone(true);
      props.saved();
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <div class="config">
      <h2>Config</h2>
      <p class="hint">
        Triggers (<code>create</code>, <code>update</code>, <code>delete</code>, <code>write</code> on a collection or bucket, <code>http</code>,{" "}
        <code>schedule</code> with <code>cron</code>, before-write hooks), limits (<code>fuel</code>, <code>memory_mb</code>,{" "}
        <code>timeout_ms</code>), retries, concurrency, <code>fetch</code> hosts and a daily quota.
      </p>
      <JsonEditor value={initial} label="Function config (JSON)" onChange={setText} />
      <ProblemLine problem={error} />
      <div class="actions">
        <button type="button" class="primary" onClick={save}>
          Save config
        </button>
        {done && <span role="status">Saved.</span>}
      </div>
    </div>
  );
}

function Invoke(props: { name: string }) {
  const [body, setBody] = useState("{}");
  const [result, setResult] = useState<string | null>(null);
  const [error, setError] = useState<Problem | null>(null);
  const run = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setResult(null);
    try {
      const answer = await eb.functions.call(props.name, JSON.parse(body));
      setResult(JSON.stringify(answer, null, 2));
    } catch (err) {
      setError(err instanceof SyntaxError ? { message: `Not valid JSON: ${err.message}` } : problem(err));
    }
  };
  return (
    <form class="card" onSubmit={run} aria-labelledby="invoke-title">
      <h2 id="invoke-title">Call it</h2>
      <Field label="Request body (JSON)">
        <textarea class="mono" name="invoke-body" rows={3} value={body} onInput={(e) => setBody(e.currentTarget.value)} />
      </Field>
      <button type="submit">Call</button>
      <ProblemLine problem={error} />
      {result !== null && (
        <pre class="preview-text" aria-label="Answer" data-testid="answer">
          {result}
        </pre>
      )}
    </form>
  );
}

function InvocationLog(props: { name: string }) {
  const [status, setStatus] = useState("");
  const [records, setRecords] = useState<Invocation[]>([]);
  const [error, setError] = useState<Problem | null>(null);
  const [live, setLive] = useState(false);
  const [replayed, setReplayed] = useState<Record<string, string>>({});
  useEffect(() => {
    let current = true;
    call((headers) =>
      api.GET("/v1/admin/functions/{name}/invocations", {
        headers,
        params: { path: { name: props.name }, query: { limit: 50, status: status || undefined } },
      }),
    ).then(
      (list) => current && setRecords(list.items),
      (e) => current && setError(problem(e)),
    );
    return () => {
      current = false;
    };
  }, [props.name, status]);
  // New records arrive through the function's log stream (the SDK reconnects after the last).
  useEffect(() => {
    setLive(false);
    return eb.functions.follow(
      props.name,
      (record) => {
        if (!status || record.status === status) setRecords((r) => [record, ...r.filter((x) => x.id !== record.id)].slice(0, KEPT));
      },
      { onReady: () => setLive(true), onError: (e) => setError(problem(e)) },
    );
  }, [props.name, status]);
  const replay = async (record: Invocation) => {
    if (!record.event_id) return;
    try {
      const run = await call((headers) =>
        api.POST("/v1/admin/functions/{name}/replay", { headers, params: { path: { name: props.name } }, body: { event_id: record.event_id! } }),
      );
      setReplayed((r) => ({ ...r, [record.id]: run.status }));
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <div class="log">
      <h2>Invocations</h2>
      <div class="inline row">
        <Field label="Status">
          <select name="status" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s || "any"}
              </option>
            ))}
          </select>
        </Field>
        <span class="meta" role="status">
          {live ? "Live: new runs appear as they finish." : "Connecting…"}
        </span>
      </div>
      <ProblemLine problem={error} />
      {records.length === 0 ? (
        <Empty>No invocations{status ? ` with status ${status}` : " yet"}.</Empty>
      ) : (
        <ol class="tail" aria-label="Invocations, newest first">
          {records.map((r) => (
            <li key={r.id} data-invocation={r.id} data-status={r.status}>
              <span class={`tag ${r.status === "ok" ? "ready" : "delete"}`}>{r.status}</span> <span class="mono">{r.trigger}</span>{" "}
              <span class="meta">
                {when(r.at)} · {((r.duration_us ?? 0) / 1000).toFixed(1)} ms · fuel {r.fuel ?? 0} · v{r.version ?? "?"} · attempt {r.attempt ?? 1}
                {r.replay ? " · replay" : ""}
              </span>
              {r.error && <code class="preview">{r.error}</code>}
              {r.logs && r.logs.length > 0 && (
                <details>
                  <summary>{r.logs.length} log lines</summary>
                  <pre class="preview-text">{r.logs.map((l) => `${l.level} ${l.message}`).join("\n")}</pre>
                </details>
              )}
              {r.event_id && (r.status === "dead" || r.status === "error" || r.status === "timeout") && (
                <button type="button" onClick={() => replay(r)}>
                  Run again
                </button>
              )}
              {replayed[r.id] && <span role="status"> ran again: {replayed[r.id]}</span>}
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}
