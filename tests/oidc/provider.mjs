// The sign-in providers tests/it/oauth.rs signs in with, on loopback:
//
// - an OpenID provider: oidc-provider (an OpenID Certified implementation), with a client for
//   Emberbase and clients standing for mobile apps. Its login and consent pages are replaced by
//   ones that finish at once as the account the test chose (POST /control/login), so an HTTP
//   client that follows redirects and keeps cookies goes through the whole flow;
//   POST /control/rotate replaces its signing key (a new `kid`);
// - a small GitHub-style OAuth2 server under /github (no ID token: the user comes from /user
//   and /user/emails), which checks the client secret, single use and PKCE as GitHub does.
//
// Prints one line, {"url": "http://127.0.0.1:PORT"}, when it listens; exits when stdin closes.

import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import Provider from "oidc-provider";

const CALLBACK = process.env.EMBERBASE_CALLBACK ?? "http://127.0.0.1:1/unset";

/** Accounts by subject, as the test set them. */
const accounts = new Map();
/** The subject the next login signs in as. */
let nextLogin = null;

function signingKey() {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = privateKey.export({ format: "jwk" });
  return { ...jwk, kid: randomBytes(8).toString("hex"), alg: "RS256", use: "sig" };
}

function makeProvider(issuer, key) {
  const client = (client_id, redirect_uris) => ({
    client_id,
    client_secret: `${client_id}-secret`,
    redirect_uris,
    grant_types: ["authorization_code"],
    response_types: ["code"],
  });
  const provider = new Provider(issuer, {
    clients: [
      client("emberbase", [CALLBACK]),
      // Apps that hold ID tokens of their own: one Emberbase accepts, one it does not, and one
      // whose tokens expire at once.
      client("mobile-app", ["http://127.0.0.1/mobile"]),
      client("other-app", ["http://127.0.0.1/mobile"]),
      client("short-lived", ["http://127.0.0.1/mobile"]),
    ],
    jwks: { keys: [key] },
    pkce: { required: () => true },
    cookies: { keys: ["emberbase-test-cookies"] },
    claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name", "picture"] },
    // ID tokens carry only `sub` when an access token comes with them (the specification's
    // default): the redirect flow reads the address from userinfo, and the apps below ask for
    // it in their ID tokens with the `claims` parameter, as platform SDKs' tokens carry it.
    features: { devInteractions: { enabled: false }, claimsParameter: { enabled: true } },
    ttl: {
      IdToken: (_ctx, _token, client) => (client.clientId === "short-lived" ? 1 : 3600),
      AccessToken: 3600,
      AuthorizationCode: 60,
      Grant: 3600,
      Interaction: 600,
      Session: 3600,
    },
    async findAccount(_ctx, sub) {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...account }) };
    },
  });
  provider.on("server_error", (_ctx, err) => console.error("provider error:", err));
  return provider;
}

/** Finishes a login or consent prompt at once, as `nextLogin`. */
async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === "login") {
    if (!nextLogin) {
      res.writeHead(500).end("no login set: POST /control/login first");
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: nextLogin } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(" "));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

function body(req) {
  return new Promise((resolve) => {
    let text = "";
    req.on("data", (chunk) => (text += chunk));
    req.on("end", () => resolve(text));
  });
}

function json(res, status, value) {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(value));
}

// The GitHub-style server's state: codes waiting for exchange, and tokens.
const github = {
  codes: new Map(),
  tokens: new Set(),
  user: { id: 4242, login: "octocat", name: "The Octocat", email: null, avatar_url: "https://avatars.test/4242" },
  emails: [
    { email: "octocat@example.com", primary: true, verified: true },
    { email: "octo-old@example.com", primary: false, verified: false },
  ],
};

async function githubRoute(req, res, url) {
  if (url.pathname === "/github/login/oauth/authorize") {
    const q = url.searchParams;
    if (q.get("client_id") !== "gh-client" || q.get("code_challenge_method") !== "S256") {
      json(res, 400, { error: "bad request" });
      return;
    }
    const code = randomBytes(10).toString("hex");
    github.codes.set(code, { challenge: q.get("code_challenge"), redirect: q.get("redirect_uri") });
    const back = new URL(q.get("redirect_uri"));
    back.searchParams.set("code", code);
    back.searchParams.set("state", q.get("state"));
    res.writeHead(302, { Location: back.toString() }).end();
    return;
  }
  if (url.pathname === "/github/login/oauth/access_token" && req.method === "POST") {
    const form = new URLSearchParams(await body(req));
    const pending = github.codes.get(form.get("code"));
    github.codes.delete(form.get("code"));
    const verifier = form.get("code_verifier") ?? "";
    const challenge = createHash("sha256").update(verifier).digest("base64url");
    // GitHub answers errors with 200 and an `error` field.
    if (form.get("client_id") !== "gh-client" || form.get("client_secret") !== "gh-secret") {
      json(res, 200, { error: "incorrect_client_credentials" });
    } else if (!pending || pending.redirect !== form.get("redirect_uri")) {
      json(res, 200, { error: "bad_verification_code" });
    } else if (pending.challenge !== challenge) {
      json(res, 200, { error: "invalid_grant", error_description: "the code_verifier does not match" });
    } else {
      const token = `gho_${randomBytes(12).toString("hex")}`;
      github.tokens.add(token);
      json(res, 200, { access_token: token, token_type: "bearer", scope: "read:user,user:email" });
    }
    return;
  }
  const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
  if (!github.tokens.has(token)) {
    json(res, 401, { message: "Bad credentials" });
  } else if (url.pathname === "/github/user") {
    json(res, 200, github.user);
  } else if (url.pathname === "/github/user/emails") {
    json(res, 200, github.emails);
  } else {
    json(res, 404, { message: "Not Found" });
  }
}

const server = createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;
let provider = makeProvider(issuer, signingKey());

server.on("request", async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname === "/control/login" && req.method === "POST") {
      const account = JSON.parse(await body(req));
      const { sub, ...claims } = account;
      accounts.set(sub, claims);
      nextLogin = sub;
      json(res, 200, { ok: true });
    } else if (url.pathname === "/control/rotate" && req.method === "POST") {
      provider = makeProvider(issuer, signingKey());
      json(res, 200, { ok: true });
    } else if (url.pathname === "/control/github" && req.method === "POST") {
      Object.assign(github, JSON.parse(await body(req)));
      json(res, 200, { ok: true });
    } else if (url.pathname.startsWith("/github/")) {
      await githubRoute(req, res, url);
    } else if (url.pathname.startsWith("/interaction/")) {
      await interaction(provider, req, res);
    } else {
      provider.callback()(req, res);
    }
  } catch (err) {
    console.error(err);
    if (!res.headersSent) json(res, 500, { error: String(err) });
  }
});

console.log(JSON.stringify({ url: issuer }));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
