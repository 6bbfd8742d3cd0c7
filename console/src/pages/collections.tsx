// Collections: every collection with its count, rules and indexes; a collection's documents
// (filter, sort, cursor pages, live through realtime), a document's JSON (create, edit with
// If-Match, delete), its rules (checked as you type, tried against a document and a user) and
// its indexes (declared, dropped, with their build state).
import { useEffect, useMemo, useState } from "preact/hooks";
import { api, call, eb, problem, when, type Doc, type Problem, type Schemas } from "../api";
import { navigate } from "../router";
import { JsonEditor } from "../json-editor";
import { Empty, Field, Link, ProblemLine, useDebounced, useLoad, Grid, Pager, type Cursors } from "../ui";

type Info = Schemas["CollectionInfo"];
type Rules = Schemas["Rules"];
const OPERATIONS = ["read", "create", "update", "delete"] as const;
type Operation = (typeof OPERATIONS)[number];

function loadCollection(name: string): Promise<Info> {
  return call((headers) => api.GET("/v1/admin/collections/{collection}", { headers, params: { path: { collection: name } } }));
}

export function Collections() {
  const list = useLoad(() => call((headers) => api.GET("/v1/admin/collections", { headers })), []);
  const [name, setName] = useState("");
  return (
    <section aria-labelledby="collections-title">
      <h1 id="collections-title">Collections</h1>
      <ProblemLine problem={list.error} />
      {list.value && list.value.items.length === 0 && <Empty>No collections yet: write a document, or open one by name below.</Empty>}
      {list.value && list.value.items.length > 0 && (
        <Grid columns={["Name", "Documents", "Rules", "Indexes"]}>
            {list.value.items.map((c) => (
              <tr key={c.name} data-collection={c.name}>
                <td>
                  <Link to={`/collections/${encodeURIComponent(c.name)}`}>{c.name}</Link>
                </td>
                <td class="num" data-testid="count">
                  {c.documents ?? "—"}
                </td>
                <td>{c.rules ? "own" : "server defaults"}</td>
                <td>
                  {(c.index_states ?? []).map((i) => (
                    <span key={i.fields.join()} class={`tag ${i.state}`}>
                      {i.fields.join(", ")} · {i.state}
                    </span>
                  ))}
                </td>
              </tr>
            ))}
        </Grid>
      )}
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          if (name.trim()) navigate(`/collections/${encodeURIComponent(name.trim())}`);
        }}
      >
        <Field label="Open a collection by name">
          <input value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder="posts" />
        </Field>
        <button type="submit">Open</button>
      </form>
    </section>
  );
}

