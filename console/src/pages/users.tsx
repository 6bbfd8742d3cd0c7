// Users: find accounts by address, create, disable, promote, delete, send a reset mail, and see
// and end each one's sessions.
import { useState } from "preact/hooks";
import { api, call, problem, when, type Problem, type Schemas } from "../api";
import { Empty, Field, ProblemLine, useLoad, Grid } from "../ui";

type User = Schemas["User"];

export function Users() {
  const [search, setSearch] = useState("");
  const [query, setQuery] = useState("");
  const [pages, setPages] = useState<User[][]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [open, setOpen] = useState<User | null>(null);
  const [creating, setCreating] = useState(false);
  const load = async (cursor: string | null) => {
    const page = await call((headers) =>
      api.GET("/v1/admin/users", {
        headers,
        params: { query: { email: query || undefined, limit: 50, cursor: cursor ?? undefined } },
      }),
    );
    setNext(page.next_cursor ?? null);
    return page.items;
  };
  const first = useLoad(async () => {
    const items = await load(null);
    setPages([items]);
    return items;
  }, [query]);
  const more = async () => setPages([...pages, await load(next)]);
  const users = pages.flat();
  const replaced = (user: User | null, id: string) => {
    setPages((ps) => ps.map((p) => (user ? p.map((u) => (u.id === id ? user : u)) : p.filter((u) => u.id !== id))));
    setOpen(user);
  };
  return (
    <section aria-labelledby="users-title">
      <h1 id="users-title">Users</h1>
      <form
        class="inline"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setQuery(search.trim());
        }}
      >
        <Field label="Find by address" hint="The start of an email address, in any case.">
          <input name="search" type="search" value={search} onInput={(e) => setSearch(e.currentTarget.value)} />
        </Field>
        <button type="submit">Find</button>
        <button type="button" class="primary" onClick={() => setCreating(!creating)} aria-expanded={creating}>
          New user
        </button>
      </form>
      {creating && (
        <CreateUser
          created={(user) => {
            setCreating(false);
            setPages((ps) => [[user, ...(ps[0] ?? [])], ...ps.slice(1)]);
            setOpen(user);
          }}
        />
      )}
      <ProblemLine problem={first.error} />
      <div class={open ? "split" : ""}>
        <div>
          {users.length === 0 && !first.loading ? (
            <Empty>No users{query ? ` with an address starting “${query}”` : " yet"}.</Empty>
          ) : (
            <Grid columns={["Email", "Role", "State", "Created"]}>
                  {users.map((u) => (
                    <tr key={u.id} data-user={u.email ?? u.id} aria-selected={open?.id === u.id}>
                      <td>
                        <button type="button" class="link" onClick={() => setOpen(u)}>
                          {u.email ?? `guest ${u.id}`}
                        </button>
                      </td>
                      <td>{u.role}</td>
                      <td>
                        {u.disabled ? <span class="tag delete">disabled</span> : null}
                        {u.email_verified ? <span class="tag ready">verified</span> : null}
                        {u.mfa_enabled ? <span class="tag">2FA</span> : null}
                      </td>
                      <td>{when(u.created_at)}</td>
                    </tr>
                  ))}
            </Grid>
          )}
          {next && (
            <button type="button" onClick={more}>
              More
            </button>
          )}
        </div>
        {open && <UserPanel key={open.id} user={open} changed={(u) => replaced(u, open.id)} close={() => setOpen(null)} />}
      </div>
    </section>
  );
}

function CreateUser(props: { created: (user: User) => void }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState("user");
  const [verified, setVerified] = useState(false);
  const [error, setError] = useState<Problem | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const user = await call((headers) =>
        api.POST("/v1/admin/users", { headers, body: { email, password, role, email_verified: verified } }),
      );
      props.created(user);
    } catch (err) {
      setError(problem(err));
    }
  };
  return (
    <form class="card" onSubmit={submit} aria-label="New user">
      <div class="row">
        <Field label="Email">
          <input name="new-email" type="email" autocomplete="off" value={email} onInput={(e) => setEmail(e.currentTarget.value)} required />
        </Field>
        <Field label="Password">
          <input name="new-password" type="password" autocomplete="new-password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} required />
        </Field>
        <Field label="Role">
          <select value={role} onChange={(e) => setRole(e.currentTarget.value)}>
            <option value="user">user</option>
            <option value="admin">admin</option>
          </select>
        </Field>
      </div>
      <label class="check">
        <input type="checkbox" checked={verified} onChange={(e) => setVerified(e.currentTarget.checked)} /> The address is verified
      </label>
      <ProblemLine problem={error} />
      <div class="actions">
        <button type="submit" class="primary">
          Create
        </button>
      </div>
    </form>
  );
}

