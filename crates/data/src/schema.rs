//! Record schemas: which fields hold the conversation. Detected per record from the field names (after
//! `columns` renames them), or fixed by `schema`. A record that does not fit gives a `FieldError` naming
//! the field (`messages[2].role`), which the caller locates in its file.
//!
//! | schema | fields | kind |
//! | --- | --- | --- |
//! | `prompt_completion` | prompt, completion, system? | SFT |
//! | `messages` | messages: [{role, content}] (OpenAI) | SFT, or prompt if no assistant turn |
//! | `sharegpt` | conversations: [{from, value}] | SFT, or prompt if no assistant turn |
//! | `alpaca` | instruction, input?, output, system? | SFT |
//! | `preference` | prompt?, chosen, rejected (strings or message lists) | pair |
//! | `hh_rlhf` | chosen, rejected (`\n\nHuman:` / `\n\nAssistant:` dialogues) | pair |
//! | `prompt` | prompt / instruction (+ input) / goal, system? | prompt |
//!
//! Every schema also reads an optional `category`.

use burnish_core::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::example::{Example, PairExample, PromptExample, SftExample};
use crate::read::kind;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    #[default]
    Auto,
    PromptCompletion,
    Messages,
    Sharegpt,
    Alpaca,
    Preference,
    HhRlhf,
    Prompt,
}

/// Canonical field → the record's column name, or a dotted path into nested values (`instances.0.output`).
/// Unset fields use their canonical name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    pub prompt: Option<String>,
    pub completion: Option<String>,
    pub messages: Option<String>,
    pub conversations: Option<String>,
    pub instruction: Option<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub chosen: Option<String>,
    pub rejected: Option<String>,
    pub system: Option<String>,
    pub category: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    Prompt,
    Completion,
    Messages,
    Conversations,
    Instruction,
    Input,
    Output,
    Chosen,
    Rejected,
    System,
    Category,
}

impl Columns {
    fn name(&self, f: F) -> &str {
        let (mapped, canonical) = match f {
            F::Prompt => (&self.prompt, "prompt"),
            F::Completion => (&self.completion, "completion"),
            F::Messages => (&self.messages, "messages"),
            F::Conversations => (&self.conversations, "conversations"),
            F::Instruction => (&self.instruction, "instruction"),
            F::Input => (&self.input, "input"),
            F::Output => (&self.output, "output"),
            F::Chosen => (&self.chosen, "chosen"),
            F::Rejected => (&self.rejected, "rejected"),
            F::System => (&self.system, "system"),
            F::Category => (&self.category, "category"),
        };
        mapped.as_deref().unwrap_or(canonical)
    }
}

struct Rec<'a> {
    map: &'a Map<String, Value>,
    cols: &'a Columns,
}

impl<'a> Rec<'a> {
    /// The value at a column name or dotted path; null counts as absent.
    fn at(&self, name: &str) -> Option<&'a Value> {
        let found = self.map.get(name).or_else(|| {
            let mut parts = name.split('.');
            let mut v = self.map.get(parts.next()?)?;
            for p in parts {
                v = match v {
                    Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                    Value::Object(o) => o.get(p)?,
                    _ => return None,
                };
            }
            Some(v)
        });
        found.filter(|v| !v.is_null())
    }

    fn get(&self, f: F) -> Option<(&str, &'a Value)> {
        let name = self.cols.name(f);
        self.at(name).map(|v| (name, v))
    }

    fn has(&self, f: F) -> bool {
        self.get(f).is_some()
    }

    fn required(&self, f: F) -> Result<(&str, &'a Value), FieldError> {
        self.get(f)
            .ok_or_else(|| FieldError::new(self.cols.name(f), "missing"))
    }

    /// An optional string; empty strings count as absent (CSV has no null).
    fn opt_str(&self, f: F) -> Result<Option<String>, FieldError> {
        match self.get(f) {
            None => Ok(None),
            Some((_, Value::String(s))) if s.is_empty() => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((name, v)) => Err(FieldError::new(
                name,
                format!("expected a string, got {}", kind(v)),
            )),
        }
    }

    fn text(&self, f: F) -> Result<String, FieldError> {
        let (name, v) = self.required(f)?;
        text(name, v, false)
    }

    /// A true/false field `burnish data build` writes (`unfinished`): absent or empty is false; CSV's
    /// "true" and "false" are read as such.
    fn flag(&self, name: &str) -> Result<bool, FieldError> {
        match self.at(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s.is_empty() || s == "false" => Ok(false),
            Some(Value::String(s)) if s == "true" => Ok(true),
            Some(v) => Err(FieldError::new(
                name,
                format!("expected true or false, got {}", kind(v)),
            )),
        }
    }

    fn category(&self) -> Result<Option<String>, FieldError> {
        match self.get(F::Category) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok((!s.is_empty()).then(|| s.clone())),
            Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
            Some((name, v)) => Err(FieldError::new(
                name,
                format!("expected a string, got {}", kind(v)),
            )),
        }
    }
}

