//! What a tenant spends and its budgets:
//! - `GET /agent/usage/{tenantId}` (tenant and admin keys) and `GET
//!   /agent/usage/{tenantId}/users/{userId}` (also the user's own token): totals and rows grouped by
//!   day, user, agent or model, as JSON or CSV (`format=csv`);
//! - `GET /agent/budgets/{tenantId}` (tenant and admin keys) with what is used so far, and `PUT`
//!   (admin keys only).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::extract::{Scope, TenantWidePath, UserPath};
use super::{ApiError, AppState};
use crate::ids::{TenantId, UserId};
use crate::usage::{Budget, Counts, UsageRow, budgets::used_view, today};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(tenant_usage))
        .routes(utoipa_axum::routes!(user_usage))
        .routes(utoipa_axum::routes!(get_budget, put_budget))
}

/// The longest span one usage request covers.
const MAX_DAYS: i64 = 400;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct UsageQuery {
    /// The first UTC day, `YYYY-MM-DD` (the first of this month by default).
    from: Option<String>,
    /// The last UTC day, `YYYY-MM-DD` (today by default; at most 400 days after `from`).
    to: Option<String>,
    /// `day` (the default), `user`, `agent` or `model`.
    group_by: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

/// Counted usage, with its cost in US dollars.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageCounts {
    #[serde(flatten)]
    counts: Counts,
    cost_usd: f64,
}

impl From<Counts> for UsageCounts {
    fn from(counts: Counts) -> Self {
        UsageCounts { cost_usd: counts.cost_micros as f64 / 1e6, counts }
    }
}

/// One group's usage: `key` is the day, the user, the agent (`""`: the server's own) or the model.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroup {
    key: String,
    #[serde(flatten)]
    usage: UsageCounts,
}

/// A tenant's (or a user's) usage over a span of days.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    from: String,
    to: String,
    group_by: String,
    totals: UsageCounts,
    rows: Vec<UsageGroup>,
}

fn day(name: &str, value: &str) -> Result<NaiveDate, ApiError> {
    let bad = || ApiError::bad_request("invalid_query", format!("{name} must be a day, YYYY-MM-DD"));
    let shaped = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !shaped {
        return Err(bad());
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| bad())
}

async fn report(
    state: &AppState,
    tenant: &TenantId,
    user: Option<&UserId>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let now = today();
    let from = day("from", q.from.as_deref().unwrap_or(&format!("{}-01", &now[..7])))?;
    let to = day("to", q.to.as_deref().unwrap_or(&now))?;
    if to < from || (to - from).num_days() > MAX_DAYS {
        return Err(ApiError::bad_request("invalid_query", "to must be from or later, at most 400 days after it"));
    }
    let group_by = q.group_by.as_deref().unwrap_or("day");
    let key: fn(&UsageRow) -> String = match group_by {
        "day" => |r| r.day.clone(),
        "user" => |r| r.user.as_ref().map(|u| u.as_str().to_string()).unwrap_or_default(),
        "agent" => |r| r.entry.agent.clone(),
        "model" => |r| r.entry.model.clone(),
        _ => return Err(ApiError::bad_request("invalid_query", "groupBy must be day, user, agent or model")),
    };
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_query", "format must be json or csv")),
    };
    let (from, to) = (from.format("%Y-%m-%d").to_string(), to.format("%Y-%m-%d").to_string());
    let rows = state.store.usage(tenant, &from, &to, user).await?;
    let mut totals = Counts::default();
    let mut groups: std::collections::BTreeMap<String, Counts> = Default::default();
    for row in &rows {
        totals.add(&row.entry.counts);
        groups.entry(key(row)).or_default().add(&row.entry.counts);
    }
    if csv {
        let mut out = format!("{group_by},inputTokens,outputTokens,modelCalls,turns,costUsd,unpricedTokens\n");
        for (k, c) in &groups {
            // A spreadsheet takes a cell starting with = + - @ for a formula: it is kept as text.
            let k = if k.starts_with(['=', '+', '-', '@']) { format!("'{k}") } else { k.clone() };
            let k = if k.contains([',', '"', '\n', '\r']) { format!("\"{}\"", k.replace('"', "\"\"")) } else { k };
            out.push_str(&format!(
                "{k},{},{},{},{},{:.6},{}\n",
                c.input_tokens,
                c.output_tokens,
                c.model_calls,
                c.turns,
                c.cost_micros as f64 / 1e6,
                c.unpriced_tokens
            ));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    let rows = groups.into_iter().map(|(key, c)| UsageGroup { key, usage: c.into() }).collect();
    let report = UsageReport { from, to, group_by: group_by.to_string(), totals: totals.into(), rows };
    Ok(Json(report).into_response())
}

/// A tenant's usage: totals and rows by day, user, agent or model (tenant and admin keys).
#[utoipa::path(
    get,
    path = "/agent/usage/{tenantId}",
    tag = "usage",
    params(("tenantId" = String, Path), UsageQuery),
    responses(
        (status = 200, description = "Usage (text/csv with format=csv)",
         content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad day, span, groupBy or format"),
        (status = 403, description = "Not a credential of the tenant (a user's own token reads its own usage only)")
    )
)]
async fn tenant_usage(
    State(state): State<AppState>,
    TenantWidePath { tenant }: TenantWidePath,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    report(&state, &tenant, None, query).await
}