function UserPanel(props: { user: User; changed: (user: User | null) => void; close: () => void }) {
  const { user } = props;
  const [error, setError] = useState<Problem | null>(null);
  const [notice, setNotice] = useState("");
  const path = { path: { id: user.id } };
  const sessions = useLoad(() => call((headers) => api.GET("/v1/admin/users/{id}/sessions", { headers, params: path })), [user.id]);
  const act = async (what: string, run: () => Promise<User | null>) => {
    setError(null);
    setNotice("");
    try {
      const changed = await run();
      setNotice(what);
      sessions.reload();
      props.changed(changed);
    } catch (e) {
      setError(problem(e));
    }
  };
  const disable = () =>
    act(user.disabled ? "Enabled." : "Disabled: every token of theirs stopped working.", () =>
      user.disabled
        ? call((headers) => api.POST("/v1/admin/users/{id}/enable", { headers, params: path }))
        : call((headers) => api.POST("/v1/admin/users/{id}/disable", { headers, params: path })),
    );
  const promote = () =>
    act("Role changed.", () =>
      call((headers) =>
        api.PUT("/v1/admin/users/{id}/role", { headers, params: path, body: { role: user.role === "admin" ? "user" : "admin" } }),
      ),
    );
  const reset = () =>
    act(`A password reset mail went to ${user.email}.`, async () => {
      await call((headers) => api.POST("/v1/auth/password/reset/request", { headers, body: { email: user.email ?? "" } }));
      return user;
    });
  const remove = () => {
    if (!confirm(`Delete ${user.email ?? user.id}? Their documents stay.`)) return;
    void act("Deleted.", async () => {
      await call((headers) => api.DELETE("/v1/admin/users/{id}", { headers, params: path }));
      return null;
    });
  };
  const endSession = (session: string) =>
    act("Session ended.", async () => {
      await call((headers) => api.DELETE("/v1/admin/users/{id}/sessions/{session}", { headers, params: { path: { id: user.id, session } } }));
      return user;
    });
  const endAll = () =>
    act("Every session ended.", async () => {
      await call((headers) => api.DELETE("/v1/admin/users/{id}/sessions", { headers, params: path }));
      return user;
    });
  return (
    <aside class="panel" aria-labelledby="user-title">
      <header>
        <h2 id="user-title">{user.email ?? `guest ${user.id}`}</h2>
        <button type="button" onClick={props.close} aria-label="Close the user">
          Close
        </button>
      </header>
      <p class="meta">
        <span class="mono">{user.id}</span> · {user.role} · since {when(user.created_at)}
        {user.identities?.length ? ` · signs in with ${user.identities.map((i) => i.provider).join(", ")}` : ""}
      </p>
      <div class="actions">
        <button type="button" onClick={disable}>
          {user.disabled ? "Enable" : "Disable"}
        </button>
        <button type="button" onClick={promote}>
          {user.role === "admin" ? "Make user" : "Make admin"}
        </button>
        {user.email && (
          <button type="button" onClick={reset}>
            Send password reset
          </button>
        )}
        <button type="button" class="danger" onClick={remove}>
          Delete
        </button>
      </div>
      {notice && <p role="status">{notice}</p>}
      <ProblemLine problem={error ?? sessions.error} />
      <h3>Sessions</h3>
      {sessions.value && sessions.value.items.length === 0 && <Empty>No live sessions.</Empty>}
      {sessions.value && sessions.value.items.length > 0 && (
        <>
          <ul class="sessions">
            {sessions.value.items.map((s) => (
              <li key={s.id} data-session={s.id}>
                <span class="device">{s.user_agent ?? "unknown device"}</span>
                <span class="meta">
                  {s.ip ?? "?"} · began {when(s.created_at)} · last used {when(s.last_used_at)} · ends {when(s.expires_at)}
                </span>
                <button type="button" class="danger" onClick={() => endSession(s.id)}>
                  End
                </button>
              </li>
            ))}
          </ul>
          <button type="button" class="danger" onClick={endAll}>
            End every session
          </button>
        </>
      )}
    </aside>
  );
}
