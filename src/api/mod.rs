//! The HTTP layer: the only module that knows actix. Handlers extract the caller and the input,
//! call one domain function, and map the result. Routes and the OpenAPI document come from the
//! same `#[utoipa::path]` annotations, so they cannot drift apart.

mod admin;
mod auth;
mod backups;
mod console;
mod dev;
mod documents;
pub(crate) mod error;
mod extract;
mod files;
mod functions;
mod guest;
mod mfa;
mod middleware;
mod oauth;
mod passwordless;
mod realtime;
mod refusal;
mod rules;
mod strict_json;
mod system;
mod transfer;
mod users;
mod webhooks;

use crate::auth::Authenticator;
use crate::backup::Backups;
use crate::config::Config;
use crate::docs::Documents;
use crate::error::{Error, ErrorCode};
use crate::files::Files;
use crate::functions::Functions;
use crate::metrics::Metrics;
use crate::realtime::Realtime;
use crate::trace::Tracer;
use crate::webhooks::Webhooks;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::{web, App, HttpRequest, HttpResponse, ResponseError};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

/// Everything a handler can reach.
pub(crate) struct AppState {
    pub docs: Documents,
    pub backups: Backups,
    pub files: Files,
    pub functions: Functions,
    pub webhooks: Webhooks,
    pub realtime: Realtime,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub tracer: Tracer,
    pub config: Arc<Config>,
    pub openapi_json: web::Bytes,
    routes: Arc<RouteTable>,
    /// Whether `POST /v1/admin/dev/clock` exists (`emberbase dev` only).
    pub dev_clock: bool,
}

/// The services the handlers call.
pub(crate) struct Services {
    pub docs: Documents,
    pub files: Files,
    pub functions: Functions,
    pub webhooks: Webhooks,
    pub realtime: Realtime,
    pub backups: Backups,
    pub auth: Arc<Authenticator>,
}

impl AppState {
    pub(crate) fn new(
        services: Services,
        metrics: Arc<Metrics>,
        tracer: Tracer,
        config: Arc<Config>,
    ) -> Self {
        let Services {
            docs,
            files,
            functions,
            webhooks,
            realtime,
            backups,
            auth,
        } = services;
        AppState {
            docs,
            backups,
            files,
            functions,
            webhooks,
            realtime,
            auth,
            metrics,
            tracer,
            config,
            openapi_json: web::Bytes::from_static(OPENAPI_JSON),
            routes: Arc::new(RouteTable::from_json(OPENAPI_JSON)),
            dev_clock: false,
        }
    }
}

/// A hook through which an embedding program adds routes of its own.
pub(crate) type RouteHook = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token (JWT) or the service key, as `Authorization: Bearer <token>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The error answers any operation can give, added where a route does not document them
/// itself, so the document lists every status the server sends: `400` for a malformed path,
/// query, header or body (every route checks them); `401` for a malformed, expired or revoked
/// token wherever a token is read, and `503` there for storage that is failing; `413` and
/// `415` wherever a body is read.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in api.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
            ];
            for op in operations.into_iter().flatten() {
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                };
                add(
                    "400",
                    "A malformed request: a path segment, query parameter, header or body the route does not accept",
                );
                if op.security.is_some() {
                    add("401", "A malformed, expired, revoked or forged token");
                    add(
                        "503",
                        "Storage is unavailable (a full disk or an I/O error): nothing was written; retry later",
                    );
                }
                if op.request_body.is_some() {
                    add("413", "The body is over its size limit");
                    add("415", "The body is not of the type the route takes");
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Emberbase",
        description = "A Firebase-style backend in one binary. Every error is `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecurityAddon),
    tags(
        (name = "documents", description = "JSON documents in collections"),
        (name = "files", description = "Files in buckets: uploads, downloads, signed URLs"),
        (name = "realtime", description = "Server-Sent Events of document changes, with read rules per event"),
        (name = "functions", description = "Wasm functions: upload, configure, call, invocation log"),
        (name = "webhooks", description = "Signed outbound webhooks on document, file and account events, with their delivery log (admins only)"),
        (name = "auth", description = "Accounts, sessions, email verification, password reset"),
        (name = "admin", description = "Users, collection and bucket rules, indexes, outbox (admins only)"),
        (name = "backups", description = "Online backups of the whole server, made on request or on a schedule (admins only)"),
        (name = "operations", description = "Health, metrics, the API document"),
    )
)]
struct ApiDoc;

