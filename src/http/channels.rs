//! Channels over HTTP: a tenant's channels (`/agent/tenants/{tenantId}/channels/{channelId}`, for
//! tenant and admin keys; credentials are write-only), the business's own messages on a channel,
//! and the providers' webhooks (`/channels/...`), which carry no credential of ours: each is checked
//! by the provider's signature with the channel's secret.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;

use super::extract::{ChannelPath, ChannelsPath, Scope};
use super::{ApiError, AppState};
use crate::channels::{
    ChannelKind, ChannelSpec, StoredChannel, Template, email, email_address, twilio, twilio_address, verify_address,
    whatsapp, whatsapp_address,
};
use crate::ids::ChannelId;
use crate::timestamp::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(list_channels))
        .routes(utoipa_axum::routes!(put_channel, get_channel, delete_channel))
        .routes(utoipa_axum::routes!(send_message))
        .routes(utoipa_axum::routes!(whatsapp_verify, whatsapp_webhook))
        .routes(utoipa_axum::routes!(twilio_webhook))
        .routes(utoipa_axum::routes!(twilio_status))
        .routes(utoipa_axum::routes!(email_inbound))
}

fn channel_not_found(id: &ChannelId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "channel_not_found", format!("this tenant has no channel {id}"))
}

/// The tenant's channels, by id.
#[utoipa::path(
    get,
    path = "/agent/tenants/{tenantId}/channels",
    tag = "channels",
    params(("tenantId" = String, Path)),
    responses((status = 200, body = Vec<Object>))
)]
async fn list_channels(
    State(state): State<AppState>,
    scope: Scope,
    ChannelsPath { tenant }: ChannelsPath,
) -> Result<Json<Vec<Value>>, ApiError> {
    scope.manages()?;
    Ok(Json(state.store.list_channels(&tenant).await?.iter().map(StoredChannel::view).collect()))
}

/// One channel of the tenant (its credentials as `<name>Set`).
#[utoipa::path(
    get,
    path = "/agent/tenants/{tenantId}/channels/{channelId}",
    tag = "channels",
    params(("tenantId" = String, Path), ("channelId" = String, Path)),
    responses((status = 200, body = Object), (status = 404, description = "No such channel"))
)]
async fn get_channel(
    State(state): State<AppState>,
    scope: Scope,
    ChannelPath { tenant, channel }: ChannelPath,
) -> Result<Json<Value>, ApiError> {
    scope.manages()?;
    let found = state.store.get_channel(&tenant, &channel).await?.ok_or_else(|| channel_not_found(&channel))?;
    Ok(Json(found.view()))
}

/// Creates (201) or replaces (200) a channel. Credentials are write-only: left out on a replace,
/// the stored ones stay. An address (a WhatsApp phone number id, a Twilio account and number)
/// belongs to one channel: another's is a 409.
#[utoipa::path(
    put,
    path = "/agent/tenants/{tenantId}/channels/{channelId}",
    tag = "channels",
    params(("tenantId" = String, Path), ("channelId" = String, Path, description = "1 to 64 of [A-Za-z0-9._-]")),
    request_body = ChannelSpec,
    responses(
        (status = 200, body = Object, description = "Replaced"),
        (status = 201, body = Object, description = "Created"),
        (status = 409, description = "The address belongs to another channel"),
        (status = 422, description = "An invalid field (named in `field`)"),
    )
)]
async fn put_channel(
    State(state): State<AppState>,
    scope: Scope,
    ChannelPath { tenant, channel }: ChannelPath,
    body: Result<Json<ChannelSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    scope.manages()?;
    let invalid = |field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_channel", message).with("field", json!(field))
    };
    let Json(mut spec) = body.map_err(|e| match e {
        JsonRejection::JsonDataError(e) => {
            let (field, message) = crate::agents::body_error_field(&e.body_text());
            invalid(&field, message)
        }
        other => other.into(),
    })?;
    let existing = state.store.get_channel(&tenant, &channel).await?;
    if let Some(old) = &existing {
        spec.keep_secrets(&old.spec);
    }
    spec.validate().map_err(|(field, message)| invalid(field, format!("{field}: {message}")))?;
    if let Some(agent) = &spec.agent_id
        && state.store.get_agent(&tenant, agent).await?.is_none()
    {
        return Err(invalid("agentId", format!("agentId: this tenant has no agent {agent}")));
    }
    let now = Timestamp::now();
    let stored = StoredChannel {
        tenant_id: tenant.clone(),
        id: channel.clone(),
        created_at: existing.as_ref().map(|c| c.created_at.clone()).unwrap_or_else(|| now.clone()),
        updated_at: now,
        spec,
    };
    let claims: Vec<String> = stored.claims().into_iter().map(|c| c.address).collect();
    let released: Vec<String> = existing
        .as_ref()
        .map(|old| old.claims().into_iter().map(|c| c.address).filter(|a| !claims.contains(a)).collect())
        .unwrap_or_default();
    if !state.store.put_channel(&stored, &released).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "address_taken",
            "another channel has this address (its phone number id, or its account and number)",
        ));
    }
    let status = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(stored.view())).into_response())
}

