//! The tenant's business API (`API_SERVER_URL`): `/resources/{resourceType}` and
//! `/resources/{resourceType}/{resourceId}`, with `Authorization: Bearer {API_SERVER_KEY}` and the
//! turn's `x-tenant-id`, `x-user-id` and `x-location-id`. The model supplies only the resource type,
//! id, filters and data; it never chooses the host, the path outside `/resources`, or the headers.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ToolContext, ToolError, ToolSpec};
use crate::config::Secret;

/// Characters escaped in a path segment: everything but unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Argument names the model may not use anywhere: they would choose the tenant, user, location,
/// credentials or host of the call.
const FORBIDDEN_KEYS: [&str; 10] = [
    "tenantid",
    "xtenantid",
    "xuserid",
    "xlocationid",
    "authorization",
    "host",
    "url",
    "baseurl",
    "apiserverurl",
    "apikey",
];

/// A tool declared in `AGENT_TOOLS_FILE`: an HTTP call under `API_SERVER_URL`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FileTool {
    pub name: String,
    pub description: String,
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// A path under `API_SERVER_URL`, with `{argument}` placeholders, for example `/bookings/{bookingId}/confirm`.
    pub path: String,
    /// JSON schema of the arguments.
    #[serde(default = "empty_schema")]
    pub parameters: Value,
}

fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

#[derive(Debug, Deserialize)]
struct ToolsFile {
    tools: Vec<FileTool>,
}

/// Reads `AGENT_TOOLS_FILE` (YAML or JSON, which is YAML too).
pub fn read_tools_file(path: &std::path::Path) -> Result<Vec<FileTool>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: ToolsFile = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for t in &file.tools {
        if !matches!(t.method.to_ascii_uppercase().as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
            return Err(format!("tool {}: method {} is not one of GET, POST, PUT, PATCH, DELETE", t.name, t.method));
        }
        if !t.path.starts_with('/') || t.path.contains("..") || t.path.contains("://") {
            return Err(format!("tool {}: path must be an absolute path under API_SERVER_URL", t.name));
        }
        if !valid_name(&t.name) {
            return Err(format!("tool {}: names are 1-64 of a-z A-Z 0-9 _ -", t.name));
        }
    }
    Ok(file.tools)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A call to make: method, path under `API_SERVER_URL`, query pairs, JSON body.
type ApiRequest = (reqwest::Method, String, Vec<(String, String)>, Option<Value>);

pub struct BusinessApi {
    http: reqwest::Client,
    base: String,
    key: Option<Secret>,
    /// `API_RESOURCE_TYPES`: the types the agent may touch; `None` allows reads of any type only.
    types: Option<Vec<String>>,
    file_tools: Vec<FileTool>,
}

fn arg_error(msg: impl Into<String>) -> ToolError {
    ToolError(msg.into())
}

fn refuse_forbidden(value: &Value) -> Result<(), ToolError> {
    match value {
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let norm: String = k.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
            if FORBIDDEN_KEYS.contains(&norm.as_str()) {
                return Err(arg_error(format!(
                    "argument {k:?} is not allowed: the tenant, user, location, credentials and host of a call are fixed by the server"
                )));
            }
            refuse_forbidden(v)
        }),
        Value::Array(items) => items.iter().try_for_each(refuse_forbidden),
        _ => Ok(()),
    }
}

/// Words that, in a query parameter's name, would let the model choose whose data a call reaches or
/// with which credentials (the server fixes those in headers).
const IDENTITY_WORDS: [&str; 12] = [
    "tenant",
    "user",
    "organization",
    "location",
    "account",
    "auth",
    "key",
    "token",
    "secret",
    "password",
    "host",
    "url",
];

