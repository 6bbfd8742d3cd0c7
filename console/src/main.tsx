// The console: sign-in, then the pages, in one shell with navigation, theme and sign-out.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { MfaRequiredError, type User } from "emberbase";
import { eb, problem, type Problem } from "./api";
import { navigate, useRoute } from "./router";
import { Field, Link, ProblemLine } from "./ui";
import { Overview } from "./pages/overview";
import { Collections, CollectionPage } from "./pages/collections";
import { Live } from "./pages/live";
import { Users } from "./pages/users";
import { Bucket, Buckets } from "./pages/files";
import { FunctionPage, Functions } from "./pages/functions";
import { WebhookPage, Webhooks } from "./pages/webhooks";
import { Backups } from "./pages/backups";
import { Providers } from "./pages/providers";
import "./style.css";

const PAGES = [
  { to: "/", label: "Overview" },
  { to: "/collections", label: "Collections" },
  { to: "/users", label: "Users" },
  { to: "/sign-in", label: "Sign-in" },
  { to: "/files", label: "Files" },
  { to: "/functions", label: "Functions" },
  { to: "/webhooks", label: "Webhooks" },
  { to: "/backups", label: "Backups" },
  { to: "/live", label: "Live" },
];

function App() {
  const [user, setUser] = useState<User | null | undefined>(undefined);
  useEffect(() => {
    const stop = eb.auth.onChange((u) => setUser(u));
    eb.auth
      .ready()
      .then(async (u) => {
        // A stored session may have ended meanwhile (signed out elsewhere, revoked).
        if (u) await eb.auth.me().then(setUser, () => eb.auth.logout().finally(() => setUser(null)));
        else setUser(null);
      })
      .catch(() => setUser(null));
    return stop;
  }, []);
  if (user === undefined) return <p class="loading">Loading…</p>;
  if (!user || user.role !== "admin") return <SignIn notAdmin={!!user} />;
  return <Shell user={user} />;
}

function SignIn(props: { notAdmin: boolean }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [mfa, setMfa] = useState<string | null>(null);
  const [code, setCode] = useState("");
  const [error, setError] = useState<Problem | null>(
    props.notAdmin ? { message: "This account is not an admin." } : null,
  );
  const [busy, setBusy] = useState(false);
  const signedIn = async (user: User) => {
    if (user.role !== "admin") {
      await eb.auth.logout();
      setError({ message: "This account is not an admin: the console is for admins." });
    }
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mfa) await signedIn(await eb.auth.mfa.verify(mfa, { code }));
      else await signedIn(await eb.auth.login(email, password));
    } catch (err) {
      if (err instanceof MfaRequiredError) setMfa(err.mfaToken);
      else setError(problem(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">
          <span class="logo" aria-hidden="true">
            ◆
          </span>{" "}
          Emberbase
        </h1>
        {mfa ? (
          <Field label="Code from your authenticator app, or a recovery code">
            <input name="code" autocomplete="one-time-code" value={code} onInput={(e) => setCode(e.currentTarget.value)} required />
          </Field>
        ) : (
          <>
            <Field label="Email">
              <input name="email" type="email" autocomplete="username" value={email} onInput={(e) => setEmail(e.currentTarget.value)} required />
            </Field>
            <Field label="Password">
              <input
                name="password"
                type="password"
                autocomplete="current-password"
                value={password}
                onInput={(e) => setPassword(e.currentTarget.value)}
                required
              />
            </Field>
          </>
        )}
        <ProblemLine problem={error} />
        <button type="submit" class="primary" disabled={busy}>
          Sign in
        </button>
        <p class="hint">
          Create the first admin with <code>emberbase admin create --email you@example.com --password-stdin</code>.
        </p>
      </form>
    </main>
  );
}

const THEME_KEY = "emberbase.console.theme";
const systemDark = matchMedia("(prefers-color-scheme: dark)");

/** The theme: the one chosen with the Theme button, else the system's (followed as it changes). */
function applyTheme() {
  const chosen = localStorage.getItem(THEME_KEY);
  document.documentElement.dataset.theme = chosen ?? (systemDark.matches ? "dark" : "light");
}
applyTheme();
systemDark.addEventListener("change", applyTheme);

function toggleTheme() {
  localStorage.setItem(THEME_KEY, document.documentElement.dataset.theme === "dark" ? "light" : "dark");
  applyTheme();
}

function Shell(props: { user: User }) {
  const path = useRoute();
  const signOut = async () => {
    await eb.auth.logout();
    navigate("/");
  };
  const section = "/" + (path.split("/")[1] ?? "");
  let page;
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "collections" && parts[1]) page = <CollectionPage name={parts[1]} />;
  else if (parts[0] === "collections") page = <Collections />;
  else if (parts[0] === "users") page = <Users />;
  else if (parts[0] === "sign-in") page = <Providers />;
  else if (parts[0] === "files" && parts[1]) page = <Bucket name={parts[1]} />;
  else if (parts[0] === "files") page = <Buckets />;
  else if (parts[0] === "functions" && parts[1]) page = <FunctionPage name={parts[1]} />;
  else if (parts[0] === "functions") page = <Functions />;
  else if (parts[0] === "webhooks" && parts[1]) page = <WebhookPage id={parts[1]} />;
  else if (parts[0] === "webhooks") page = <Webhooks />;
  else if (parts[0] === "backups") page = <Backups />;
  else if (parts[0] === "live") page = <Live />;
  else if (parts.length === 0) page = <Overview />;
  else page = <p class="empty">Nothing is here. Pick a page on the left.</p>;
  return (
    <div class="shell">
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <span class="brand">
          <span class="logo" aria-hidden="true">
            ◆
          </span>{" "}
          Emberbase
        </span>
        <nav aria-label="Pages">
          {PAGES.map((p) => (
            <Link key={p.to} to={p.to} current={section === p.to}>
              {p.label}
            </Link>
          ))}
        </nav>
        <span class="who" title={props.user.id}>
          {props.user.email}
        </span>
        <button type="button" onClick={toggleTheme} aria-label="Switch between light and dark theme">
          Theme
        </button>
        <button type="button" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
