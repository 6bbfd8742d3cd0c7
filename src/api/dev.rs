//! `POST /v1/admin/dev/clock`: the dev clock, registered only under `emberbase dev`
//! (`ServerBuilder::dev_clock`), and so absent from the OpenAPI document: everywhere else the
//! route does not exist.

use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::error::Error;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::time::Duration;

/// How to move the clock: by seconds, or to a time (never back).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClockMove {
    #[serde(default)]
    advance_secs: Option<u64>,
    #[serde(default)]
    to: Option<String>,
}

/// Moves the clock that schedules and `now()` in rules read, then wakes every function's
/// schedule, so a tick now due fires at once. An empty body moves nothing and says the time.
pub(super) async fn move_clock(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<ClockMove>,
) -> Result<HttpResponse, Error> {
    caller
        .0
        .require_admin("move the dev clock")
        .map_err(Error::from)?;
    let by = match (body.0.advance_secs, body.0.to.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Error::validation("give advance_secs or to, not both", "to"))
        }
        (Some(secs), None) => Duration::from_secs(secs),
        (None, Some(to)) => {
            let to =
                time::OffsetDateTime::parse(to, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        Error::validation(format!("to is not an RFC 3339 time: {e}"), "to")
                    })?;
            let now = crate::clock::now_utc();
            if to < now {
                return Err(Error::validation("the dev clock only moves forward", "to"));
            }
            Duration::try_from(to - now).unwrap_or_default()
        }
        (None, None) => Duration::ZERO,
    };
    let ahead = crate::clock::advance(by);
    state.functions.wake_schedules();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "now": crate::model::format_time(crate::clock::now_utc()),
        "ahead_secs": ahead.as_secs(),
    })))
}
