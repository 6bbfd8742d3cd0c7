//! `/v1/admin/rules/...`: rules and filters checked and tried before they are stored, for
//! editors (the console checks as you type) and scripts.

use super::error::ErrorBody;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::docs::{ExpressionCheck, ExpressionKind, RuleOperation, RuleTrial, RuleTrialInput};
use crate::error::Error;
use actix_web::{post, web, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

/// An expression to check.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckRequest {
    /// The expression, in the filter language.
    expression: String,
    /// What it is checked as.
    kind: ExpressionKind,
}

/// Check an expression with the server's own parser and limits: a collection or bucket rule,
/// a filter, or a trigger's `when`. A check that finds an error still answers `200`, with
/// `valid: false`, the message and the column.
#[utoipa::path(
    tag = "admin",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "Whether it compiles, and where it does not", body = ExpressionCheck),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/rules/check")]
pub(super) async fn check_rule(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<CheckRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let checked = state
        .docs
        .check_expression(&caller.0, body.kind, &body.expression)?;
    Ok(HttpResponse::Ok().json(checked))
}

/// A rule to try.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TrialRequest {
    collection: String,
    operation: RuleOperation,
    /// The rule to try; absent: the collection's own rule for the operation (or the default).
    #[serde(default)]
    rule: Option<String>,
    /// The stored document the rule sees as `doc` (not for a create).
    #[serde(default)]
    document_id: Option<String>,
    /// For a create or update: the document's data as the write would leave it
    /// (`request.data`).
    #[serde(default, deserialize_with = "crate::model::optional_json_object")]
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
    /// The user the rule sees as `auth`; absent: an anonymous caller.
    #[serde(default)]
    user_id: Option<String>,
}

/// Try a collection rule: what it decides for a user (or an anonymous caller), a stored
/// document and the data a write would leave, evaluated as a real request's would be. Admins
/// pass every rule; the answer says whether the user is one.
#[utoipa::path(
    tag = "admin",
    request_body = TrialRequest,
    responses(
        (status = 200, description = "What the rule decided, and what it saw", body = RuleTrial),
        (status = 400, description = "A rule that does not compile, or a bad name or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/rules/test")]
pub(super) async fn test_rule(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<TrialRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let user = match &body.user_id {
        Some(id) => Some(state.auth.accounts().principal_of(&caller.0, id).await?),
        None => None,
    };
    let input = RuleTrialInput {
        rule: body.rule.as_deref(),
        document_id: body.document_id.as_deref(),
        data: body.data,
    };
    let trial = state
        .docs
        .try_rule(
            &caller.0,
            &body.collection,
            body.operation,
            user.as_ref(),
            input,
        )
        .await?;
    Ok(HttpResponse::Ok().json(trial))
}
