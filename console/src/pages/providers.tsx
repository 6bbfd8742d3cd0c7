// Sign-in providers: every provider (from the config file, read-only here, or added through the
// API) with the callback to register at the provider; add one, change its settings (secrets are
// write-only: left empty, the stored ones stay; scopes, ID token audiences and endpoints under
// "More settings") or remove it.
import { useState } from "preact/hooks";
import { api, call, type Schemas } from "../api";
import { Empty, Field, Grid, ProblemLine, useAction, useLoad } from "../ui";

type Provider = Schemas["OAuthProviderInfo"];
type Settings = Schemas["OAuthProviderConfig"];

const KINDS = ["google", "apple", "microsoft", "gitlab", "github", "discord", "oidc"];
/** The kinds without ID tokens, whose OAuth2 endpoints are set here instead of discovered. */
const OAUTH2_ONLY = ["github", "discord"];

/** The settings that are lists, as the form holds them: text, entries separated by commas or spaces. */
type Lists = { redirect_urls: string; scopes: string; audiences: string };
const NO_LISTS: Lists = { redirect_urls: "", scopes: "", audiences: "" };

/** Settings as a new provider starts: every field empty, as the server's defaults. */
function blank(kind: string): Settings {
  return {
    kind,
    display_name: "",
    client_id: "",
    client_secret: "",
    issuer: "",
    tenant: "",
    apple_team_id: "",
    apple_key_id: "",
    apple_private_key: "",
    audiences: [],
    authorization_url: "",
    token_url: "",
    userinfo_url: "",
    callback_url: "",
    redirect_urls: [],
    scopes: [],
  };
}

/** `a, b` or `a b` as a list. */
function list(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter(Boolean);
}

