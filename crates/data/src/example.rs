//! The three kinds of example the trainers consume, independent of the file format they came from, and
//! their JSON Lines form (what `burnish data build` writes; every form reads back with `schema = "auto"`).

use burnish_core::Message;
use serde_json::{json, Map, Value};

use crate::error::Location;

/// A conversation to imitate (SFT): loss on assistant turns.
#[derive(Clone, Debug, PartialEq)]
pub struct SftExample {
    pub messages: Vec<Message>,
    pub category: Option<String>,
    pub harmful: Option<bool>,
    /// Set by the refusal policy step: whether an assistant turn refuses.
    pub refused: Option<bool>,
    /// The last assistant turn was cut before its author ended it (a generated answer that reached
    /// `max_new_tokens`): it is learned without an end-of-turn token.
    pub unfinished: bool,
    pub origin: Option<Location>,
}

/// A preference pair (DPO, reward models): a shared prompt and two final assistant responses.
#[derive(Clone, Debug, PartialEq)]
pub struct PairExample {
    /// Ends with a user message.
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    /// A side cut before its author ended it (as [`SftExample::unfinished`]): scored without an
    /// end-of-turn token.
    pub chosen_unfinished: bool,
    pub rejected_unfinished: bool,
    pub category: Option<String>,
    pub harmful: Option<bool>,
    pub origin: Option<Location>,
}

impl PairExample {
    /// The prompt answered by the chosen response: what SFT learns from a pair (a run file whose
    /// pairs a `goal` labels can train either DPO or SFT on them).
    pub fn chosen_sft(&self) -> SftExample {
        let mut messages = self.prompt.clone();
        messages.push(Message::assistant(self.chosen.clone()));
        SftExample {
            messages,
            category: self.category.clone(),
            harmful: self.harmful,
            refused: None,
            unfinished: self.chosen_unfinished,
            origin: self.origin.clone(),
        }
    }
}

/// A prompt to answer (generation, RLHF rollouts, evaluation). Ends with a user message.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptExample {
    pub messages: Vec<Message>,
    pub category: Option<String>,
    pub harmful: Option<bool>,
    pub origin: Option<Location>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    Sft(SftExample),
    Pair(PairExample),
    Prompt(PromptExample),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sft,
    Pair,
    Prompt,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sft => "SFT conversations",
            Kind::Pair => "preference pairs",
            Kind::Prompt => "prompts",
        }
    }
}

impl Example {
    pub fn kind(&self) -> Kind {
        match self {
            Example::Sft(_) => Kind::Sft,
            Example::Pair(_) => Kind::Pair,
            Example::Prompt(_) => Kind::Prompt,
        }
    }

    pub fn origin(&self) -> Option<&Location> {
        match self {
            Example::Sft(e) => e.origin.as_ref(),
            Example::Pair(e) => e.origin.as_ref(),
            Example::Prompt(e) => e.origin.as_ref(),
        }
    }

    /// The JSON Lines record. Single-turn SFT is `{system?, prompt, completion, refused, unfinished?,
    /// category?, harmful?}`, multi-turn `{messages, ...}`; pairs `{prompt, chosen, rejected,
    /// chosen_unfinished?, rejected_unfinished?, ...}`; prompts `{prompt, ...}`, where a prompt is a
    /// string when it is one user message and a message list otherwise. The `unfinished` flags are
    /// written only when true.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        let (category, harmful) = match self {
            Example::Sft(e) => {
                match single_turn(&e.messages) {
                    Some((system, prompt, completion)) => {
                        if let Some(s) = system {
                            out.insert("system".into(), s.into());
                        }
                        out.insert("prompt".into(), prompt.into());
                        out.insert("completion".into(), completion.into());
                    }
                    None => {
                        out.insert("messages".into(), json!(e.messages));
                    }
                }
                out.insert("refused".into(), json!(e.refused));
                flag(&mut out, "unfinished", e.unfinished);
                (&e.category, e.harmful)
            }
            Example::Pair(e) => {
                out.insert("prompt".into(), prompt_json(&e.prompt));
                out.insert("chosen".into(), e.chosen.clone().into());
                out.insert("rejected".into(), e.rejected.clone().into());
                flag(&mut out, "chosen_unfinished", e.chosen_unfinished);
                flag(&mut out, "rejected_unfinished", e.rejected_unfinished);
                (&e.category, e.harmful)
            }
            Example::Prompt(e) => {
                out.insert("prompt".into(), prompt_json(&e.messages));
                (&e.category, e.harmful)
            }
        };
        if let Some(c) = category {
            out.insert("category".into(), c.clone().into());
        }
        if let Some(h) = harmful {
            out.insert("harmful".into(), h.into());
        }
        Value::Object(out)
    }
}

/// `key: true` when `on`; absent otherwise, so records without cut answers read as before.
fn flag(out: &mut Map<String, Value>, key: &str, on: bool) {
    if on {
        out.insert(key.into(), true.into());
    }
}

/// `(system, user, assistant)` when the conversation is one exchange.
fn single_turn(m: &[Message]) -> Option<(Option<&str>, &str, &str)> {
    match m {
        [u, a] if u.role == "user" && a.role == "assistant" => Some((None, &u.content, &a.content)),
        [s, u, a] if s.role == "system" && u.role == "user" && a.role == "assistant" => {
            Some((Some(&s.content), &u.content, &a.content))
        }
        _ => None,
    }
}

fn prompt_json(m: &[Message]) -> Value {
    match m {
        [u] if u.role == "user" => u.content.clone().into(),
        _ => json!(m),
    }
}

/// The assistant messages of a conversation, in order.
pub fn assistant_turns(messages: &[Message]) -> impl Iterator<Item = &Message> {
    messages.iter().filter(|m| m.role == "assistant")
}
