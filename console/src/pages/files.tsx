// Files: buckets with their rules and limits; a bucket's files by prefix; uploads by drag and
// drop or picker, with progress; safe previews (images as images, text as text, never
// uploaded markup rendered); downloads; signed URLs to copy.
import { useEffect, useState } from "preact/hooks";
import { api, call, eb, problem, when, type Problem, type Schemas } from "../api";
import { bytes, Empty, Field, Link, ProblemLine, save, useLoad, Grid, Pager, type Cursors } from "../ui";

type FileInfo = Schemas["FileInfo"];

export function Buckets() {
  const list = useLoad(() => call((headers) => api.GET("/v1/admin/buckets", { headers })), []);
  return (
    <section aria-labelledby="buckets-title">
      <h1 id="buckets-title">Files</h1>
      <ProblemLine problem={list.error} />
      {list.value && list.value.items.length === 0 && <Empty>No buckets yet: configure one in the project file or the admin API.</Empty>}
      {list.value && list.value.items.length > 0 && (
        <Grid columns={["Bucket", "Rules", "Largest file", "Content types"]}>
            {list.value.items.map((b) => (
              <tr key={b.name} data-bucket={b.name}>
                <td>
                  <Link to={`/files/${encodeURIComponent(b.name)}`}>{b.name}</Link>
                </td>
                <td class="mono">
                  {b.rules
                    ? Object.entries(b.rules).map(([op, rule]) => (
                        <div key={op}>
                          {op}: {rule === null || rule === undefined ? "admins only" : rule === "" ? "everyone" : rule}
                        </div>
                      ))
                    : "server defaults"}
                </td>
                <td>{b.max_size ? bytes(b.max_size) : "server limit"}</td>
                <td>{b.content_types?.length ? b.content_types.join(", ") : "any"}</td>
              </tr>
            ))}
        </Grid>
      )}
    </section>
  );
}

/** An upload under way or done. */
interface Upload {
  path: string;
  loaded: number;
  total: number;
  error?: string;
  done?: boolean;
}

export function Bucket(props: { name: string }) {
  const [prefix, setPrefix] = useState("");
  const [typed, setTyped] = useState("");
  const [cursors, setCursors] = useState<Cursors>([null]);
  const [uploads, setUploads] = useState<Upload[]>([]);
  const [over, setOver] = useState(false);
  const [open, setOpen] = useState<FileInfo | null>(null);
  const cursor = cursors[cursors.length - 1];
  const page = useLoad(() => eb.files.list(props.name, { prefix: prefix || undefined, limit: 50, cursor: cursor ?? undefined }), [props.name, prefix, cursor]);
  const send = async (files: FileList | File[]) => {
    for (const file of Array.from(files)) {
      const path = `${prefix}${file.name}`;
      const mine: Upload = { path, loaded: 0, total: file.size };
      setUploads((u) => [mine, ...u.filter((x) => x.path !== path)]);
      const update = (change: Partial<Upload>) => setUploads((u) => u.map((x) => (x.path === path ? { ...x, ...change } : x)));
      try {
        await eb.files.upload(props.name, path, file, { onProgress: (loaded) => update({ loaded }) });
        update({ done: true });
      } catch (e) {
        update({ error: problem(e).message });
      }
    }
    page.reload();
  };
  return (
    <section aria-labelledby="bucket-title">
      <p class="crumbs">
        <Link to="/files">Files</Link> /
      </p>
      <h1 id="bucket-title">{props.name}</h1>
      <form
        class="inline"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setPrefix(typed);
          setCursors([null]);
        }}
      >
        <Field label="Prefix" hint="Files whose path starts with it, such as avatars/">
          <input class="mono" name="prefix" value={typed} onInput={(e) => setTyped(e.currentTarget.value)} />
        </Field>
        <button type="submit">Browse</button>
      </form>
      <div
        class={over ? "drop over" : "drop"}
        onDragOver={(e) => {
          e.preventDefault();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          setOver(false);
          if (e.dataTransfer?.files.length) void send(e.dataTransfer.files);
        }}
      >
        <p>
          Drop files here to upload them{prefix ? ` under ${prefix}` : ""}, or{" "}
          <label class="picker">
            choose files
            <input type="file" multiple onChange={(e) => e.currentTarget.files && send(e.currentTarget.files)} />
          </label>
          .
        </p>
        {uploads.length > 0 && (
          <ul class="uploads" aria-label="Uploads">
            {uploads.map((u) => (
              <li key={u.path} data-upload={u.path}>
                <span class="mono">{u.path}</span>{" "}
                <progress max={u.total || 1} value={u.loaded} aria-label={`Uploading ${u.path}`} />{" "}
                {u.error ? <span class="problem">{u.error}</span> : u.done ? <span class="ok">uploaded</span> : `${bytes(u.loaded)} of ${bytes(u.total)}`}
              </li>
            ))}
          </ul>
        )}
      </div>
      <ProblemLine problem={page.error} />
      <div class={open ? "split" : ""}>
        <div>
          {page.value && page.value.items.length === 0 && <Empty>No files{prefix ? ` under ${prefix}` : ""}.</Empty>}
          {page.value && page.value.items.length > 0 && (
            <Grid columns={["Path", "Type", "Size", "Updated"]}>
                  {page.value.items.map((f) => (
                    <tr key={f.path} data-file={f.path} aria-selected={open?.path === f.path}>
                      <td>
                        <button type="button" class="link mono" onClick={() => setOpen(f)}>
                          {f.path}
                        </button>
                      </td>
                      <td>{f.content_type}</td>
                      <td class="num">{bytes(f.size)}</td>
                      <td>{when(f.updated_at)}</td>
                    </tr>
                  ))}
            </Grid>
          )}
          <Pager cursors={cursors} setCursors={setCursors} next={page.value?.next_cursor} />
        </div>
        {open && (
          <FilePanel
            key={open.path}
            file={open}
            close={() => setOpen(null)}
            deleted={() => {
              setOpen(null);
              page.reload();
            }}
          />
        )}
      </div>
    </section>
  );
}