fn text(name: &str, v: &Value, allow_empty: bool) -> Result<String, FieldError> {
    match v {
        Value::String(s) if s.trim().is_empty() && !allow_empty => {
            Err(FieldError::new(name, "empty"))
        }
        Value::String(s) => Ok(s.clone()),
        other => Err(FieldError::new(
            name,
            format!("expected a string, got {}", kind(other)),
        )),
    }
}

/// Converts one record. `Schema::Auto` picks the schema from the fields present.
pub fn convert(
    map: &Map<String, Value>,
    schema: Schema,
    cols: &Columns,
) -> Result<Example, FieldError> {
    let r = Rec { map, cols };
    let schema = match schema {
        Schema::Auto => detect(&r)?,
        s => s,
    };
    let category = r.category()?;
    let system = r.opt_str(F::System)?;
    let unfinished = r.flag("unfinished")?;
    let sft = |messages: Vec<Message>| {
        Example::Sft(SftExample {
            messages: with_system(messages, system.clone()),
            category: category.clone(),
            harmful: None,
            refused: None,
            unfinished,
            origin: None,
        })
    };
    let prompt = |messages: Vec<Message>| {
        Example::Prompt(PromptExample {
            messages: with_system(messages, system.clone()),
            category: category.clone(),
            harmful: None,
            origin: None,
        })
    };
    Ok(match schema {
        Schema::PromptCompletion => {
            let mut m = prompt_messages(&r)?;
            let (name, v) = r.required(F::Completion)?;
            m.push(Message::assistant(completion(name, v, false)?));
            sft(m)
        }
        Schema::Messages | Schema::Sharegpt => {
            let f = if schema == Schema::Messages {
                F::Messages
            } else {
                F::Conversations
            };
            let (name, v) = r.required(f)?;
            let m = messages(name, v)?;
            if m.iter().any(|m| m.role == "assistant") {
                sft(m)
            } else if m.last().is_some_and(|m| m.role == "user") {
                prompt(m)
            } else {
                return Err(FieldError::new(
                    name,
                    "has no assistant turn and does not end with a user turn",
                ));
            }
        }
        Schema::Alpaca => {
            let m = vec![
                Message::user(instruction_text(&r)?),
                Message::assistant(r.text(F::Output)?),
            ];
            sft(m)
        }
        Schema::Prompt => prompt(prompt_messages(&r)?),
        Schema::Preference => {
            let (prompt, chosen, rejected) = preference(&r)?;
            let sides = [
                (chosen, r.flag("chosen_unfinished")?),
                (rejected, r.flag("rejected_unfinished")?),
            ];
            pair(with_system(prompt, system), sides, category)?
        }
        Schema::HhRlhf => {
            let (prompt, chosen, rejected) = hh_pair(&r)?;
            pair(
                with_system(prompt, system),
                [(chosen, false), (rejected, false)],
                category,
            )?
        }
        Schema::Auto => unreachable!("detect returns a concrete schema"),
    })
}

fn detect(r: &Rec) -> Result<Schema, FieldError> {
    Ok(if r.has(F::Chosen) && r.has(F::Rejected) {
        let hh = !r.has(F::Prompt)
            && matches!(r.get(F::Chosen), Some((_, Value::String(s))) if s.trim_start().starts_with("Human:"));
        if hh {
            Schema::HhRlhf
        } else {
            Schema::Preference
        }
    } else if r.has(F::Messages) {
        Schema::Messages
    } else if r.has(F::Conversations) {
        Schema::Sharegpt
    } else if r.has(F::Instruction) && r.has(F::Output) {
        Schema::Alpaca
    } else if r.has(F::Prompt) && r.has(F::Completion) {
        Schema::PromptCompletion
    } else if r.has(F::Prompt) || r.has(F::Instruction) || r.at("goal").is_some() {
        Schema::Prompt
    } else {
        let keys: Vec<&str> = r.map.keys().map(String::as_str).collect();
        return Err(FieldError::record(format!(
            "cannot tell the schema from the fields [{}]; set `schema` or map them with `columns`",
            keys.join(", ")
        )));
    })
}

fn with_system(mut m: Vec<Message>, system: Option<String>) -> Vec<Message> {
    if let Some(s) = system {
        if m.first().is_none_or(|f| f.role != "system") {
            m.insert(0, Message::system(s));
        }
    }
    m
}

