//! Amazon Bedrock through its Converse and ConverseStream APIs, with the same AWS credentials and
//! region as DynamoDB (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME` points it elsewhere). Throttling and 5xx
//! are retried by the SDK's standard retry policy.

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ConversationRole, ConverseOutput, ConverseStreamOutput, Message,
    SystemContentBlock, TokenUsage,
};

use super::{Deltas, ModelError, ModelReply, ModelRequest, Usage, chat_messages};

pub struct BedrockProvider {
    client: Client,
    model: String,
}

impl BedrockProvider {
    pub fn new(config: &aws_config::SdkConfig, model: String) -> Self {
        Self { client: Client::new(config), model }
    }

    fn failed(&self, why: impl std::fmt::Display) -> ModelError {
        ModelError::Failed(format!("bedrock model {}: {why}", self.model))
    }

    fn sdk_error<E, R>(&self, e: SdkError<E, R>) -> ModelError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match &e {
            SdkError::ServiceError(se) => self.failed(format!(
                "{}: {}",
                se.err().code().unwrap_or("error"),
                se.err().message().unwrap_or_default()
            )),
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                tracing::warn!(error = %DisplayErrorContext(&e), "bedrock unreachable");
                self.failed("cannot connect to the Bedrock endpoint")
            }
            _ => {
                tracing::warn!(error = %DisplayErrorContext(&e), "bedrock request failed");
                self.failed("the request could not be made (check AWS region and credentials)")
            }
        }
    }

    /// System blocks and a conversation that alternates user and assistant, starting with the user
    /// (Bedrock refuses anything else): consecutive messages of one role are joined.
    fn conversation(&self, request: &ModelRequest) -> Result<(Vec<SystemContentBlock>, Vec<Message>), ModelError> {
        let mut system = Vec::new();
        let mut turns: Vec<(ConversationRole, String)> = Vec::new();
        for (role, text) in chat_messages(request) {
            let role = match role {
                "system" => {
                    system.push(SystemContentBlock::Text(text));
                    continue;
                }
                "assistant" => ConversationRole::Assistant,
                _ => ConversationRole::User,
            };
            if turns.is_empty() && role == ConversationRole::Assistant {
                continue;
            }
            match turns.last_mut() {
                Some((last, joined)) if *last == role => {
                    joined.push_str("\n\n");
                    joined.push_str(&text);
                }
                _ => turns.push((role, text)),
            }
        }
        let messages = turns
            .into_iter()
            .map(|(role, text)| Message::builder().role(role).content(ContentBlock::Text(text)).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))?;
        Ok((system, messages))
    }

    pub async fn complete(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        let (system, messages) = self.conversation(request)?;
        match deltas {
            None => {
                let out = self
                    .client
                    .converse()
                    .model_id(&self.model)
                    .set_system(Some(system))
                    .set_messages(Some(messages))
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                let text = match out.output() {
                    Some(ConverseOutput::Message(m)) => {
                        m.content().iter().filter_map(|c| c.as_text().ok().cloned()).collect::<Vec<_>>().join("")
                    }
                    _ => return Err(self.failed("the answer has no message")),
                };
                Ok(ModelReply { text, model: self.model.clone(), usage: out.usage().map(usage) })
            }
            Some(deltas) => {
                let mut out = self
                    .client
                    .converse_stream()
                    .model_id(&self.model)
                    .set_system(Some(system))
                    .set_messages(Some(messages))
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                let mut reply = ModelReply { text: String::new(), model: self.model.clone(), usage: None };
                loop {
                    match out.stream.recv().await {
                        Ok(Some(ConverseStreamOutput::ContentBlockDelta(d))) => {
                            if let Some(ContentBlockDelta::Text(text)) = d.delta() {
                                reply.text.push_str(text);
                                let _ = deltas.send(text.clone());
                            }
                        }
                        Ok(Some(ConverseStreamOutput::Metadata(m))) => reply.usage = m.usage().map(usage),
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(reply),
                        Err(e) => return Err(self.sdk_error(e)),
                    }
                }
            }
        }
    }
}

fn usage(u: &TokenUsage) -> Usage {
    Usage { input_tokens: u.input_tokens().max(0) as u64, output_tokens: u.output_tokens().max(0) as u64 }
}
