// Webhooks: every endpoint with what it listens to; a new one (its signing secret shown once);
// one endpoint's settings, secret rotation, messages (redelivered on demand) and the log of
// delivery attempts.
import { useState } from "preact/hooks";
import { api, call, problem, when, type Problem, type Schemas } from "../api";
import { JsonEditor } from "../json-editor";
import { navigate } from "../router";
import { Empty, Field, Grid, Link, ProblemLine, useLoad } from "../ui";

type Webhook = Schemas["WebhookInfo"];
type Spec = Schemas["WebhookSpec"];

function source(w: Spec): string {
  if (w.collection) return `collection ${w.collection}`;
  if (w.bucket) return `bucket ${w.bucket}`;
  return w.accounts ? "accounts" : "—";
}

/** The signing secret, shown once after creating or rotating. */
function Secret(props: { secret: string }) {
  return (
    <div role="status" class="card">
      <Field label="Signing secret (shown this once: keep it where the receiver can read it)">
        <input class="mono" readOnly value={props.secret} onFocus={(e) => e.currentTarget.select()} />
      </Field>
    </div>
  );
}

export function Webhooks() {
  const list = useLoad(() => call((headers) => api.GET("/v1/admin/webhooks", { headers })), []);
  const [url, setUrl] = useState("");
  const [kind, setKind] = useState<"collection" | "bucket" | "accounts">("collection");
  const [name, setName] = useState("");
  const [events, setEvents] = useState("");
  const [error, setError] = useState<Problem | null>(null);
  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const spec: Spec = {
      url: url.trim(),
      events: events
        .split(",")
        .map((x) => x.trim())
        .filter(Boolean),
      ...(kind === "accounts" ? { accounts: true } : { [kind]: name.trim() }),
    };
    try {
      const made = await call((headers) => api.POST("/v1/admin/webhooks", { headers, body: spec }));
      sessionStorage.setItem(`emberbase.console.secret.${made.id}`, made.secret);
      navigate(`/webhooks/${encodeURIComponent(made.id)}`);
    } catch (err) {
      setError(problem(err));
    }
  };
  return (
    <section aria-labelledby="webhooks-title">
      <h1 id="webhooks-title">Webhooks</h1>
      <ProblemLine problem={list.error} />
      {list.value && list.value.items.length === 0 && <Empty>No webhooks yet.</Empty>}
      {list.value && list.value.items.length > 0 && (
        <Grid columns={["Endpoint", "On", "Events", "State"]}>
          {list.value.items.map((w) => (
            <tr key={w.id} data-webhook={w.url}>
              <td>
                <Link to={`/webhooks/${encodeURIComponent(w.id)}`}>{w.name || w.url}</Link>
              </td>
              <td>{source(w)}</td>
              <td>{w.events?.length ? w.events.join(", ") : "all"}</td>
              <td>{w.enabled === false ? <span class="tag delete">paused</span> : <span class="tag ready">on</span>}</td>
            </tr>
          ))}
        </Grid>
      )}
      <form class="card" onSubmit={create} aria-labelledby="new-webhook-title">
        <h2 id="new-webhook-title">New webhook</h2>
        <Field label="URL" hint="Where each event is POSTed, signed with the Standard Webhooks headers.">
          <input name="webhook-url" type="url" value={url} onInput={(e) => setUrl(e.currentTarget.value)} required />
        </Field>
        <div class="row">
          <Field label="On">
            <select value={kind} onChange={(e) => setKind(e.currentTarget.value as typeof kind)}>
              <option value="collection">a collection's documents</option>
              <option value="bucket">a bucket's files</option>
              <option value="accounts">accounts</option>
            </select>
          </Field>
          {kind !== "accounts" && (
            <Field label={kind === "collection" ? "Collection" : "Bucket"}>
              <input name="webhook-source" value={name} onInput={(e) => setName(e.currentTarget.value)} required />
            </Field>
          )}
          <Field label="Events" hint="Comma-separated; empty: all of them.">
            <input name="webhook-events" value={events} onInput={(e) => setEvents(e.currentTarget.value)} />
          </Field>
        </div>
        <ProblemLine problem={error} />
        <button type="submit" class="primary">
          Create
        </button>
      </form>
    </section>
  );
}

/** The settings a PUT takes, from what a GET shows. */
function specOf(w: Webhook): Spec {
  const { url, collection, bucket, accounts, events, when, name, description, enabled, concurrency, max_attempts } = w;
  return { url, collection, bucket, accounts, events, when, name, description, enabled, concurrency, max_attempts };
}