/// Declares the documented routes once, as two functions: `register` adds them to a served app
/// (each HTTP worker builds its own), and `describe` adds them to the app that only produces the
/// OpenAPI document. Describing a route builds its whole OpenAPI description, so workers skip it.
macro_rules! routes {
    ($($handler:path),* $(,)?) => {
        /// Registers every documented route.
        fn register(cfg: &mut web::ServiceConfig) {
            $(cfg.service($handler);)*
        }

        /// Registers every documented route with its OpenAPI description.
        fn describe(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
            $(cfg.service($handler);)*
        }
    };
}

// actix tries the routes in this order, running one regex per dynamic pattern until one
// matches, so the most requested come first (a GET by id ran four regexes; now it runs one).
// A route registered earlier wins a path two patterns match.
routes!(
    documents::get_document,
    documents::list_documents,
    documents::create_document,
    documents::update_document,
    documents::set_document,
    documents::delete_document,
    documents::aggregate,
    documents::batch,
    system::health,
    system::openapi_json,
    system::metrics,
    admin::list_collections,
    admin::delete_collection,
    admin::nonconforming,
    admin::get_collection,
    admin::put_collection,
    files::upload,
    files::download,
    files::head_file,
    files::delete_file,
    files::list_files,
    files::sign,
    files::list_buckets,
    files::get_bucket,
    files::put_bucket,
    functions::upload,
    functions::configure,
    functions::list,
    functions::get,
    functions::delete,
    functions::source,
    functions::compare_secrets,
    functions::invocations,
    functions::logs,
    functions::usage,
    functions::versions,
    functions::activate,
    functions::list_secrets,
    functions::put_secret,
    functions::delete_secret,
    functions::replay,
    functions::call,
    webhooks::create_webhook,
    webhooks::list_webhooks,
    webhooks::get_webhook,
    webhooks::update_webhook,
    webhooks::delete_webhook,
    webhooks::rotate_webhook_secret,
    webhooks::list_webhook_deliveries,
    webhooks::list_webhook_messages,
    webhooks::redeliver_webhook_message,
    realtime::subscribe,
    realtime::connect,
    realtime::add_subscription,
    realtime::remove_subscription,
    auth::signup,
    auth::login,
    auth::refresh,
    auth::logout,
    auth::me,
    auth::my_sessions,
    auth::end_my_session,
    auth::update_me,
    auth::verify_request,
    auth::verify_confirm,
    auth::reset_request,
    auth::reset_confirm,
    auth::password_change,
    mfa::totp_enroll,
    mfa::totp_confirm,
    mfa::totp_disable,
    mfa::mfa_verify,
    mfa::mfa_reset,
    passwordless::passwordless_request,
    passwordless::passwordless_verify,
    guest::anonymous,
    guest::upgrade,
    oauth::oauth_providers,
    oauth::oauth_authorize,
    oauth::oauth_callback,
    oauth::oauth_callback_form,
    oauth::oauth_exchange,
    oauth::oauth_token,
    oauth::identity_authorize,
    oauth::identity_link,
    oauth::identity_unlink,
    oauth::list_auth_providers,
    oauth::put_auth_provider,
    oauth::compare_auth_provider_secrets,
    oauth::delete_auth_provider,
    users::export_users,
    users::import_users,
    transfer::import_documents,
    transfer::import_file,
    transfer::export_buckets,
    rules::check_rule,
    rules::test_rule,
    users::list_users,
    users::create_user,
    users::get_user,
    users::disable_user,
    users::enable_user,
    users::set_role,
    users::set_email,
    users::email_collisions,
    users::delete_user,
    users::list_sessions,
    users::revoke_session,
    users::revoke_sessions,
    users::put_admin,
    users::outbox,
    users::rotate_key,
    backups::create_backup,
    backups::list_backups,
    backups::download_backup,
    backups::link_backup,
    backups::delete_backup,
);

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::Modify;
    let (_, mut api) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(describe)
        .split_for_parts();
    CommonErrors.modify(&mut api);
    files::document_empty_uploads(&mut api);
    api
}