export function Providers() {
  const providers = useLoad(() => call((headers) => api.GET("/v1/admin/auth/providers", { headers })), []);
  const [name, setName] = useState("");
  const [settings, setSettings] = useState<Settings>(blank("google"));
  const [lists, setLists] = useState<Lists>(NO_LISTS);
  const [more, setMore] = useState(false);
  const { error, notice, act, clear } = useAction(providers.reload);
  const edit = (p: Provider) => {
    const s = p.settings;
    setName(p.name);
    setSettings({ ...blank(p.kind), ...s, kind: p.kind, client_secret: "", apple_private_key: "" });
    setLists({
      redirect_urls: s.redirect_urls.join(", "),
      scopes: s.scopes.join(" "),
      audiences: s.audiences.join(", "),
    });
    const custom = [s.callback_url, s.authorization_url, s.token_url, s.userinfo_url, p.kind === "gitlab" ? s.issuer : ""];
    setMore(s.scopes.length > 0 || s.audiences.length > 0 || custom.some(Boolean));
    clear();
  };
  const set = (field: keyof Settings) => (e: { currentTarget: { value: string } }) =>
    setSettings((s) => ({ ...s, [field]: e.currentTarget.value }));
  const setList = (field: keyof Lists) => (e: { currentTarget: { value: string } }) =>
    setLists((l) => ({ ...l, [field]: e.currentTarget.value }));
  const kind = settings.kind;
  const oauth2 = OAUTH2_ONLY.includes(kind);
  const save = (e: Event) => {
    e.preventDefault();
    const provider = name.trim();
    void act(`${provider} is saved: its sign-in works now.`, async () => {
      // Only what the kind takes: what was typed for another kind chosen first is left out.
      const body = {
        ...settings,
        redirect_urls: list(lists.redirect_urls),
        scopes: list(lists.scopes),
        audiences: oauth2 ? [] : list(lists.audiences),
        ...(oauth2 ? {} : { authorization_url: "", token_url: "", userinfo_url: "" }),
        ...(kind === "microsoft" ? {} : { tenant: "" }),
        ...(kind === "apple" ? {} : { apple_team_id: "", apple_key_id: "", apple_private_key: "" }),
      };
      await call((headers) => api.PUT("/v1/admin/auth/providers/{name}", { headers, params: { path: { name: provider } }, body }));
      setName("");
      setSettings(blank(kind));
      setLists(NO_LISTS);
      setMore(false);
    });
  };
  const remove = (p: Provider) => {
    if (!confirm(`Remove ${p.name}? Accounts keep their link to it, unused until it is added again.`)) return;
    void act(`${p.name} is removed.`, () =>
      call((headers) => api.DELETE("/v1/admin/auth/providers/{name}", { headers, params: { path: { name: p.name } } })),
    );
  };
  return (
    <section aria-labelledby="signin-providers-title">
      <h1 id="signin-providers-title">Sign-in providers</h1>
      <p class="hint">
        People sign in with these besides a password. Register each one's callback with the provider; providers of the config file
        are changed there.
      </p>
      <ProblemLine problem={providers.error} />
      {providers.value && providers.value.length === 0 && <Empty>No sign-in providers yet.</Empty>}
      {providers.value && providers.value.length > 0 && (
        <Grid columns={["Name", "Kind", "Client id", "Callback to register", "Secret", ""]}>
          {providers.value.map((p) => (
            <tr key={p.name} data-provider={p.name}>
              <td>
                {p.display_name} <span class="badge">{p.name}</span>
              </td>
              <td>{p.kind}</td>
              <td class="mono">{p.settings.client_id}</td>
              <td class="mono">{p.callback_url}</td>
              <td>{p.has_client_secret || p.has_apple_private_key ? "set" : "none"}</td>
              <td>
                {p.source === "config" ? (
                  <span class="tag">config file</span>
                ) : (
                  <>
                    <button type="button" onClick={() => edit(p)}>
                      Edit
                    </button>{" "}
                    <button type="button" class="danger" onClick={() => remove(p)}>
                      Remove
                    </button>
                  </>
                )}
              </td>
            </tr>
          ))}
        </Grid>
      )}
      {notice && <p role="status">{notice}</p>}
      <form class="card" onSubmit={save} aria-labelledby="provider-form-title">
        <h2 id="provider-form-title">Add or change a provider</h2>
        <div class="row">
          <Field label="Provider name" hint="In its URLs: a-z, 0-9, - and _.">
            <input name="provider-name" value={name} onInput={(e) => setName(e.currentTarget.value)} required />
          </Field>
          <Field label="Kind">
            <select value={kind} onChange={set("kind")}>
              {KINDS.map((k) => (
                <option key={k} value={k}>
                  {k === "oidc" ? "any OpenID Connect provider" : k}
                </option>
              ))}
            </select>
          </Field>
          <Field label="Button label" hint="Empty: the kind's name.">
            <input name="provider-display-name" value={settings.display_name} onInput={set("display_name")} />
          </Field>
        </div>
        <div class="row">
          <Field label="Client id">
            <input name="provider-client-id" class="mono" value={settings.client_id} onInput={set("client_id")} required />
          </Field>
          {kind !== "apple" && (
            <Field label="Client secret" hint="Never shown again; empty keeps the stored one.">
              <input name="provider-client-secret" type="password" autocomplete="off" value={settings.client_secret} onInput={set("client_secret")} />
            </Field>
          )}
          {kind === "oidc" && (
            <Field label="Issuer" hint="Its discovery document is read before the provider is saved.">
              <input name="provider-issuer" type="url" value={settings.issuer} onInput={set("issuer")} required />
            </Field>
          )}
          {kind === "microsoft" && (
            <Field label="Tenant" hint="Empty: common.">
              <input name="provider-tenant" value={settings.tenant} onInput={set("tenant")} />
            </Field>
          )}
        </div>
        {kind === "apple" && (
          <div class="row">
            <Field label="Team id">
              <input name="provider-apple-team" value={settings.apple_team_id} onInput={set("apple_team_id")} required />
            </Field>
            <Field label="Key id">
              <input name="provider-apple-key-id" value={settings.apple_key_id} onInput={set("apple_key_id")} required />
            </Field>
            <Field label="Private key (PEM)" hint="Never shown again; empty keeps the stored one.">
              <textarea name="provider-apple-key" class="mono" rows={3} value={settings.apple_private_key} onInput={set("apple_private_key")} />
            </Field>
          </div>
        )}
        <Field label="Redirect URLs" hint="Where a sign-in may end in your app, separated by commas. Empty: auth.redirect_urls.">
          <input name="provider-redirects" value={lists.redirect_urls} onInput={setList("redirect_urls")} />
        </Field>
        <details open={more} onToggle={(e) => setMore(e.currentTarget.open)}>
          <summary>More settings</summary>
          <div class="row">
            <Field label="Scopes" hint="Separated by spaces. Empty: the kind's (openid email profile for OpenID Connect).">
              <input name="provider-scopes" class="mono" value={lists.scopes} onInput={setList("scopes")} />
            </Field>
            {!oauth2 && (
              <Field label="More ID token audiences" hint="Client ids of your apps' own sign-in SDKs, separated by commas: ID tokens they exchange are accepted.">
                <input name="provider-audiences" class="mono" value={lists.audiences} onInput={setList("audiences")} />
              </Field>
            )}
          </div>
          {kind === "gitlab" && (
            <Field label="Issuer" hint="A self-managed GitLab's address. Empty: https://gitlab.com.">
              <input name="provider-issuer" type="url" value={settings.issuer} onInput={set("issuer")} />
            </Field>
          )}
          <Field label="Callback URL" hint="As registered with the provider. Empty: this server's public URL, then /v1/auth/oauth/{name}/callback.">
            <input name="provider-callback" type="url" class="mono" value={settings.callback_url} onInput={set("callback_url")} />
          </Field>
          {oauth2 && (
            <div class="row">
              <Field label="Authorization URL" hint="For GitHub Enterprise and the like. Empty: the kind's.">
                <input name="provider-authorization-url" type="url" class="mono" value={settings.authorization_url} onInput={set("authorization_url")} />
              </Field>
              <Field label="Token URL" hint="Empty: the kind's.">
                <input name="provider-token-url" type="url" class="mono" value={settings.token_url} onInput={set("token_url")} />
              </Field>
              <Field label="User info URL" hint="Empty: the kind's.">
                <input name="provider-userinfo-url" type="url" class="mono" value={settings.userinfo_url} onInput={set("userinfo_url")} />
              </Field>
            </div>
          )}
        </details>
        <ProblemLine problem={error} />
        <button type="submit" class="primary">
          Save provider
        </button>
      </form>
    </section>
  );
}