export function WebhookPage(props: { id: string }) {
  const path = { path: { id: props.id } };
  const hook = useLoad(() => call((headers) => api.GET("/v1/admin/webhooks/{id}", { headers, params: path })), [props.id]);
  const [secret, setSecret] = useState(() => {
    const key = `emberbase.console.secret.${props.id}`;
    const kept = sessionStorage.getItem(key);
    sessionStorage.removeItem(key);
    return kept;
  });
  const [text, setText] = useState("");
  const [error, setError] = useState<Problem | null>(null);
  const [notice, setNotice] = useState("");
  const [status, setStatus] = useState("");
  const messages = useLoad(
    () => call((headers) => api.GET("/v1/admin/webhooks/{id}/messages", { headers, params: { ...path, query: { limit: 50, status: status || undefined } } })),
    [props.id, status],
  );
  const deliveries = useLoad(() => call((headers) => api.GET("/v1/admin/webhooks/{id}/deliveries", { headers, params: { ...path, query: { limit: 50 } } })), [props.id]);
  const refresh = () => {
    messages.reload();
    deliveries.reload();
  };
  const initial = hook.value ? JSON.stringify(specOf(hook.value), null, 2) : "";
  const save = async () => {
    setError(null);
    setNotice("");
    try {
      const spec = JSON.parse(text || initial) as Spec;
      await call((headers) => api.PUT("/v1/admin/webhooks/{id}", { headers, params: path, body: spec }));
      setNotice("Saved.");
      hook.reload();
    } catch (e) {
      setError(e instanceof SyntaxError ? { message: `Not valid JSON: ${e.message}` } : problem(e));
    }
  };
  const rotate = async () => {
    try {
      const rotated = await call((headers) => api.POST("/v1/admin/webhooks/{id}/rotate-secret", { headers, params: path }));
      setSecret(rotated.secret);
      setNotice(`A new secret signs deliveries; the previous one also does until ${when(rotated.previous_secret_expires_at)}.`);
    } catch (e) {
      setError(problem(e));
    }
  };
  const remove = async () => {
    if (!confirm("Delete this webhook? Its queued messages go with it.")) return;
    try {
      await call((headers) => api.DELETE("/v1/admin/webhooks/{id}", { headers, params: path }));
      navigate("/webhooks");
    } catch (e) {
      setError(problem(e));
    }
  };
  const redeliver = async (message: string) => {
    try {
      await call((headers) => api.POST("/v1/admin/webhooks/{id}/messages/{message_id}/redeliver", { headers, params: { path: { id: props.id, message_id: message } } }));
      setNotice("Queued again.");
      setTimeout(refresh, 500);
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <section aria-labelledby="webhook-title">
      <p class="crumbs">
        <Link to="/webhooks">Webhooks</Link> /
      </p>
      <h1 id="webhook-title">{hook.value ? hook.value.name || hook.value.url : props.id}</h1>
      <ProblemLine problem={hook.error} />
      {secret && <Secret secret={secret} />}
      {hook.value && (
        <>
          <p class="meta">
            {source(hook.value)} · {hook.value.url} · since {when(hook.value.created_at)}
          </p>
          <JsonEditor value={initial} label="Webhook settings (JSON)" onChange={setText} />
          <div class="actions">
            <button type="button" class="primary" onClick={save}>
              Save
            </button>
            <button type="button" onClick={rotate}>
              Rotate the secret
            </button>
            <button type="button" class="danger" onClick={remove}>
              Delete
            </button>
          </div>
        </>
      )}
      {notice && <p role="status">{notice}</p>}
      <ProblemLine problem={error} />
      <h2>Messages</h2>
      <div class="inline row">
        <Field label="Status">
          <select name="message-status" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
            {["", "pending", "delivered", "dead"].map((s) => (
              <option key={s} value={s}>
                {s || "any"}
              </option>
            ))}
          </select>
        </Field>
        <button type="button" onClick={refresh}>
          Refresh
        </button>
      </div>
      <ProblemLine problem={messages.error} />
      {messages.value && messages.value.items.length === 0 && <Empty>No messages{status ? ` ${status}` : " yet"}.</Empty>}
      {messages.value && messages.value.items.length > 0 && (
        <Grid columns={["Message", "Type", "Status", "Attempts", "Created", "Actions"]}>
          {messages.value.items.map((m) => (
            <tr key={m.id} data-message={m.id} data-status={m.status}>
              <td class="mono">{m.id}</td>
              <td>{m.type}</td>
              <td>{m.status}</td>
              <td class="num">{m.attempts}</td>
              <td>{when(m.created_at)}</td>
              <td>
                <button type="button" onClick={() => redeliver(m.id)}>
                  Redeliver
                </button>
              </td>
            </tr>
          ))}
        </Grid>
      )}
      <h2>Deliveries</h2>
      <ProblemLine problem={deliveries.error} />
      {deliveries.value && deliveries.value.items.length === 0 && <Empty>No delivery attempts yet.</Empty>}
      {deliveries.value && deliveries.value.items.length > 0 && (
        <Grid columns={["When", "Message", "Attempt", "Status", "Response", "Latency"]}>
          {deliveries.value.items.map((d) => (
            <tr key={d.id} data-delivery={d.id} data-status={d.status}>
              <td>{when(d.at)}</td>
              <td class="mono">{d.message_id}</td>
              <td class="num">{d.attempt}</td>
              <td>{d.status}</td>
              <td>
                {d.response_status ?? ""} {d.error ?? ""}
                {d.response && <code class="preview">{d.response}</code>}
              </td>
              <td class="num">{d.latency_ms} ms</td>
            </tr>
          ))}
        </Grid>
      )}
    </section>
  );
}