/// One user's usage (also readable with that user's own token).
#[utoipa::path(
    get,
    path = "/agent/usage/{tenantId}/users/{userId}",
    tag = "usage",
    params(("tenantId" = String, Path), ("userId" = String, Path), UsageQuery),
    responses(
        (status = 200, description = "Usage (text/csv with format=csv)",
         content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad day, span, groupBy or format"),
        (status = 403, description = "Another user's usage, or another tenant's")
    )
)]
async fn user_usage(
    State(state): State<AppState>,
    UserPath { tenant, user }: UserPath,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    report(&state, &tenant, Some(&user), query).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct BudgetQuery {
    /// Also what this user used today, against `perUserDaily`.
    user_id: Option<String>,
}

/// The budgets with what is used so far this month (and today by `userId`).
async fn budget_view(state: &AppState, tenant: &TenantId, user: Option<&UserId>) -> Result<Value, ApiError> {
    let budget = state.store.get_budget(tenant).await?.unwrap_or_default();
    let now = today();
    let month_start = format!("{}-01", &now[..7]);
    // The month as budgets are checked against it: the tenant's totals (each server adds to them
    // every second) with what this server counted since.
    let month = state.agent.meter().month_spent(tenant).await?;
    let next_month = NaiveDate::parse_from_str(&month_start, "%Y-%m-%d")
        .ok()
        .and_then(
            |d| if d.month() == 12 { d.with_year(d.year() + 1)?.with_month(1) } else { d.with_month(d.month() + 1) },
        )
        .map(|d| format!("{}T00:00:00Z", d.format("%Y-%m-%d")))
        .unwrap_or_default();
    let mut used = json!({"monthly": used_view(&month)});
    used["monthly"]["period"] = json!(&now[..7]);
    used["monthly"]["resetsAt"] = json!(next_month);
    if let Some(user) = user {
        let mut daily = Counts::default();
        for row in state.store.usage(tenant, &now, &now, Some(user)).await? {
            daily.add(&row.entry.counts);
        }
        used["perUserDaily"] = used_view(&daily);
        used["perUserDaily"]["period"] = json!(now);
        used["perUserDaily"]["userId"] = json!(user);
    }
    let mut view = serde_json::to_value(&budget).unwrap_or_default();
    view["warnAt"] = json!(budget.warn_at());
    view["used"] = used;
    Ok(view)
}

/// A tenant's budgets and what is used so far (tenant and admin keys).
#[utoipa::path(
    get,
    path = "/agent/budgets/{tenantId}",
    tag = "usage",
    params(("tenantId" = String, Path), BudgetQuery),
    responses((status = 200, body = Object, description = "The budgets (none set: no limits) with used so far"))
)]
async fn get_budget(
    State(state): State<AppState>,
    TenantWidePath { tenant }: TenantWidePath,
    query: Result<Query<BudgetQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let user = q
        .user_id
        .map(UserId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", format!("userId: {e}")))?;
    Ok(Json(budget_view(&state, &tenant, user.as_ref()).await?))
}

/// Sets a tenant's budgets (admin keys only): `{"monthly": {"tokens"?, "costUsd"?},
/// "perUserDaily": {...}, "warnAt": 0.8}`; `{}` removes them.
#[utoipa::path(
    put,
    path = "/agent/budgets/{tenantId}",
    tag = "usage",
    params(("tenantId" = String, Path)),
    request_body = Budget,
    responses(
        (status = 200, body = Object, description = "The budgets as set, with used so far"),
        (status = 400, description = "A body that is not JSON or not a budget"),
        (status = 403, description = "Not an admin key"),
        (status = 415, description = "Not application/json"),
        (status = 422, description = "A budget that is not valid")
    )
)]
async fn put_budget(
    State(state): State<AppState>,
    scope: Scope,
    TenantWidePath { tenant }: TenantWidePath,
    body: Result<Json<Budget>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    scope.administers()?;
    let Json(budget) = body?;
    budget.validate().map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_budget", m))?;
    state.store.put_budget(&tenant, &budget).await?;
    state.agent.meter().forget_budget(&tenant);
    Ok(Json(budget_view(&state, &tenant, None).await?))
}