/// `instruction`, with a non-empty `input` appended after a blank line (Alpaca's convention).
fn instruction_text(r: &Rec) -> Result<String, FieldError> {
    let instruction = r.text(F::Instruction)?;
    Ok(match r.opt_str(F::Input)? {
        Some(input) if !input.trim().is_empty() => format!("{instruction}\n\n{input}"),
        _ => instruction,
    })
}

/// The prompt of prompt-only and prompt/completion records: `prompt` (text or messages), else
/// `instruction` (+ `input`), else `goal` (AdvBench).
fn prompt_messages(r: &Rec) -> Result<Vec<Message>, FieldError> {
    if let Some((name, v)) = r.get(F::Prompt) {
        return prompt_value(name, v);
    }
    if r.cols.prompt.is_none() {
        if r.has(F::Instruction) {
            return Ok(vec![Message::user(instruction_text(r)?)]);
        }
        if let Some(v) = r.at("goal") {
            return Ok(vec![Message::user(text("goal", v, false)?)]);
        }
    }
    Err(FieldError::new(r.cols.name(F::Prompt), "missing"))
}

/// A prompt given as text (one user turn) or as a message list ending with a user turn.
fn prompt_value(name: &str, v: &Value) -> Result<Vec<Message>, FieldError> {
    if let Value::Array(_) = v {
        let m = messages(name, v)?;
        return match m.last() {
            Some(last) if last.role == "user" => Ok(m),
            _ => Err(FieldError::new(
                name,
                "a prompt must end with a user message",
            )),
        };
    }
    Ok(vec![Message::user(text(name, v, false)?)])
}

/// A completion given as text or as a list holding one assistant message.
fn completion(name: &str, v: &Value, allow_empty: bool) -> Result<String, FieldError> {
    if let Value::Array(_) = v {
        return match messages(name, v)?.as_slice() {
            [m] if m.role == "assistant" => Ok(m.content.clone()),
            _ => Err(FieldError::new(name, "expected one assistant message")),
        };
    }
    text(name, v, allow_empty)
}