/// Deletes a channel (204): its address is free again, and its messages stay in their sessions.
#[utoipa::path(
    delete,
    path = "/agent/tenants/{tenantId}/channels/{channelId}",
    tag = "channels",
    params(("tenantId" = String, Path), ("channelId" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such channel"))
)]
async fn delete_channel(
    State(state): State<AppState>,
    scope: Scope,
    ChannelPath { tenant, channel }: ChannelPath,
) -> Result<StatusCode, ApiError> {
    scope.manages()?;
    if !state.store.delete_channel(&tenant, &channel).await? {
        return Err(channel_not_found(&channel));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /agent/tenants/{tenantId}/channels/{channelId}/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BusinessMessage {
    /// The customer's address on the channel (a WhatsApp `wa_id`, a phone number).
    to: String,
    #[serde(default)]
    text: Option<String>,
    /// A WhatsApp template (required outside the 24-hour service window).
    #[serde(default)]
    template: Option<Template>,
}

/// The business writes to a customer: the message is stored in the customer's session (role
/// `agent`, `metadata.source: "business"`) and sent through the outbox (202). On WhatsApp, a text
/// to a customer whose last message is more than 24 hours old is refused (422
/// `outside_service_window`): send a `template`.
#[utoipa::path(
    post,
    path = "/agent/tenants/{tenantId}/channels/{channelId}/messages",
    tag = "channels",
    params(("tenantId" = String, Path), ("channelId" = String, Path)),
    request_body = BusinessMessage,
    responses(
        (status = 202, body = Object, description = "Stored, and queued to send"),
        (status = 404, description = "No such channel"),
        (status = 422, description = "No text or template, or outside WhatsApp's service window"),
    )
)]
async fn send_message(
    State(state): State<AppState>,
    scope: Scope,
    ChannelPath { tenant, channel }: ChannelPath,
    body: Result<Json<BusinessMessage>, JsonRejection>,
) -> Result<Response, ApiError> {
    scope.manages()?;
    let Json(body) = body?;
    use crate::channels::worker::BusinessSendError as E;
    let sent = state
        .channels
        .send_business(&tenant, &channel, &body.to, body.text.as_deref(), body.template.as_ref(), "business")
        .await
        .map_err(|e| match e {
            E::NoChannel => channel_not_found(&channel),
            E::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_message", m),
            e @ E::OutsideWindow => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "outside_service_window", e.message())
            }
            E::Store(e) => e.into(),
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!(sent))).into_response())
}

/// Meta's verification of the webhook: `hub.mode=subscribe` with a channel's `verifyToken` answers
/// `hub.challenge` as plain text; anything else is a 403.
#[utoipa::path(
    get,
    path = "/channels/whatsapp/webhook",
    tag = "channels",
    responses((status = 200, description = "The challenge, as text/plain"), (status = 403, description = "No channel has this verify token"))
)]
async fn whatsapp_verify(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let forbidden = || ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the verification does not match a channel");
    let (Some("subscribe"), Some(token), Some(challenge)) =
        (query.get("hub.mode").map(String::as_str), query.get("hub.verify_token"), query.get("hub.challenge"))
    else {
        return Err(forbidden());
    };
    let Some(channel) = state.store.channel_at(&verify_address(token)).await? else { return Err(forbidden()) };
    if channel.spec.verify_token.as_deref() != Some(token.as_str()) {
        return Err(forbidden());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], challenge.clone()).into_response())
}

