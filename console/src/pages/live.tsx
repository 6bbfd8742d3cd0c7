// Live: every collection's changes as they commit (the admins' realtime topic `*`), newest
// first, and the mail outbox.
import { useEffect, useState } from "preact/hooks";
import type { AnyChangeEvent } from "emberbase";
import { api, call, eb, problem, when, type Problem } from "../api";
import { Empty, Link, ProblemLine, useLoad, Grid } from "../ui";

/** The most changes the tail keeps on screen. */
const KEPT = 200;

type Change = Extract<AnyChangeEvent, { collection: string }>;

export function Live() {
  const [changes, setChanges] = useState<Change[]>([]);
  const [live, setLive] = useState(false);
  const [paused, setPaused] = useState(false);
  const [error, setError] = useState<Problem | null>(null);
  useEffect(() => {
    if (paused) return;
    return eb.changes(
      (event) => {
        if (event.type === "reset") return;
        setChanges((c) => [event, ...c].slice(0, KEPT));
      },
      { onReady: () => setLive(true), onError: (e) => setError(problem(e)) },
    );
  }, [paused]);
  const outbox = useLoad(() => call((headers) => api.GET("/v1/admin/outbox", { headers, params: { query: { limit: 50 } } })), []);
  return (
    <section aria-labelledby="live-title">
      <h1 id="live-title">Live</h1>
      <h2>Changes</h2>
      <p class="meta" role="status">
        {paused ? "Paused." : live ? "Live: every write to any collection appears here as it commits." : "Connecting…"}{" "}
        <button type="button" onClick={() => setPaused(!paused)}>
          {paused ? "Resume" : "Pause"}
        </button>
      </p>
      <ProblemLine problem={error} />
      {changes.length === 0 ? (
        <Empty>Nothing yet. Write a document and it shows up here.</Empty>
      ) : (
        <ol class="tail" aria-label="Changes, newest first">
          {changes.map((c) => (
            <li key={c.seq} data-seq={c.seq} data-kind={c.type}>
              <span class={`tag ${c.type}`}>{c.type}</span>{" "}
              <Link to={`/collections/${encodeURIComponent(c.collection)}`}>{c.collection}</Link>/<span class="mono">{c.id}</span>{" "}
              <span class="meta">
                v{c.doc.version} · {when(c.doc.updated_at)} · #{c.seq}
              </span>
              <code class="preview">{JSON.stringify(c.doc.data).slice(0, 160)}</code>
            </li>
          ))}
        </ol>
      )}
      <h2>Mail outbox</h2>
      <p class="meta">
        Mail the server sent or queued (without SMTP configured, it stays here).{" "}
        <button type="button" onClick={outbox.reload}>
          Refresh
        </button>
      </p>
      <ProblemLine problem={outbox.error} />
      {outbox.value && outbox.value.items.length === 0 && <Empty>No mail.</Empty>}
      {outbox.value && outbox.value.items.length > 0 && (
        <Grid columns={["To", "Subject", "Queued", "State"]}>
            {outbox.value.items.map((m) => (
              <tr key={m.id}>
                <td>{m.to}</td>
                <td>{m.subject}</td>
                <td>{when(m.created_at)}</td>
                <td>{m.delivery ?? ""}</td>
              </tr>
            ))}
        </Grid>
      )}
    </section>
  );
}
