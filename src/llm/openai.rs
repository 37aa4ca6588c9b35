//! Any OpenAI-compatible Chat Completions server (OpenAI, OpenRouter, vLLM, Ollama, LiteLLM).
//! 429 and 5xx answers are retried with exponential backoff and jitter within the turn's timeout.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::config::Secret;

use super::{Deltas, ModelError, ModelReply, ModelRequest, Usage, chat_messages};
use crate::tools::ToolCall;

/// The most tool calls one model answer may ask for.
const MAX_TOOL_CALLS: usize = 128;

pub struct OpenAiProvider {
    http: reqwest::Client,
    api_key: Option<Secret>,
    base_url: String,
    model: String,
    timeout: Duration,
}

impl OpenAiProvider {
    pub fn new(api_key: Option<Secret>, base_url: String, model: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client with default TLS");
        Self { http, api_key, base_url, model, timeout }
    }

    /// An error a client may see and the log may keep: the provider named by its redacted URL, and
    /// no credential of it (a reqwest error quotes the full URL).
    fn failed(&self, why: impl std::fmt::Display) -> ModelError {
        let text = format!("openai provider at {}: {why}", self.base_url);
        let secrets: Vec<&str> = self.api_key.iter().map(|k| k.expose()).collect();
        ModelError::Failed(super::mask_secrets(&crate::redact::in_text(&text, &self.base_url), &secrets))
    }

    pub fn not_ready(&self) -> Option<String> {
        (self.api_key.is_none() && self.base_url.contains("api.openai.com"))
            .then(|| "OPENAI_API_KEY is not set for the public OpenAI API".to_string())
    }