fn unrouted(kind: &'static str) {
    metrics::counter!("channel_unrouted_total", "type" => kind).increment(1);
}

fn bad_signature() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", "the webhook's signature does not match")
}

/// Meta's webhook: checked with `X-Hub-Signature-256` (the channel's `appSecret`, the channel found
/// by `metadata.phone_number_id`; a bad or missing signature is a 401 and stores nothing). Each
/// message is recorded before the 200, and answered on WhatsApp; statuses update the reply's
/// `metadata.delivery`. A number no channel has answers 200 and stores nothing.
#[utoipa::path(
    post,
    path = "/channels/whatsapp/webhook",
    tag = "channels",
    request_body(content = Object, content_type = "application/json", description = "Meta's webhook payload"),
    responses((status = 200, description = "Recorded"), (status = 401, description = "A bad or missing signature"))
)]
async fn whatsapp_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("invalid_body", "the webhook's body is not JSON"))?;
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    let mut routed = Vec::new();
    for change in whatsapp::changes(&payload) {
        match state.store.channel_at(&whatsapp_address(&change.phone_number_id)).await? {
            Some(channel) if channel.spec.kind == ChannelKind::Whatsapp => routed.push((channel, change)),
            _ => unrouted("whatsapp"),
        }
    }
    // Every channel a body is routed to has signed it (one app's numbers share its secret).
    for (channel, _) in &routed {
        if !whatsapp::signed(channel.spec.app_secret.as_deref().unwrap_or_default(), &body, signature) {
            return Err(bad_signature());
        }
    }
    for (channel, change) in &routed {
        state.channels.receive(channel, &change.messages).await?;
        for receipt in &change.receipts {
            state.channels.receipt(channel, receipt).await?;
        }
    }
    Ok(StatusCode::OK.into_response())
}

/// The URL Twilio signed: `PUBLIC_BASE_URL` and the request's path and query.
fn public_url(state: &AppState, uri: &axum::http::Uri) -> Result<String, ApiError> {
    let base = state.channels.config().public_base_url.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "PUBLIC_BASE_URL is not set: Twilio's signatures cannot be checked",
        )
    })?;
    Ok(format!("{base}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")))
}

/// The Twilio channel a webhook is for: found by its account and number, and named in the path.
async fn twilio_channel(
    state: &AppState,
    path_channel: &str,
    number: Option<&str>,
    form: &[(String, String)],
) -> Result<Option<StoredChannel>, ApiError> {
    let (Some(account), Some(number)) = (twilio::field(form, "AccountSid"), number) else { return Ok(None) };
    let found = state.store.channel_at(&twilio_address(account, number)).await?;
    Ok(found.filter(|c| c.id.as_str() == path_channel && c.spec.kind == ChannelKind::Twilio))
}

