//! The `echo` provider: no network, deterministic. Its reply shows what it was given, so tests and
//! demos can see that history and context reach the model:
//! `Echo: <message> [history: N messages; context: key1, key2]`.

use std::time::Duration;

use super::{Deltas, ModelError, ModelReply, ModelRequest, Usage};

pub struct EchoProvider {
    chunk_delay: Duration,
}

impl EchoProvider {
    pub fn new(chunk_delay: Duration) -> Self {
        Self { chunk_delay }
    }

    pub fn reply_text(request: &ModelRequest) -> String {
        let keys = request
            .context
            .as_ref()
            .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "none".into());
        format!("Echo: {} [history: {} messages; context: {}]", request.message, request.history.len(), keys)
    }

    pub async fn complete(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        let text = Self::reply_text(request);
        if let Some(deltas) = deltas {
            // Several chunks, split on word boundaries, so clients see a real stream.
            let mut start = 0;
            for (i, _) in text.match_indices(' ').filter(|(i, _)| *i > 0) {
                if i - start >= 12 {
                    let _ = deltas.send(text[start..i].to_string());
                    start = i;
                    self.pause().await;
                }
            }
            let _ = deltas.send(text[start..].to_string());
        }
        let words = |s: &str| s.split_whitespace().count() as u64;
        let input = words(&request.message) + request.history.iter().map(|m| words(&m.content)).sum::<u64>();
        Ok(ModelReply {
            usage: Some(Usage { input_tokens: input, output_tokens: words(&text) }),
            text,
            model: "echo".into(),
        })
    }

    async fn pause(&self) {
        if self.chunk_delay.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(self.chunk_delay).await;
        }
    }
}