/// The application: routes, middleware, and JSON errors for everything actix itself refuses.
pub(crate) fn app(
    state: web::Data<AppState>,
    hook: Option<RouteHook>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors = cors(&state.config.http.cors_origins);
    let dev_clock = state.dev_clock;
    let mut app = App::new()
        .app_data(state)
        .app_data(
            web::PathConfig::default().error_handler(|e, _| error::from_actix(&e.into()).into()),
        )
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| error::from_actix(&e.into()).into()),
        )
        .app_data(
            web::FormConfig::default()
                .limit(64 * 1024)
                .error_handler(|e, _| error::from_actix(&e.into()).into()),
        )
        .wrap(actix_web::middleware::from_fn(refusal::close_refused))
        .wrap(actix_web::middleware::from_fn(
            middleware::refuse_unknown_query,
        ))
        .wrap(cors)
        .wrap(actix_web::middleware::from_fn(middleware::observe))
        .configure(register)
        .configure(console::routes)
        // Swagger UI reads the document served at /v1/openapi.json, so no worker keeps a copy.
        .service(
            SwaggerUi::new("/docs/{_:.*}")
                .config(utoipa_swagger_ui::Config::from("/v1/openapi.json")),
        )
        .route("/docs", web::get().to(docs_redirect));
    if dev_clock {
        app = app.route("/v1/admin/dev/clock", web::post().to(dev::move_clock));
    }
    if let Some(hook) = hook {
        app = app.configure(|cfg| hook(cfg));
    }
    app.default_service(web::to(fallback))
}

/// `/docs` is where people type it; Swagger UI lives under `/docs/`.
async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}

fn cors(origins: &[String]) -> actix_cors::Cors {
    let exposed = [
        header::ETAG,
        header::RETRY_AFTER,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::CONTENT_DISPOSITION,
        middleware::REQUEST_ID,
        middleware::TRACERESPONSE,
    ];
    let cors = actix_cors::Cors::default()
        .allow_any_method()
        .allow_any_header()
        .expose_headers(exposed)
        .max_age(3600);
    if origins.is_empty() {
        cors.allow_any_origin()
    } else {
        origins.iter().fold(cors, |c, o| c.allowed_origin(o))
    }
}

/// The OpenAPI document the code generates ([`openapi`]), as committed in `sdk/openapi.json`
/// (the `committed_openapi_is_current` test fails when the two differ). The server serves it
/// and builds its route table from it, rather than building the document at startup: that
/// ran the description code of every operation and schema, which stayed resident (see
/// ARCHITECTURE.md, "The served OpenAPI document is the committed one").
const OPENAPI_JSON: &[u8] = include_bytes!("../../sdk/openapi.json");

/// Route patterns, their methods and each method's query parameters: for telling a wrong method
/// (`405`) from an unknown route (`404`), for refusing query parameters an endpoint does not
/// take, and for naming a request's route in metrics and traces. Built from the OpenAPI
/// document, so it knows exactly the routes that exist. A radix tree: a lookup costs the length
/// of the path, where trying each route's pattern in turn (as actix's `match_pattern` does)
/// cost a list request 4% of its CPU time, and a GET by id 2%.
struct RouteTable(matchit::Router<Route>);

/// What the route table reads of the OpenAPI document: each path's operations by method.
#[derive(serde::Deserialize)]
struct DocumentedPaths {
    paths: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// The methods an OpenAPI path item may name, in the order the table lists them.
const METHODS: [(&str, Method); 6] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("patch", Method::PATCH),
    ("head", Method::HEAD),
];

/// A documented route: its pattern as the document writes it, and its methods.
struct Route {
    pattern: String,
    methods: Vec<MethodParams>,
}

/// A method of a route and the query parameters it takes.
type MethodParams = (Method, Vec<String>);