/// Twilio's webhook for an inbound SMS or WhatsApp message: checked with `X-Twilio-Signature` (over
/// `PUBLIC_BASE_URL` and the form), recorded, and answered at once with an empty TwiML `<Response/>`;
/// the reply goes out through the REST API.
#[utoipa::path(
    post,
    path = "/channels/twilio/{channelId}/webhook",
    tag = "channels",
    params(("channelId" = String, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "Twilio's form"),
    responses((status = 200, description = "Empty TwiML"), (status = 401, description = "A bad or missing signature"))
)]
async fn twilio_webhook(
    State(state): State<AppState>,
    Path(channel_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = twilio::form(&body);
    let twiml = || ([(header::CONTENT_TYPE, "text/xml")], twilio::EMPTY_TWIML).into_response();
    let Some(channel) = twilio_channel(&state, &channel_id, twilio::field(&form, "To"), &form).await? else {
        unrouted("twilio");
        return Ok(twiml());
    };
    let url = public_url(&state, &uri)?;
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    if !twilio::signed(channel.spec.auth_token.as_deref().unwrap_or_default(), &url, &form, signature) {
        return Err(bad_signature());
    }
    if let Some(message) = twilio::inbound(&form) {
        state.channels.receive(&channel, &[message]).await?;
    }
    Ok(twiml())
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    #[serde(rename = "messageId")]
    message_id: Option<String>,
}

/// Twilio's status callback for a reply (`MessageStatus`): recorded on the reply's
/// `metadata.delivery`; a final failure is a `channel.delivery_failed` event.
#[utoipa::path(
    post,
    path = "/channels/twilio/{channelId}/status",
    tag = "channels",
    params(("channelId" = String, Path), ("messageId" = Option<String>, Query)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "Twilio's form"),
    responses((status = 204, description = "Recorded"), (status = 401, description = "A bad or missing signature"))
)]
async fn twilio_status(
    State(state): State<AppState>,
    Path(channel_id): Path<String>,
    Query(query): Query<StatusQuery>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = twilio::form(&body);
    let Some(channel) = twilio_channel(&state, &channel_id, twilio::field(&form, "From"), &form).await? else {
        unrouted("twilio");
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let url = public_url(&state, &uri)?;
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    if !twilio::signed(channel.spec.auth_token.as_deref().unwrap_or_default(), &url, &form, signature) {
        return Err(bad_signature());
    }
    if let Some(receipt) = twilio::receipt(&form, query.message_id) {
        state.channels.receipt(&channel, &receipt).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The fields of an inbound-parse webhook: `multipart/form-data` (the common form) or
/// `application/x-www-form-urlencoded`.
async fn email_fields(request: axum::extract::Request) -> Result<Vec<(String, String)>, ApiError> {
    use axum::extract::FromRequest;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("multipart/form-data") {
        let body = axum::body::to_bytes(request.into_body(), 2 * 1024 * 1024)
            .await
            .map_err(|_| ApiError::bad_request("invalid_body", "the body could not be read"))?;
        return Ok(twilio::form(&body));
    }
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request("invalid_body", format!("the multipart form: {}", e.body_text()))
    };
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the multipart form: {}", e.body_text())))?;
    let mut fields = Vec::new();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        // Attachments are not read (only the text fields are).
        if field.file_name().is_some() {
            continue;
        }
        fields.push((name, field.text().await.map_err(bad)?));
    }
    Ok(fields)
}

/// An email for a channel's mailbox, from an inbound-parse service (`from`, `to`, `subject`,
/// `text`, `Message-ID`, `In-Reply-To`, `References`), authenticated by the channel's secret in the
/// URL: recorded before the 200 and answered by SMTP, threaded after it. An email for a mailbox no
/// channel has answers 200 and stores nothing.
#[utoipa::path(
    post,
    path = "/channels/email/{channelId}/inbound/{secret}",
    tag = "channels",
    params(("channelId" = String, Path), ("secret" = String, Path, description = "The channel's inboundSecret")),
    request_body(content = String, content_type = "multipart/form-data", description = "The parsed email"),
    responses((status = 200, description = "Recorded"), (status = 401, description = "A wrong secret"))
)]
async fn email_inbound(
    State(state): State<AppState>,
    Path((channel_id, secret)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let fields = email_fields(request).await?;
    let to = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case("to")).map(|(_, v)| v.clone()).unwrap_or_default();
    let mut found = None;
    for address in email::addresses(&to) {
        if let Some(c) = state.store.channel_at(&email_address(&address)).await?
            && c.id.as_str() == channel_id
            && c.spec.kind == ChannelKind::Email
        {
            found = Some(c);
            break;
        }
    }
    let Some(channel) = found else {
        unrouted("email");
        return Ok(StatusCode::OK.into_response());
    };
    let expected = channel.spec.inbound_secret.as_deref().unwrap_or_default();
    if expected.is_empty()
        || aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), secret.as_bytes()).is_err()
    {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_secret", "the webhook's secret does not match"));
    }
    if let Some(message) = email::inbound(&fields) {
        state.channels.receive(&channel, &[message]).await?;
    }
    Ok(StatusCode::OK.into_response())
}