/// A query parameter name the model may use: a plain field name (letters, digits, `_`; no `-`, so no
/// header-like names), naming no tenant, user, location, credential or host.
fn query_name(name: &str) -> Result<(), ToolError> {
    let plain = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let lower = name.to_ascii_lowercase();
    if !plain || IDENTITY_WORDS.iter().any(|w| lower.contains(w)) {
        return Err(arg_error(format!(
            "filter {name:?} is not allowed: filters are plain field names, and the tenant, user, location and credentials of a call are fixed by the server"
        )));
    }
    Ok(())
}

/// Query parameters from the model's arguments: names checked (unless the operator declared them
/// in a tools-file schema), values strings, numbers or booleans.
fn query(args: &Map<String, Value>, declared: Option<&Map<String, Value>>) -> Result<Vec<(String, String)>, ToolError> {
    args.iter()
        .map(|(k, v)| {
            if !declared.is_some_and(|d| d.contains_key(k)) {
                query_name(k)?;
            }
            Ok((k.clone(), query_value(v)?))
        })
        .collect()
}

/// Refuses arguments the tool's schema does not offer (its `properties`; none declared: any).
fn offered(args: &Value, schema: &Value) -> Result<(), ToolError> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Ok(()) };
    match args.as_object().and_then(|a| a.keys().find(|k| !properties.contains_key(*k))) {
        Some(extra) => Err(arg_error(format!("argument {extra:?} is not one this tool takes"))),
        None => Ok(()),
    }
}

fn string_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, ToolError> {
    args.get(name).and_then(Value::as_str).ok_or_else(|| arg_error(format!("argument {name} (a string) is required")))
}

fn object_arg(args: &Value, name: &str) -> Result<Map<String, Value>, ToolError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(arg_error(format!("argument {name} must be an object"))),
    }
}

/// A resource id: 1-128 printable characters, not `.` or `..`; escaped as one path segment.
fn segment(value: &str, what: &str) -> Result<String, ToolError> {
    if value.is_empty() || value.chars().count() > 128 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(arg_error(format!("{what} must be 1-128 printable characters")));
    }
    if value == "." || value == ".." {
        return Err(arg_error(format!("{what} {value:?} is not allowed")));
    }
    Ok(utf8_percent_encode(value, SEGMENT).to_string())
}

fn query_value(v: &Value) -> Result<String, ToolError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(arg_error("filters must be strings, numbers or booleans")),
    }
}

impl BusinessApi {
    pub fn new(base: String, key: Option<Secret>, types: Option<Vec<String>>, file_tools: Vec<FileTool>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client with default TLS");
        Self { http, base: base.trim_end_matches('/').to_string(), key, types, file_tools }
    }

    /// A tenant's business API (an agent's `businessApi.url`): its calls reach only public
    /// addresses, checked after DNS at connect time, unless `ALLOW_PRIVATE_URLS=true`.
    pub fn for_tenant(
        base: String,
        key: Option<Secret>,
        types: Option<Vec<String>>,
        file_tools: Vec<FileTool>,
        allow_private: bool,
    ) -> Self {
        let builder = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        let http = crate::outbound::guarded(builder, allow_private).build().expect("HTTP client with default TLS");
        Self { http, base: base.trim_end_matches('/').to_string(), key, types, file_tools }
    }

