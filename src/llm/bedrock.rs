//! Amazon Bedrock through its Converse and ConverseStream APIs, with the same AWS credentials and
//! region as DynamoDB (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME` points it elsewhere). Throttling and 5xx
//! are retried by the SDK's standard retry policy.

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ContentBlockStart, ConversationRole, ConverseOutput, ConverseStreamOutput,
    Message, SystemContentBlock, TokenUsage, Tool, ToolConfiguration, ToolInputSchema, ToolResultBlock,
    ToolResultContentBlock, ToolResultStatus, ToolSpecification, ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use super::{Deltas, ModelError, ModelReply, ModelRequest, Usage, chat_messages};
use crate::tools::ToolCall;

pub struct BedrockProvider {
    client: Client,
    model: String,
}

impl BedrockProvider {
    pub fn new(config: &aws_config::SdkConfig, model: String) -> Self {
        Self { client: Client::new(config), model }
    }

    fn failed(&self, why: impl std::fmt::Display) -> ModelError {
        ModelError::Failed(super::mask_secrets(&format!("bedrock model {}: {why}", self.model), &[]))
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
                tracing::warn!(error = %crate::redact::in_text(&DisplayErrorContext(&e).to_string(), ""), "bedrock unreachable");
                self.failed("cannot connect to the Bedrock endpoint")
            }
            _ => {
                tracing::warn!(error = %crate::redact::in_text(&DisplayErrorContext(&e).to_string(), ""), "bedrock request failed");
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
        let mut messages = turns
            .into_iter()
            .map(|(role, text)| Message::builder().role(role).content(ContentBlock::Text(text)).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))?;
        for step in &request.steps {
            let mut asked = Message::builder().role(ConversationRole::Assistant);
            if !step.text.is_empty() {
                asked = asked.content(ContentBlock::Text(step.text.clone()));
            }
            for c in &step.calls {
                let block = ToolUseBlock::builder()
                    .tool_use_id(&c.id)
                    .name(&c.name)
                    .input(to_document(&c.arguments))
                    .build()
                    .map_err(|e| self.failed(e))?;
                asked = asked.content(ContentBlock::ToolUse(block));
            }
            messages.push(asked.build().map_err(|e| self.failed(e))?);
            let mut answered = Message::builder().role(ConversationRole::User);
            for r in &step.results {
                let block = ToolResultBlock::builder()
                    .tool_use_id(&r.call_id)
                    .content(ToolResultContentBlock::Text(r.content.clone()))
                    .status(if r.is_error { ToolResultStatus::Error } else { ToolResultStatus::Success })
                    .build()
                    .map_err(|e| self.failed(e))?;
                answered = answered.content(ContentBlock::ToolResult(block));
            }
            messages.push(answered.build().map_err(|e| self.failed(e))?);
        }
        Ok((system, messages))
    }

    fn tool_config(&self, request: &ModelRequest) -> Result<Option<ToolConfiguration>, ModelError> {
        if request.tools.is_empty() {
            return Ok(None);
        }
        let mut config = ToolConfiguration::builder();
        for t in &request.tools {
            let spec = ToolSpecification::builder()
                .name(&t.name)
                .description(&t.description)
                .input_schema(ToolInputSchema::Json(to_document(&t.parameters)))
                .build()
                .map_err(|e| self.failed(e))?;
            config = config.tools(Tool::ToolSpec(spec));
        }
        config.build().map(Some).map_err(|e| self.failed(e))
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
                    .set_tool_config(self.tool_config(request)?)
                    .set_inference_config(inference(request))
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                let Some(ConverseOutput::Message(m)) = out.output() else {
                    return Err(self.failed("the answer has no message"));
                };
                let text = m.content().iter().filter_map(|c| c.as_text().ok().cloned()).collect::<Vec<_>>().join("");
                let tool_calls = m
                    .content()
                    .iter()
                    .filter_map(|c| c.as_tool_use().ok())
                    .map(|t| ToolCall {
                        id: t.tool_use_id().to_string(),
                        name: t.name().to_string(),
                        arguments: from_document(t.input()),
                    })
                    .collect();
                Ok(ModelReply { text, model: self.model.clone(), usage: out.usage().map(usage), tool_calls })
            }
            Some(deltas) => {
                let mut out = self
                    .client
                    .converse_stream()
                    .model_id(&self.model)
                    .set_system(Some(system))
                    .set_messages(Some(messages))
                    .set_tool_config(self.tool_config(request)?)
                    .set_inference_config(inference(request))
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                let mut reply =
                    ModelReply { text: String::new(), model: self.model.clone(), usage: None, tool_calls: Vec::new() };
                // Tool uses by content block: id, name, input fragments.
                let mut uses: Vec<(i32, String, String, String)> = Vec::new();
                loop {
                    match out.stream.recv().await {
                        Ok(Some(ConverseStreamOutput::ContentBlockStart(s))) => {
                            if let Some(ContentBlockStart::ToolUse(t)) = s.start() {
                                uses.push((
                                    s.content_block_index(),
                                    t.tool_use_id().to_string(),
                                    t.name().to_string(),
                                    String::new(),
                                ));
                            }
                        }
                        Ok(Some(ConverseStreamOutput::ContentBlockDelta(d))) => match d.delta() {
                            Some(ContentBlockDelta::Text(text)) => {
                                reply.text.push_str(text);
                                deltas.send(text.clone());
                            }
                            Some(ContentBlockDelta::ToolUse(u)) => {
                                if let Some(entry) = uses.iter_mut().find(|e| e.0 == d.content_block_index()) {
                                    entry.3.push_str(u.input());
                                }
                            }
                            _ => {}
                        },
                        Ok(Some(ConverseStreamOutput::Metadata(m))) => reply.usage = m.usage().map(usage),
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            reply.tool_calls = uses
                                .into_iter()
                                .map(|(_, id, name, input)| ToolCall {
                                    id,
                                    name,
                                    arguments: serde_json::from_str(&input)
                                        .unwrap_or(Value::Object(Default::default())),
                                })
                                .collect();
                            return Ok(reply);
                        }
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

fn to_document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or_default())
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(map.iter().map(|(k, v)| (k.clone(), to_document(v))).collect()),
    }
}

fn from_document(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(from_document).collect()),
        Document::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), from_document(v))).collect()),
    }
}

/// The agent's temperature and output limit, when it sets them.
fn inference(request: &ModelRequest) -> Option<aws_sdk_bedrockruntime::types::InferenceConfiguration> {
    if request.temperature.is_none() && request.max_output_tokens.is_none() {
        return None;
    }
    Some(
        aws_sdk_bedrockruntime::types::InferenceConfiguration::builder()
            .set_temperature(request.temperature.map(|t| t as f32))
            .set_max_tokens(request.max_output_tokens.map(|m| m as i32))
            .build(),
    )
}