    pub async fn complete(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        let mut messages: Vec<Value> = chat_messages(request)
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        for step in &request.steps {
            let calls: Vec<Value> = step
                .calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}}))
                .collect();
            let text = if step.text.is_empty() { Value::Null } else { json!(step.text) };
            messages.push(json!({"role": "assistant", "content": text, "tool_calls": calls}));
            for r in &step.results {
                messages.push(json!({"role": "tool", "tool_call_id": r.call_id, "content": r.content}));
            }
        }
        let mut body = json!({"model": self.model, "messages": messages});
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = request.max_output_tokens {
            body["max_completion_tokens"] = json!(m);
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
                .collect();
            body["tools"] = json!(tools);
        }
        if deltas.is_some() {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let response = self.send_with_retries(&body).await?;
        match deltas {
            None => self.read_whole(response).await,
            Some(deltas) => self.read_stream(response, deltas).await,
        }
    }

    async fn send_with_retries(&self, body: &Value) -> Result<reqwest::Response, ModelError> {
        let deadline = Instant::now() + self.timeout;
        let url = format!("{}/chat/completions", self.base_url);
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut req = self.http.post(&url).json(body);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key.expose());
            }
            let result = req.send().await;
            let retry_after = match result {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    let status = r.status();
                    let hinted = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    tracing::warn!(%status, "model provider asked us to retry");
                    (status.to_string(), hinted)
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let detail = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or_else(|| text.chars().take(200).collect());
                    // The provider's own words go to the log, masked (a provider may echo the
                    // request, key included); the client learns the status only.
                    let secrets: Vec<&str> = self.api_key.iter().map(|k| k.expose()).collect();
                    let detail = super::mask_secrets(&crate::redact::in_text(&detail, &self.base_url), &secrets);
                    tracing::warn!(%status, provider = %crate::redact::url(&self.base_url), detail, "model provider refused the request");
                    return Err(self.failed(format!("HTTP {status}")));
                }
                Err(e) if e.is_connect() || e.is_timeout() => (format!("cannot connect ({e})"), None),
                Err(e) => return Err(self.failed(e.without_url())),
            };
            let (why, hinted) = retry_after;
            let jitter = (backoff / 2).mul_f64(crate::random::fraction());
            let wait = hinted.unwrap_or(backoff) + jitter;
            if Instant::now() + wait >= deadline {
                return Err(self.failed(format!("{why}; gave up retrying within the timeout")));
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn read_whole(&self, response: reqwest::Response) -> Result<ModelReply, ModelError> {
        let v: Value = response.json().await.map_err(|e| self.failed(format!("unreadable answer: {e}")))?;
        let message = &v["choices"][0]["message"];
        let tool_calls: Vec<ToolCall> =
            message["tool_calls"].as_array().map(|calls| calls.iter().map(parse_call).collect()).unwrap_or_default();
        let text = match message["content"].as_str() {
            Some(t) => t.to_string(),
            None if !tool_calls.is_empty() => String::new(),
            None => return Err(self.failed("the answer has no choices[0].message.content")),
        };
        Ok(ModelReply {
            text,
            model: v["model"].as_str().unwrap_or(&self.model).to_string(),
            usage: usage(&v["usage"]),
            tool_calls,
        })
    }

    async fn read_stream(&self, response: reqwest::Response, deltas: &Deltas) -> Result<ModelReply, ModelError> {
        let mut body = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut reply =
            ModelReply { text: String::new(), model: self.model.clone(), usage: None, tool_calls: Vec::new() };
        // Tool calls arrive in pieces: by index, an id and a name first, then argument fragments.
        let mut calls: Vec<(String, String, String)> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.failed(format!("stream broke: {e}")))?;
            buffer.extend_from_slice(&chunk);
            // Server-sent events: one `data:` line per event; chunks may split lines anywhere.
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    reply.tool_calls = finish_calls(calls);
                    return Ok(reply);
                }
                let event: Value =
                    serde_json::from_str(data).map_err(|e| self.failed(format!("bad stream event: {e}")))?;
                if let Some(m) = event["model"].as_str() {
                    reply.model = m.to_string();
                }
                if let Some(u) = usage(&event["usage"]) {
                    reply.usage = Some(u);
                }
                for piece in event["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    // The index sizes our list: a provider's number is bounded before it is trusted.
                    let index = piece["index"].as_u64().unwrap_or(0) as usize;
                    if index >= MAX_TOOL_CALLS {
                        return Err(self.failed(format!("a tool call index of {index} (at most {MAX_TOOL_CALLS})")));
                    }
                    if calls.len() <= index {
                        calls.resize(index + 1, Default::default());
                    }
                    let call = &mut calls[index];
                    if let Some(id) = piece["id"].as_str() {
                        call.0 = id.to_string();
                    }
                    if let Some(name) = piece["function"]["name"].as_str() {
                        call.1.push_str(name);
                    }
                    if let Some(args) = piece["function"]["arguments"].as_str() {
                        call.2.push_str(args);
                    }
                }
                if let Some(text) = event["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                    reply.text.push_str(text);
                    deltas.send(text.to_string());
                }
            }
        }
        reply.tool_calls = finish_calls(calls);
        Ok(reply)
    }
}

fn parse_call(c: &Value) -> ToolCall {
    let arguments = c["function"]["arguments"]
        .as_str()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| c["function"]["arguments"].clone());
    ToolCall {
        id: c["id"].as_str().unwrap_or_default().to_string(),
        name: c["function"]["name"].as_str().unwrap_or_default().to_string(),
        arguments,
    }
}

fn finish_calls(calls: Vec<(String, String, String)>) -> Vec<ToolCall> {
    calls
        .into_iter()
        .filter(|(_, name, _)| !name.is_empty())
        .map(|(id, name, args)| ToolCall {
            id,
            name,
            arguments: serde_json::from_str(&args).unwrap_or(Value::String(args)),
        })
        .collect()
}

fn usage(v: &Value) -> Option<Usage> {
    Some(Usage { input_tokens: v["prompt_tokens"].as_u64()?, output_tokens: v["completion_tokens"].as_u64()? })
}