    fn writes_allowed(&self) -> bool {
        self.types.is_some()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let type_schema = match &self.types {
            Some(types) => json!({"type": "string", "enum": types, "description": "The kind of resource"}),
            None => json!({"type": "string", "description": "The kind of resource, for example appointments"}),
        };
        let spec = |name: &str, description: &str, properties: Value, required: &[&str]| ToolSpec {
            name: name.into(),
            description: description.into(),
            parameters: json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false}),
        };
        let mut specs = vec![
            spec(
                "list_resources",
                "List the business's resources of one type, optionally filtered (for example by date or status).",
                json!({"resourceType": type_schema, "filters": {"type": "object", "description": "Query filters: names to strings or numbers"}}),
                &["resourceType"],
            ),
            spec(
                "read_resource",
                "Read one resource by its id.",
                json!({"resourceType": type_schema, "resourceId": {"type": "string"}}),
                &["resourceType", "resourceId"],
            ),
        ];
        if self.writes_allowed() {
            specs.push(spec(
                "create_resource",
                "Create a resource. Needs the user's approval before it runs.",
                json!({"resourceType": type_schema, "data": {"type": "object"}}),
                &["resourceType", "data"],
            ));
            specs.push(spec(
                "update_resource",
                "Change a resource: `partial: true` changes only the given fields (PATCH), otherwise replaces it (PUT). Needs approval.",
                json!({"resourceType": type_schema, "resourceId": {"type": "string"}, "data": {"type": "object"}, "partial": {"type": "boolean"}}),
                &["resourceType", "resourceId", "data"],
            ));
            specs.push(spec(
                "delete_resource",
                "Delete a resource. Needs approval.",
                json!({"resourceType": type_schema, "resourceId": {"type": "string"}}),
                &["resourceType", "resourceId"],
            ));
        }
        for t in &self.file_tools {
            specs.push(ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            });
        }
        specs
    }

    /// Whether this is one of the tools `specs` offers.
    pub fn has(&self, name: &str) -> bool {
        match name {
            "list_resources" | "read_resource" => true,
            "create_resource" | "update_resource" | "delete_resource" => self.writes_allowed(),
            other => self.file_tools.iter().any(|t| t.name == other),
        }
    }

    /// Whether a tool changes the business's data.
    pub fn is_write(&self, name: &str) -> bool {
        match name {
            "list_resources" | "read_resource" => false,
            "create_resource" | "update_resource" | "delete_resource" => true,
            other => {
                self.file_tools.iter().find(|t| t.name == other).is_none_or(|t| !t.method.eq_ignore_ascii_case("GET"))
            }
        }
    }

    fn resource_type(&self, args: &Value, write: bool) -> Result<String, ToolError> {
        let t = string_arg(args, "resourceType")?;
        if !(t.len() <= 64 && t.starts_with(|c: char| c.is_ascii_alphabetic()) && valid_name(t)) {
            return Err(arg_error(format!("resourceType {t:?} is not a valid resource type")));
        }
        match &self.types {
            Some(types) if !types.iter().any(|x| x == t) => {
                Err(arg_error(format!("resourceType {t:?} is not one of API_RESOURCE_TYPES ({})", types.join(", "))))
            }
            None if write => Err(arg_error("changing resources is not enabled (API_RESOURCE_TYPES is not set)")),
            _ => Ok(t.to_string()),
        }
    }

    /// Runs a tool; the JSON the business API answered.
    pub async fn call(&self, name: &str, args: &Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        if !args.is_object() {
            return Err(arg_error("arguments must be a JSON object"));
        }
        refuse_forbidden(args)?;
        if let Some(spec) = self.specs().into_iter().find(|s| s.name == name) {
            offered(args, &spec.parameters)?;
        }
        let (method, path, query, body) = match name {
            "list_resources" => {
                let t = self.resource_type(args, false)?;
                (reqwest::Method::GET, format!("/resources/{t}"), query(&object_arg(args, "filters")?, None)?, None)
            }
            "read_resource" => {
                let t = self.resource_type(args, false)?;
                let id = segment(string_arg(args, "resourceId")?, "resourceId")?;
                (reqwest::Method::GET, format!("/resources/{t}/{id}"), Vec::new(), None)
            }
            "create_resource" => {
                let t = self.resource_type(args, true)?;
                (
                    reqwest::Method::POST,
                    format!("/resources/{t}"),
                    Vec::new(),
                    Some(Value::Object(object_arg(args, "data")?)),
                )
            }
            "update_resource" => {
                let t = self.resource_type(args, true)?;
                let id = segment(string_arg(args, "resourceId")?, "resourceId")?;
                let method = if args.get("partial").and_then(Value::as_bool).unwrap_or(false) {
                    reqwest::Method::PATCH
                } else {
                    reqwest::Method::PUT
                };
                (method, format!("/resources/{t}/{id}"), Vec::new(), Some(Value::Object(object_arg(args, "data")?)))
            }
            "delete_resource" => {
                let t = self.resource_type(args, true)?;
                let id = segment(string_arg(args, "resourceId")?, "resourceId")?;
                (reqwest::Method::DELETE, format!("/resources/{t}/{id}"), Vec::new(), None)
            }
            other => self.file_tool_request(other, args)?,
        };
        self.send(method, &path, &query, body, ctx).await
    }

    fn file_tool_request(&self, name: &str, args: &Value) -> Result<ApiRequest, ToolError> {
        let tool = self
            .file_tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| arg_error(format!("no tool named {name}")))?;
        let mut rest = args.as_object().cloned().unwrap_or_default();
        let mut path = String::new();
        let mut template = tool.path.as_str();
        while let Some(open) = template.find('{') {
            let close = template[open..].find('}').map(|c| open + c).ok_or_else(|| arg_error("bad path template"))?;
            path.push_str(&template[..open]);
            let param = &template[open + 1..close];
            let value = rest.remove(param).ok_or_else(|| arg_error(format!("argument {param} is required")))?;
            path.push_str(&segment(&query_value(&value)?, param)?);
            template = &template[close + 1..];
        }
        path.push_str(template);
        let method: reqwest::Method = tool.method.to_ascii_uppercase().parse().map_err(|_| arg_error("bad method"))?;
        if method == reqwest::Method::GET || method == reqwest::Method::DELETE {
            let declared = tool.parameters.get("properties").and_then(Value::as_object);
            Ok((method, path, query(&rest, declared)?, None))
        } else {
            Ok((method, path, Vec::new(), Some(Value::Object(rest))))
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Value>,
        ctx: &ToolContext,
    ) -> Result<Value, ToolError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .query(query)
            .header("x-tenant-id", ctx.tenant.as_str())
            .header("x-user-id", ctx.user.as_str());
        if let Some(l) = &ctx.location {
            req = req.header("x-location-id", l.as_str());
        }
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.map_err(|e| {
            tracing::warn!(error = %e.without_url(), "business API unreachable");
            ToolError(format!("the business API could not be reached ({method} {path})"))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let text = match &self.key {
            Some(k) if !k.expose().is_empty() => text.replace(k.expose(), "***"),
            _ => text,
        };
        let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let detail: String = value.to_string().chars().take(500).collect();
            let detail = crate::redact::in_text(&detail, &self.base);
            return Err(ToolError(format!("the business API answered {status} to {method} {path}: {detail}")));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_keys_are_refused_at_any_depth() {
        assert!(refuse_forbidden(&json!({"resourceType": "a", "filters": {"X-Tenant-Id": "b"}})).is_err());
        assert!(refuse_forbidden(&json!({"data": [{"tenant_id": "b"}]})).is_err());
        assert!(refuse_forbidden(&json!({"data": {"customerId": "c", "locationId": "l"}})).is_ok());
    }

    #[test]
    fn filters_are_plain_field_names_that_choose_no_identity() {
        for name in
            ["tenant", "tenants", "organization", "x-tenant", "userId", "X-Api-Key", "api_key", "locationId", "a.b"]
        {
            assert!(query_name(name).is_err(), "{name}");
        }
        for name in ["date", "status", "customerId", "from_date"] {
            assert!(query_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn arguments_outside_the_schema_are_refused() {
        let schema = json!({"properties": {"resourceType": {}, "filters": {}}});
        assert!(offered(&json!({"resourceType": "a", "filters": {}}), &schema).is_ok());
        assert!(offered(&json!({"resourceType": "a", "tenant": "b"}), &schema).is_err());
    }

    #[test]
    fn ids_are_one_escaped_segment() {
        assert_eq!(segment("a/b?c", "id").unwrap(), "a%2Fb%3Fc");
        assert!(segment("..", "id").is_err());
        assert!(segment("a b", "id").is_err());
    }
}
