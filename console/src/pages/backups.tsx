// Backups: every archive with its state, size and origin; a new one on demand (the list follows
// it until it is ready); download (through a short-lived link, so the browser streams it to
// disk) and delete.
import { useEffect } from "preact/hooks";
import { api, call, when, type Schemas } from "../api";
import { bytes, Empty, Grid, ProblemLine, save, useAction, useLoad } from "../ui";

type Backup = Schemas["BackupInfo"];

export function Backups() {
  const list = useLoad(() => call((headers) => api.GET("/v1/admin/backups", { headers })), []);
  const { error, notice, act } = useAction(list.reload);
  const running = list.value?.items.some((b) => b.state === "running") ?? false;
  // A backup runs in the background: look again each second until none is running.
  useEffect(() => {
    if (!running) return;
    const timer = setTimeout(list.reload, 1000);
    return () => clearTimeout(timer);
  }, [running, list.value]);
  const start = () =>
    act("Backup started; the list follows it until it is ready.", () => call((headers) => api.POST("/v1/admin/backups", { headers })));
  // An archive can be larger than a tab's memory: the browser fetches it through a short-lived
  // link and saves it to disk as it arrives.
  const download = (b: Backup) =>
    act(`Downloading ${b.name}; your browser saves it.`, async () => {
      const link = await call((headers) =>
        api.POST("/v1/admin/backups/{name}/link", { headers, params: { path: { name: b.name } } }),
      );
      save(link.url, b.name);
    });
  const remove = (b: Backup) => {
    if (!confirm(`Delete ${b.name}? It cannot be restored afterwards.`)) return;
    void act(`Deleted ${b.name}.`, () =>
      call((headers) => api.DELETE("/v1/admin/backups/{name}", { headers, params: { path: { name: b.name } } })),
    );
  };
  return (
    <section aria-labelledby="backups-title">
      <h1 id="backups-title">Backups</h1>
      <p class="hint">
        A backup is a consistent snapshot of every document, file, account, function and setting, written while the server keeps
        serving. Restore one on a stopped server with <code>emberbase restore ARCHIVE --data-dir DIR</code>.
      </p>
      <div class="row">
        <button type="button" class="primary" onClick={start} disabled={running}>
          Back up now
        </button>
      </div>
      {notice && <p role="status">{notice}</p>}
      <ProblemLine problem={error ?? list.error} />
      {list.value && list.value.items.length === 0 && <Empty>No backups yet.</Empty>}
      {list.value && list.value.items.length > 0 && (
        <Grid columns={["Archive", "State", "Started", "Size", "Made", ""]}>
          {list.value.items.map((b) => (
            <tr key={b.name} data-backup={b.name}>
              <td class="mono">{b.name}</td>
              <td>
                <span class={`tag ${b.state === "failed" ? "delete" : b.state === "ready" ? "ready" : "building"}`}>{b.state}</span>
                {b.error && <span class="hint"> {b.error}</span>}
              </td>
              <td>{when(b.created_at)}</td>
              <td>{b.size == null ? "—" : bytes(b.size)}</td>
              <td>{b.scheduled ? "on schedule" : "by hand"}</td>
              <td>
                {b.state === "ready" && (
                  <>
                    <button type="button" onClick={() => download(b)}>
                      Download
                    </button>{" "}
                    <button type="button" class="danger" onClick={() => remove(b)}>
                      Delete
                    </button>
                  </>
                )}
              </td>
            </tr>
          ))}
        </Grid>
      )}
    </section>
  );
}