/// OpenAI `{role, content}` or ShareGPT `{from, value}` lists. Content may be a string or a list of
/// `{type: "text", text}` parts.
fn messages(name: &str, v: &Value) -> Result<Vec<Message>, FieldError> {
    let Value::Array(items) = v else {
        return Err(FieldError::new(
            name,
            format!("expected a list of messages, got {}", kind(v)),
        ));
    };
    if items.is_empty() {
        return Err(FieldError::new(name, "empty message list"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |k: &str| format!("{name}[{i}].{k}");
            let Value::Object(o) = m else {
                return Err(FieldError::new(
                    format!("{name}[{i}]"),
                    format!("expected an object, got {}", kind(m)),
                ));
            };
            let (rk, ck) = if o.contains_key("from") {
                ("from", "value")
            } else {
                ("role", "content")
            };
            let role = match o.get(rk) {
                Some(Value::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(FieldError::new(
                        at(rk),
                        format!("expected a string, got {}", kind(other)),
                    ))
                }
                None => return Err(FieldError::new(at(rk), "missing")),
            };
            let role = match role.to_ascii_lowercase().as_str() {
                "system" => "system",
                "user" | "human" => "user",
                "assistant" | "gpt" | "chatgpt" | "bard" | "bing" | "model" => "assistant",
                _ => {
                    return Err(FieldError::new(
                        at(rk),
                        format!("unknown role `{role}` (expected system, user or assistant)"),
                    ))
                }
            };
            let content = match o.get(ck) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    text_parts(parts).map_err(|msg| FieldError::new(at(ck), msg))?
                }
                Some(Value::Null) | None => return Err(FieldError::new(at(ck), "missing")),
                Some(other) => {
                    return Err(FieldError::new(
                        at(ck),
                        format!("expected a string, got {}", kind(other)),
                    ))
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn text_parts(parts: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for p in parts {
        match (
            p.get("type").and_then(Value::as_str),
            p.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(t)) => out.push_str(t),
            (t, _) => return Err(format!("only text parts are supported, got type {t:?}")),
        }
    }
    Ok(out)
}

/// `sides`: chosen and rejected, each with its `unfinished` flag.
fn pair(
    prompt: Vec<Message>,
    sides: [(String, bool); 2],
    category: Option<String>,
) -> Result<Example, FieldError> {
    let [(chosen, chosen_unfinished), (rejected, rejected_unfinished)] = sides;
    if chosen == rejected {
        return Err(FieldError::record("chosen and rejected are identical"));
    }
    Ok(Example::Pair(PairExample {
        prompt,
        chosen,
        rejected,
        chosen_unfinished,
        rejected_unfinished,
        category,
        harmful: None,
        origin: None,
    }))
}

/// Explicit `prompt` + completions, or message lists whose common prefix is the prompt (TRL's implicit
/// prompt) followed by one assistant message each.
fn preference(r: &Rec) -> Result<(Vec<Message>, String, String), FieldError> {
    let (cn, cv) = r.required(F::Chosen)?;
    let (rn, rv) = r.required(F::Rejected)?;
    if let Some((pn, pv)) = r.get(F::Prompt) {
        return Ok((
            prompt_value(pn, pv)?,
            completion(cn, cv, true)?,
            completion(rn, rv, true)?,
        ));
    }
    match (cv, rv) {
        (Value::Array(_), Value::Array(_)) => {
            let (c, rj) = (messages(cn, cv)?, messages(rn, rv)?);
            let shared = c.iter().zip(&rj).take_while(|(a, b)| a == b).count();
            let prompt = c[..shared].to_vec();
            let last = |m: &[Message], name: &str| match m.get(shared..) {
                Some([a]) if a.role == "assistant" => Ok(a.content.clone()),
                _ => Err(FieldError::new(
                    name,
                    "must be the prompt plus exactly one assistant message",
                )),
            };
            let (chosen, rejected) = (last(&c, cn)?, last(&rj, rn)?);
            if prompt.last().is_none_or(|m| m.role != "user") {
                return Err(FieldError::new(
                    cn,
                    "the shared prompt must end with a user message",
                ));
            }
            Ok((prompt, chosen, rejected))
        }
        _ => Err(FieldError::new(
            r.cols.name(F::Prompt),
            "missing (needed unless chosen/rejected are message lists)",
        )),
    }
}

fn hh_pair(r: &Rec) -> Result<(Vec<Message>, String, String), FieldError> {
    let (cn, cv) = r.required(F::Chosen)?;
    let (rn, rv) = r.required(F::Rejected)?;
    let c = hh_turns(&text(cn, cv, false)?).map_err(|m| FieldError::new(cn, m))?;
    let rj = hh_turns(&text(rn, rv, false)?).map_err(|m| FieldError::new(rn, m))?;
    let (cp, rp) = (&c[..c.len() - 1], &rj[..rj.len() - 1]);
    if cp != rp {
        let turn = cp.iter().zip(rp).take_while(|(a, b)| a == b).count();
        return Err(FieldError::new(
            cn,
            format!(
                "chosen and rejected differ before their final assistant turn (at turn {})",
                turn + 1
            ),
        ));
    }
    let last = |m: &[Message]| m.last().map(|m| m.content.clone()).unwrap_or_default();
    Ok((cp.to_vec(), last(&c), last(&rj)))
}

/// Anthropic hh-rlhf dialogue → messages. Turns are introduced by `\n\nHuman:` / `\n\nAssistant:`,
/// start with a human turn, alternate, and end with an assistant turn (which may be empty).
pub fn hh_turns(dialogue: &str) -> Result<Vec<Message>, String> {
    const H: &str = "\n\nHuman:";
    const A: &str = "\n\nAssistant:";
    let owned;
    let d = if dialogue.starts_with(H) {
        dialogue
    } else if dialogue.trim_start().starts_with("Human:") {
        owned = format!("\n\n{}", dialogue.trim_start());
        &owned
    } else {
        return Err("an hh-rlhf dialogue must start with `Human:`".into());
    };
    let mut turns: Vec<Message> = Vec::new();
    let mut rest = d;
    while !rest.is_empty() {
        let (role, body) = if let Some(b) = rest.strip_prefix(H) {
            ("user", b)
        } else if let Some(b) = rest.strip_prefix(A) {
            ("assistant", b)
        } else {
            return Err("malformed dialogue".into());
        };
        let end = [body.find(H), body.find(A)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(body.len());
        let expected = if turns.len().is_multiple_of(2) {
            "user"
        } else {
            "assistant"
        };
        if role != expected {
            return Err(format!(
                "turn {} should be {expected}, found two {role} turns in a row",
                turns.len() + 1
            ));
        }
        turns.push(Message::new(role, body[..end].trim()));
        rest = &body[end..];
    }
    if turns.last().is_none_or(|m| m.role != "assistant") {
        return Err("an hh-rlhf dialogue must end with an `Assistant:` turn".into());
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_dialogue_splits_into_alternating_turns() {
        let t = hh_turns("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ")
            .unwrap();
        let roles: Vec<&str> = t.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
        assert_eq!(t[0].content, "hi there");
        assert_eq!(t[3].content, "");
        assert!(hh_turns("\n\nHuman: a\n\nHuman: b\n\nAssistant: c")
            .unwrap_err()
            .contains("two user turns"));
        assert!(hh_turns("\n\nHuman: a").unwrap_err().contains("end with"));
        assert!(hh_turns("Assistant: a").unwrap_err().contains("start with"));
    }
}