impl RouteTable {
    /// The table of an OpenAPI document's JSON; empty (every route then answers as unknown to
    /// it) if the JSON is not one.
    fn from_json(json: &[u8]) -> Self {
        let paths = match serde_json::from_slice::<DocumentedPaths>(json) {
            Ok(document) => document.paths,
            Err(e) => {
                tracing::error!(error = %e, "the OpenAPI document does not parse; no route table");
                Default::default()
            }
        };
        let query_names = |op: &serde_json::Value| {
            op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let mut router = matchit::Router::new();
        for (pattern, item) in &paths {
            let methods = METHODS
                .iter()
                .filter_map(|(name, m)| Some((m.clone(), query_names(item.get(*name)?))))
                .collect();
            // A file path spans segments; the document names it `{path}`.
            let route = pattern.replace("{path}", "{*path}");
            let value = Route {
                pattern: pattern.clone(),
                methods,
            };
            if let Err(e) = router.insert(route, value) {
                // The documented routes do not overlap (a test builds this table), so this is
                // a route added in conflict with another: it answers 404 to a wrong method.
                tracing::error!(route = %pattern, error = %e, "route left out of the route table");
            }
        }
        RouteTable(router)
    }

    fn route(&self, path: &str) -> Option<&Route> {
        self.0.at(path).ok().map(|found| found.value)
    }

    fn methods(&self, path: &str) -> Option<&[MethodParams]> {
        self.route(path).map(|route| route.methods.as_slice())
    }

    /// The documented pattern `path` matches (`/v1/collections/{collection}/docs/{id}`).
    fn pattern(&self, path: &str) -> Option<&str> {
        self.route(path).map(|route| route.pattern.as_str())
    }

    /// The query parameters `method` on `path` takes (`None`: no such route).
    fn query_names(&self, method: &Method, path: &str) -> Option<&[String]> {
        self.methods(path)?
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, names)| names.as_slice())
    }
}

/// Refuses a request with a query parameter its endpoint does not take (`?count=true` on a
/// list), naming it, instead of silently answering as if it had not been sent.
pub(crate) fn check_query(
    state: &AppState,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<(), Error> {
    // A provider's redirect carries what the provider adds (Google's `scope` and `authuser`,
    // RFC 9207's `iss`); the callback reads its own and ignores the rest.
    if query.is_empty() || (path.starts_with("/v1/auth/oauth/") && path.ends_with("/callback")) {
        return Ok(());
    }
    let Some(known) = state.routes.query_names(method, path) else {
        return Ok(());
    };
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|_| Error::bad_request("the query string is not valid form encoding"))?;
    match pairs.iter().find(|(name, _)| !known.contains(name)) {
        None => Ok(()),
        Some((name, _)) if known.is_empty() => Err(Error::bad_request(format!(
            "unknown query parameter `{name}`: this endpoint takes none"
        ))
        .with_details(serde_json::json!({ "parameter": name }))),
        Some((name, _)) => Err(Error::bad_request(format!(
            "unknown query parameter `{name}`: this endpoint takes {}",
            known.join(", ")
        ))
        .with_details(serde_json::json!({ "parameter": name }))),
    }
}

async fn fallback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match state.routes.methods(req.path()) {
        Some(methods) => {
            let allow = methods
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let err = Error::new(
                ErrorCode::MethodNotAllowed,
                format!("{} is not allowed here; use {allow}", req.method()),
            );
            let mut res = err.error_response();
            if let Ok(value) = header::HeaderValue::from_str(&allow) {
                res.headers_mut().insert(header::ALLOW, value);
            }
            res
        }
        None => Error::not_found(format!("no route for {} {}", req.method(), req.path()))
            .error_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_knows_every_documented_route_and_nothing_else() {
        let api = openapi();
        let table = RouteTable::from_json(api.to_pretty_json().unwrap().as_bytes());
        for (pattern, item) in &api.paths.paths {
            let path = pattern
                .replace("{path}", "a/b.txt")
                .replace('{', "x")
                .replace('}', "");
            let methods = table.methods(&path).map(|m| {
                m.iter()
                    .map(|(method, _)| method.clone())
                    .collect::<Vec<_>>()
            });
            let documented = [
                (&item.get, Method::GET),
                (&item.put, Method::PUT),
                (&item.post, Method::POST),
                (&item.delete, Method::DELETE),
                (&item.patch, Method::PATCH),
                (&item.head, Method::HEAD),
            ]
            .into_iter()
            .filter_map(|(op, m)| op.as_ref().map(|_| m))
            .collect::<Vec<_>>();
            assert_eq!(methods, Some(documented), "{pattern} as {path}");
        }
        let list = table.query_names(&Method::GET, "/v1/collections/posts/docs");
        assert!(list.is_some_and(|names| names.iter().any(|n| n == "filter")));
        for unknown in [
            "/v1/nope",
            "/v2/collections/c/docs",
            "/v1/collections/c/docs/x/y",
            "/v1/collections//docs",
            "/v1/collections/c/docs/",
        ] {
            assert!(table.methods(unknown).is_none(), "{unknown}");
        }
        assert!(table.methods("/v1/files/photos/a/b/c.png").is_some());
    }
}
