//! The chat template of a checkpoint (`tokenizer_config.json["chat_template"]`, a Jinja
//! template), rendered with the `minijinja` engine and its Python-compatible string methods,
//! as `transformers`' `apply_chat_template` does.

use std::path::Path;

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template with the special tokens it refers to.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn err(msg: String) -> ModelError {
    ModelError::Tokenizer(format!("chat template: {msg}"))
}

/// A special token given as a string or as `{"content": ...}`.
fn token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    /// A template from its source and special tokens.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        ChatTemplate {
            source: source.into(),
            bos_token,
            eos_token,
        }
    }

    /// Reads the template of a model directory: `chat_template` of `tokenizer_config.json` (a
    /// string, or the entry named `default` of a list), else `chat_template.jinja`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the directory has no chat template or the file is malformed.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&path) {
            Ok(t) => {
                serde_json::from_str(&t).map_err(|e| err(format!("{}: {e}", path.display())))?
            }
            Err(_) => serde_json::Value::Null,
        };
        let source = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let source = source.ok_or_else(|| {
            err(format!("{} has no chat template (tokenizer_config.json chat_template or chat_template.jinja)", dir.display()))
        })?;
        Ok(ChatTemplate::new(
            source,
            token(cfg.get("bos_token")),
            token(cfg.get("eos_token")),
        ))
    }

    /// The end-of-turn token the template's conversations end with (`eos_token`), if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages`; `add_generation_prompt` opens the assistant's turn;
    /// `enable_thinking = Some(false)` asks Qwen3 templates for an empty thinking block.
    ///
    /// ```
    /// use qwen3_quant_model::chat::{ChatTemplate, Message};
    /// let t = ChatTemplate::new(
    ///     "{% for m in messages %}<|{{ m.role }}|>{{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    ///     None, None);
    /// let s = t.render(&[Message::new("user", " hi ")], true, None)?;
    /// assert_eq!(s, "<|user|>hi\n<|assistant|>");
    /// # Ok::<(), qwen3_quant_model::ModelError>(())
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] for a template that does not parse or raises an exception.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| err(e.to_string()))?;
        let t = env.get_template("chat").map_err(|e| err(e.to_string()))?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            enable_thinking => enable_thinking,
            tools => Option::<Vec<String>>::None,
        };
        t.render(ctx).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real Qwen3 template renders what `apply_chat_template` gives (Qwen's documented
    /// ChatML turns), with and without thinking, and a multi-turn history drops the reasoning.
    #[test]
    fn qwen3_template_renders_chatml() {
        let Some(dir) = qwen3_quant_io::assets::require("models/qwen3-tokenizer") else {
            return;
        };
        let t = ChatTemplate::from_dir(&dir).unwrap();
        assert_eq!(t.eos_token(), Some("<|im_end|>"));
        let one = [Message::new("user", "Hello")];
        assert_eq!(
            t.render(&one, true, None).unwrap(),
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&one, true, Some(false)).unwrap(),
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        let multi = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "<think>\nplan\n</think>\n\nHello!"),
            Message::new("user", "Bye"),
        ];
        assert_eq!(
            t.render(&multi, true, None).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
        let micro = dir.with_file_name("qwen3-micro");
        assert!(
            ChatTemplate::from_dir(micro).is_err(),
            "the micro model ships no template"
        );
        assert!(ChatTemplate::new("{{ raise_exception('no') }}", None, None)
            .render(&one, false, None)
            .is_err());
    }
}