export function CollectionPage(props: { name: string }) {
  const [tab, setTab] = useState<"documents" | "rules" | "indexes">("documents");
  const info = useLoad(() => loadCollection(props.name), [props.name]);
  const tabs = [
    ["documents", "Documents"],
    ["rules", "Rules"],
    ["indexes", "Indexes"],
  ] as const;
  return (
    <section aria-labelledby="collection-title">
      <p class="crumbs">
        <Link to="/collections">Collections</Link> /
      </p>
      <h1 id="collection-title">
        {props.name} {info.value?.documents !== undefined && <span class="badge">{info.value.documents} documents</span>}
      </h1>
      <ProblemLine problem={info.error} />
      <div role="tablist" class="tabs" aria-label="Collection">
        {tabs.map(([key, label]) => (
          <button
            key={key}
            type="button"
            role="tab"
            id={`tab-${key}`}
            aria-selected={tab === key}
            aria-controls={`panel-${key}`}
            onClick={() => setTab(key)}
          >
            {label}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`}>
        {tab === "documents" && <Documents name={props.name} changed={info.reload} />}
        {tab === "rules" && info.value && <RulesEditor info={info.value} saved={info.reload} />}
        {tab === "indexes" && info.value && <Indexes info={info.value} saved={info.reload} />}
      </div>
    </section>
  );
}

/** The top-level data fields of a page's documents, as columns (at most eight). */
function columns(docs: Doc[]): string[] {
  const seen = new Set<string>();
  for (const d of docs) for (const key of Object.keys(d.data ?? {})) if (seen.size < 8) seen.add(key);
  return [...seen];
}

function cell(value: unknown): string {
  if (value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

function Documents(props: { name: string; changed: () => void }) {
  const [filterText, setFilterText] = useState("");
  const [filter, setFilter] = useState("");
  const [sort, setSort] = useState("");
  /** The cursors of the pages before this one; the last is this page's. */
  const [cursors, setCursors] = useState<Cursors>([null]);
  const [docs, setDocs] = useState<Doc[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [total, setTotal] = useState<number | null>(null);
  const [error, setError] = useState<Problem | null>(null);
  const [open, setOpen] = useState<Doc | "new" | null>(null);
  const [flash, setFlash] = useState<string | null>(null);
  const cursor = cursors[cursors.length - 1];
  const collection = useMemo(() => eb.collection(props.name), [props.name]);

  useEffect(() => {
    let current = true;
    collection.list({ filter: filter || undefined, sort: sort || undefined, limit: 25, cursor, count: true }).then(
      (page) => {
        if (!current) return;
        setDocs(page.items as Doc[]);
        setNext(page.next_cursor);
        setTotal(page.total ?? null);
        setError(null);
      },
      (e) => current && setError(problem(e)),
    );
    return () => {
      current = false;
    };
  }, [collection, filter, sort, cursor]);

  // Live: changes to the collection (within the filter) update the table as they commit. It
  // subscribes again when the filter changes, after an error clears, and when the table moves
  // to or from the first page (where new documents are added at the top).
  useEffect(() => {
    if (error) return;
    return collection.subscribe(
      (event) => {
        if (event.type === "reset") return;
        setFlash(event.id);
        setDocs((rows) => {
          const at = rows.findIndex((d) => d.id === event.id);
          if (event.type === "delete") return at < 0 ? rows : rows.filter((d) => d.id !== event.id);
          if (at >= 0) return rows.map((d) => (d.id === event.id ? (event.doc as Doc) : d));
          return cursors.length === 1 && event.type === "create" ? [event.doc as Doc, ...rows] : rows;
        });
        if (event.type !== "update") {
          setTotal((t) => (t === null ? t : t + (event.type === "create" ? 1 : -1)));
          props.changed();
        }
        setOpen((o) => (o && o !== "new" && o.id === event.id && event.type === "delete" ? null : o));
      },
      { filter: filter || undefined, onError: (e) => setError(problem(e)) },
    );
  }, [collection, filter, error === null, cursors.length === 1]);

  const fields = columns(docs);
  const sortBy = (path: string) => {
    setSort(sort === path ? `-${path}` : path);
    setCursors([null]);
  };
  const header = (path: string, label: string) => {
    const state = sort === path ? "ascending" : sort === `-${path}` ? "descending" : "none";
    return (
      <th scope="col" aria-sort={state}>
        <button type="button" class="sort" onClick={() => sortBy(path)}>
          {label}
          {state === "ascending" ? " ▲" : state === "descending" ? " ▼" : ""}
        </button>
      </th>
    );
  };
  return (
    <div class={open ? "split" : ""}>
      <div>
        <form
          class="inline"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            setError(null);
            setFilter(filterText.trim());
            setCursors([null]);
          }}
        >
          <Field label="Filter" hint='For example: data.status == "open" && data.n > 2'>
            <input name="filter" class="mono" value={filterText} onInput={(e) => setFilterText(e.currentTarget.value)} spellcheck={false} />
          </Field>
          <button type="submit">Apply</button>
          <button type="button" class="primary" onClick={() => setOpen("new")}>
            New document
          </button>
        </form>
        <ProblemLine problem={error} source={filter} />
        <p class="meta" aria-live="polite">
          {total !== null && `${total} matching`} {sort && `· sorted by ${sort}`}
        </p>
        {docs.length === 0 && !error ? (
          <Empty>No documents{filter ? " match this filter" : " yet"}.</Empty>
        ) : (
          <div class="scroll">
            <table class="grid docs">
              <thead>
                <tr>
                  {header("id", "id")}
                  {fields.map((f) => header(`data.${f}`, f))}
                  {header("version", "version")}
                  {header("updated_at", "updated")}
                </tr>
              </thead>
              <tbody>
                {docs.map((d) => (
                  <tr key={d.id} data-id={d.id} class={flash === d.id ? "flash" : ""} aria-selected={open !== "new" && open?.id === d.id}>
                    <td>
                      <button type="button" class="link mono" onClick={() => setOpen(d)}>
                        {d.id}
                      </button>
                    </td>
                    {fields.map((f) => (
                      <td key={f} data-field={f}>
                        {cell((d.data as Record<string, unknown>)?.[f])}
                      </td>
                    ))}
                    <td class="num">{d.version}</td>
                    <td>{when(d.updated_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <Pager cursors={cursors} setCursors={setCursors} next={next} />
      </div>
      {open && (
        <DocumentPanel
          key={open === "new" ? "new" : open.id}
          collection={props.name}
          doc={open === "new" ? null : open}
          close={() => setOpen(null)}
          saved={(d) => {
            setOpen(d);
            setDocs((rows) => (rows.some((r) => r.id === d.id) ? rows.map((r) => (r.id === d.id ? d : r)) : rows));
          }}
        />
      )}
    </div>
  );
}

function DocumentPanel(props: { collection: string; doc: Doc | null; close: () => void; saved: (doc: Doc) => void }) {
  const collection = eb.collection(props.collection);
  const [doc, setDoc] = useState<Doc | null>(props.doc);
  const initial = JSON.stringify(props.doc?.data ?? {}, null, 2);
  const [text, setText] = useState(initial);
  const [loaded, setLoaded] = useState(initial);
  const [id, setId] = useState("");
  const [error, setError] = useState<Problem | null>(null);
  const [conflict, setConflict] = useState(false);
  const [busy, setBusy] = useState(false);

  const parse = (): Record<string, unknown> | null => {
    try {
      const value = JSON.parse(text);
      if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("The data must be a JSON object.");
      return value;
    } catch (e) {
      setError({ message: e instanceof SyntaxError ? `Not valid JSON: ${e.message}` : problem(e).message });
      return null;
    }
  };
  const save = async () => {
    const data = parse();
    if (!data) return;
    setBusy(true);
    setError(null);
    try {
      let saved: Doc;
      if (doc) saved = (await collection.set(doc.id, data, { ifVersion: doc.version })) as Doc;
      else if (id.trim()) saved = (await collection.set(id.trim(), data, { ifVersion: 0 })) as Doc;
      else saved = (await collection.create(data)) as Doc;
      setDoc(saved);
      setConflict(false);
      setLoaded(JSON.stringify(saved.data, null, 2));
      props.saved(saved);
    } catch (e) {
      const p = problem(e);
      if (p.status === 412) {
        setConflict(true);
        setError({
          message: doc
            ? `Someone else changed this document after you opened it (you edited version ${doc.version}). Nothing was overwritten: reload to see their version, then make your change again.`
            : "A document with this id exists already.",
        });
      } else setError(p);
    } finally {
      setBusy(false);
    }
  };
  const reload = async () => {
    if (!doc) return;
    try {
      const fresh = (await collection.get(doc.id)) as Doc;
      setDoc(fresh);
      const formatted = JSON.stringify(fresh.data, null, 2);
      setText(formatted);
      setLoaded(formatted);
      setConflict(false);
      setError(null);
    } catch (e) {
      setError(problem(e));
    }
  };
  const remove = async () => {
    if (!doc || !confirm(`Delete ${doc.id}?`)) return;
    try {
      await collection.delete(doc.id, { ifVersion: doc.version });
      props.close();
    } catch (e) {
      const p = problem(e);
      if (p.status === 412) setConflict(true);
      setError(p.status === 412 ? { message: "Someone else changed this document after you opened it: reload it first." } : p);
    }
  };
  return (
    <aside class="panel" aria-labelledby="doc-title">
      <header>
        <h2 id="doc-title">{doc ? doc.id : "New document"}</h2>
        <button type="button" onClick={props.close} aria-label="Close the document">
          Close
        </button>
      </header>
      {doc && (
        <p class="meta">
          version <span data-testid="doc-version">{doc.version}</span> · owner {doc.owner ?? "none"} · updated {when(doc.updated_at)}
        </p>
      )}
      {!doc && (
        <Field label="Id (optional)" hint="Left empty, the server makes one.">
          <input class="mono" value={id} onInput={(e) => setId(e.currentTarget.value)} />
        </Field>
      )}
      <JsonEditor value={loaded} label="Document data (JSON)" onChange={setText} />
      <ProblemLine problem={error} />
      <div class="actions">
        <button type="button" class="primary" onClick={save} disabled={busy || conflict}>
          {doc ? "Save" : "Create"}
        </button>
        {conflict && doc && (
          <button type="button" onClick={reload}>
            Reload
          </button>
        )}
        {doc && (
          <button type="button" class="danger" onClick={remove}>
            Delete
          </button>
        )}
      </div>
    </aside>
  );
}

/** One rule: "admins only" (null) or an expression ("" lets everyone), checked as it is typed. */
function RuleInput(props: { op: Operation; value: string | null; onChange: (v: string | null) => void }) {
  const [check, setCheck] = useState<Problem | null>(null);
  const [valid, setValid] = useState<boolean | null>(null);
  const text = props.value ?? "";
  useDebounced(props.value, 250, async (value) => {
    if (value === null) {
      setCheck(null);
      setValid(null);
      return;
    }
    try {
      const result = await call((headers) =>
        api.POST("/v1/admin/rules/check", { headers, body: { kind: "collection_rule", expression: value } }),
      );
      setValid(result.valid);
      setCheck(result.valid ? null : { message: result.message ?? "invalid", column: result.column ?? undefined });
    } catch (e) {
      setCheck(problem(e));
    }
  });
  return (
    <fieldset class="rule" data-rule={props.op}>
      <legend>{props.op}</legend>
      <label class="check">
        <input type="checkbox" checked={props.value === null} onChange={(e) => props.onChange(e.currentTarget.checked ? null : "")} />
        Admins only
      </label>
      <input
        class="mono"
        aria-label={`The ${props.op} rule`}
        aria-invalid={valid === false}
        disabled={props.value === null}
        value={text}
        placeholder={props.value === null ? "" : "empty: everyone"}
        spellcheck={false}
        onInput={(e) => props.onChange(e.currentTarget.value)}
      />
      {valid === true && <span class="ok">✓ valid</span>}
      <ProblemLine problem={check} source={text} />
    </fieldset>
  );
}

function RulesEditor(props: { info: Info; saved: () => void }) {
  const [rules, setRules] = useState<Rules | null>(props.info.rules ?? null);
  const [error, setError] = useState<Problem | null>(null);
  const [done, setDone] = useState(false);
  const save = async () => {
    setError(null);
    setDone(false);
    try {
      await putConfig(props.info, { rules });
      setDone(true);
      props.saved();
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <div class="rules">
      {rules === null ? (
        <p>
          This collection follows the server's default rules (<code>[rules]</code> in the config).{" "}
          <button type="button" onClick={() => setRules({ read: null, create: null, update: null, delete: null })}>
            Give it its own rules
          </button>
        </p>
      ) : (
        OPERATIONS.map((op) => (
          <RuleInput key={op} op={op} value={rules[op] ?? null} onChange={(v) => setRules({ ...rules, [op]: v })} />
        ))
      )}
      <p class="hint">
        Rules see <code>auth</code> (the caller: <code>id</code>, <code>email</code>, <code>role</code>, <code>profile</code>, or null),{" "}
        <code>doc</code> (the stored document) and <code>data</code> (what a write sends). An empty rule lets everyone.
      </p>
      <ProblemLine problem={error} />
      <div class="actions">
        <button type="button" class="primary" onClick={save}>
          Save rules
        </button>
        {done && <span role="status">Saved.</span>}
      </div>
      <RuleTrial collection={props.info.name} rules={rules} />
    </div>
  );
}

/** "Test this rule": what a rule (as edited, not yet saved) decides for a user and a document. */
function RuleTrial(props: { collection: string; rules: Rules | null }) {
  const [operation, setOperation] = useState<Operation>("read");
  const [documentId, setDocumentId] = useState("");
  const [userId, setUserId] = useState("");
  const [data, setData] = useState("");
  const [result, setResult] = useState<Schemas["RuleTrial"] | null>(null);
  const [error, setError] = useState<Problem | null>(null);
  const run = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setResult(null);
    try {
      const body: Schemas["TrialRequest"] = {
        collection: props.collection,
        operation,
        document_id: documentId.trim() || null,
        user_id: userId.trim() || null,
        data: data.trim() ? JSON.parse(data) : null,
      };
      if (props.rules) body.rule = props.rules[operation] ?? null;
      setResult(await call((headers) => api.POST("/v1/admin/rules/test", { headers, body })));
    } catch (err) {
      setError(err instanceof SyntaxError ? { message: `The data is not valid JSON: ${err.message}` } : problem(err));
    }
  };
  return (
    <form class="trial" onSubmit={run} aria-labelledby="trial-title">
      <h2 id="trial-title">Test this rule</h2>
      <div class="row">
        <Field label="Operation">
          <select value={operation} onChange={(e) => setOperation(e.currentTarget.value as Operation)}>
            {OPERATIONS.map((o) => (
              <option key={o}>{o}</option>
            ))}
          </select>
        </Field>
        <Field label="Document id">
          <input class="mono" name="document_id" value={documentId} onInput={(e) => setDocumentId(e.currentTarget.value)} />
        </Field>
        <Field label="As user id" hint="Empty: a caller who is not signed in.">
          <input class="mono" name="user_id" value={userId} onInput={(e) => setUserId(e.currentTarget.value)} />
        </Field>
      </div>
      {(operation === "create" || operation === "update") && (
        <Field label="Data sent (JSON)">
          <textarea class="mono" rows={3} value={data} onInput={(e) => setData(e.currentTarget.value)} />
        </Field>
      )}
      <button type="submit">Test</button>
      <ProblemLine problem={error} />
      {result && (
        <div role="status" class={result.allowed ? "verdict allowed" : "verdict denied"} data-testid="verdict">
          {result.allowed ? "Allowed" : "Denied"}
          {result.admin && " (an admin: rules never stop them)"}
        </div>
      )}
    </form>
  );
}

async function putConfig(info: Info, change: Partial<Schemas["CollectionConfig"]>): Promise<void> {
  const config: Schemas["CollectionConfig"] = {
    indexes: info.indexes,
    relations: info.relations ?? {},
    rules: info.rules ?? null,
    schema: info.schema ?? null,
    ...change,
  };
  await call((headers) => api.PUT("/v1/admin/collections/{collection}", { headers, params: { path: { collection: info.name } }, body: config }));
}

function Indexes(props: { info: Info; saved: () => void }) {
  const [fields, setFields] = useState("");
  const [error, setError] = useState<Problem | null>(null);
  const states = props.info.index_states ?? props.info.indexes.map((f) => ({ fields: f, state: "ready" }));
  // Building indexes change state without a write: look again until they are ready.
  useEffect(() => {
    if (!states.some((s) => s.state !== "ready")) return;
    const timer = setTimeout(props.saved, 1000);
    return () => clearTimeout(timer);
  });
  const change = async (indexes: string[][]) => {
    setError(null);
    try {
      await putConfig(props.info, { indexes });
      props.saved();
    } catch (e) {
      setError(problem(e));
    }
  };
  return (
    <div>
      {states.length === 0 ? (
        <Empty>No indexes: filters and sorts scan the collection.</Empty>
      ) : (
        <Grid columns={["Fields", "State", "Actions"]}>
            {states.map((s, i) => (
              <tr key={s.fields.join()} data-index={s.fields.join(",")}>
                <td class="mono">{s.fields.join(", ")}</td>
                <td>
                  <span class={`tag ${s.state}`}>{s.state}</span>
                </td>
                <td>
                  <button type="button" class="danger" onClick={() => change(props.info.indexes.filter((_, j) => j !== i))}>
                    Drop
                  </button>
                </td>
              </tr>
            ))}
        </Grid>
      )}
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          const declared = fields
            .split(",")
            .map((f) => f.trim())
            .filter(Boolean);
          if (declared.length) void change([...props.info.indexes, declared]).then(() => setFields(""));
        }}
      >
        <Field label="New index" hint="Field paths, comma-separated: data.status, data.n">
          <input class="mono" value={fields} onInput={(e) => setFields(e.currentTarget.value)} />
        </Field>
        <button type="submit">Declare</button>
      </form>
      <ProblemLine problem={error} />
    </div>
  );
}
