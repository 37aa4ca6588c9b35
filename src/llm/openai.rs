//! Any OpenAI-compatible Chat Completions server (OpenAI, OpenRouter, vLLM, Ollama, LiteLLM).
//! 429 and 5xx answers are retried with exponential backoff and jitter within the turn's timeout.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::config::Secret;

use super::{Deltas, ModelError, ModelReply, ModelRequest, Usage, chat_messages};

pub struct OpenAiProvider {
    http: reqwest::Client,
    api_key: Option<Secret>,
    base_url: String,
    model: String,
    timeout: Duration,
}

fn failed(base_url: &str, why: impl std::fmt::Display) -> ModelError {
    ModelError::Failed(format!("openai provider at {base_url}: {why}"))
}

impl OpenAiProvider {
    pub fn new(api_key: Option<Secret>, base_url: String, model: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client with default TLS");
        Self { http, api_key, base_url, model, timeout }
    }

    pub fn not_ready(&self) -> Option<String> {
        (self.api_key.is_none() && self.base_url.contains("api.openai.com"))
            .then(|| "OPENAI_API_KEY is not set for the public OpenAI API".to_string())
    }

    pub async fn complete(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        let messages: Vec<Value> = chat_messages(request)
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        let mut body = json!({"model": self.model, "messages": messages});
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
                    return Err(failed(&self.base_url, format!("HTTP {status}: {detail}")));
                }
                Err(e) if e.is_connect() || e.is_timeout() => (format!("cannot connect ({e})"), None),
                Err(e) => return Err(failed(&self.base_url, e)),
            };
            let (why, hinted) = retry_after;
            let jitter = Duration::from_millis(
                u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .subsec_nanos(),
                ) % (backoff.as_millis() as u64 / 2 + 1),
            );
            let wait = hinted.unwrap_or(backoff) + jitter;
            if Instant::now() + wait >= deadline {
                return Err(failed(&self.base_url, format!("{why}; gave up retrying within the timeout")));
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn read_whole(&self, response: reqwest::Response) -> Result<ModelReply, ModelError> {
        let v: Value = response.json().await.map_err(|e| failed(&self.base_url, format!("unreadable answer: {e}")))?;
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| failed(&self.base_url, "the answer has no choices[0].message.content"))?
            .to_string();
        Ok(ModelReply {
            text,
            model: v["model"].as_str().unwrap_or(&self.model).to_string(),
            usage: usage(&v["usage"]),
        })
    }

    async fn read_stream(&self, response: reqwest::Response, deltas: &Deltas) -> Result<ModelReply, ModelError> {
        let mut body = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut reply = ModelReply { text: String::new(), model: self.model.clone(), usage: None };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| failed(&self.base_url, format!("stream broke: {e}")))?;
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
                    return Ok(reply);
                }
                let event: Value =
                    serde_json::from_str(data).map_err(|e| failed(&self.base_url, format!("bad stream event: {e}")))?;
                if let Some(m) = event["model"].as_str() {
                    reply.model = m.to_string();
                }
                if let Some(u) = usage(&event["usage"]) {
                    reply.usage = Some(u);
                }
                if let Some(text) = event["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                    reply.text.push_str(text);
                    let _ = deltas.send(text.to_string());
                }
            }
        }
        Ok(reply)
    }
}

fn usage(v: &Value) -> Option<Usage> {
    Some(Usage { input_tokens: v["prompt_tokens"].as_u64()?, output_tokens: v["completion_tokens"].as_u64()? })
}