/** Types shown as an image. SVG is not among them: it is markup, and is shown as text. */
const IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"]);
/** The most of a text file the preview shows. */
const TEXT_PREVIEW = 64 * 1024;

function isText(type: string): boolean {
  return type.startsWith("text/") || /^application\/(json|xml|javascript)|\+json$|\+xml$|^image\/svg\+xml/.test(type);
}

function FilePanel(props: { file: FileInfo; close: () => void; deleted: () => void }) {
  const { file } = props;
  const [image, setImage] = useState<string | null>(null);
  const [text, setText] = useState<string | null>(null);
  const [signed, setSigned] = useState<string | null>(null);
  const [error, setError] = useState<Problem | null>(null);
  const type = file.content_type.split(";")[0].trim().toLowerCase();
  useEffect(() => {
    let url: string | null = null;
    let current = true;
    if (IMAGES.has(type) || isText(type)) {
      eb.files.download(file.bucket, file.path).then(
        async (blob) => {
          if (!current) return;
          if (IMAGES.has(type)) {
            url = URL.createObjectURL(blob);
            setImage(url);
          } else {
            setText(await blob.slice(0, TEXT_PREVIEW).text());
          }
        },
        (e) => current && setError(problem(e)),
      );
    }
    return () => {
      current = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [file.bucket, file.path, type]);
  // Through a signed URL valid for a minute, which the browser fetches and streams to disk.
  const download = async () => {
    try {
      const { url } = await eb.files.sign(file.bucket, file.path, 60);
      save(url, file.path.split("/").pop() ?? "file");
    } catch (e) {
      setError(problem(e));
    }
  };
  const sign = async () => {
    try {
      const { url } = await eb.files.sign(file.bucket, file.path, 3600);
      setSigned(url);
      await navigator.clipboard?.writeText(url).catch(() => {});
    } catch (e) {
      setError(problem(e));
    }
  };
  const remove = async () => {
    if (!confirm(`Delete ${file.path}?`)) return;
    try {
      await eb.files.delete(file.bucket, file.path);
      props.deleted();
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <aside class="panel" aria-labelledby="file-title">
      <header>
        <h2 id="file-title">{file.path}</h2>
        <button type="button" onClick={props.close} aria-label="Close the file">
          Close
        </button>
      </header>
      <p class="meta">
        {file.content_type} · {bytes(file.size)} · owner {file.owner ?? "none"} · updated {when(file.updated_at)}
      </p>
      <p class="meta mono">sha256 {file.sha256}</p>
      {image && <img class="preview-image" src={image} alt={`Preview of ${file.path}`} />}
      {text !== null && (
        <pre class="preview-text" aria-label={`Text of ${file.path}`}>
          {text}
          {file.size > TEXT_PREVIEW ? "\n…" : ""}
        </pre>
      )}
      {!image && text === null && !error && <p class="meta">No preview for this type.</p>}
      <div class="actions">
        <button type="button" onClick={download}>
          Download
        </button>
        <button type="button" onClick={sign}>
          Copy a signed URL
        </button>
        <button type="button" class="danger" onClick={remove}>
          Delete
        </button>
      </div>
      {signed && (
        <Field label="Signed URL (valid for an hour, copied)">
          <input class="mono" readOnly value={signed} onFocus={(e) => e.currentTarget.select()} />
        </Field>
      )}
      <ProblemLine problem={error} />
    </aside>
  );
}
