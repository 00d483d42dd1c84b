//! Chat rendering with assistant-only loss masks, for any chat template and without `{% generation %}`
//! markers. Each assistant turn i is located by rendering prefixes:
//!
//! * `before` = messages[..i] with the generation prompt (ends with the assistant header),
//! * `through` = messages[..=i] without it,
//!
//! and the turn is `through[before.len()..]`, up to and including the last special token in it (the
//! end-of-turn token: `<|im_end|>`, `<|eot_id|>`, `</s>`); template text after that (ChatML's newline) is
//! not something the model must learn to emit. An unfinished last turn (an answer cut at
//! `max_new_tokens`) stops before that token: its author never ended it there. A template that
//! renders a prefix differently from the start of the whole conversation is an error, since no span
//! can then be trusted.
//!
//! The text is tokenized in pieces cut at each assistant turn's start. Tokenizing it whole would let BPE
//! merge the header's last characters with the reply's first ones (ChatML's `\n` and a reply starting
//! with spaces become one token), so no token boundary would exist where the loss must start, and the
//! prompt would not be tokenized as at inference, where it ends at the header. Each piece after the
//! first is tokenized as if it followed a special token (one is prepended and dropped), which is how it
//! is split in the whole text anyway and keeps SentencePiece from adding a word-start marker.
//! A token is labelled when its bytes overlap a span. Labels follow HF: `labels[t] = input_ids[t]` or
//! -100, and the loss shifts them.

use std::ops::Range;

use burnish_core::{ChatTemplate, Message, Tokenizer, TokenizerBundle};

use crate::config::{AssistantTurns, DataConfig, Truncation};
use crate::error::{Error, Location, RecordError, Result};
use crate::example::{PairExample, SftExample};

/// Byte ranges of tokens in the text they came from.
type Offsets = Vec<(usize, usize)>;

/// The label of tokens that carry no loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub max_length: usize,
    pub truncation: Truncation,
    pub assistant_turns: AssistantTurns,
}

impl EncodeOptions {
    /// No length limit, loss on the last assistant turn: for encoding single exchanges (scoring).
    pub fn untruncated() -> Self {
        Self {
            max_length: usize::MAX,
            truncation: Truncation::Right,
            assistant_turns: AssistantTurns::Last,
        }
    }

    pub fn from_config(cfg: &DataConfig) -> Self {
        Self {
            max_length: cfg.max_length,
            truncation: cfg.truncation,
            assistant_turns: cfg.assistant_turns,
        }
    }
}

/// One SFT sequence for the training engine.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; `IGNORE_INDEX` where there is no loss.
    pub labels: Vec<i64>,
    pub truncated: bool,
    pub category: Option<String>,
}

impl TokenizedExample {
    pub fn loss_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// One side of a preference pair: the tokens after the shared prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub ids: Vec<u32>,
    /// True where the token counts towards the completion's log-probability.
    pub mask: Vec<bool>,
}

/// A preference pair for DPO / reward training: `prompt_ids + chosen.ids` and `prompt_ids + rejected.ids`
/// are the two full sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedPair {
    pub prompt_ids: Vec<u32>,
    pub chosen: Completion,
    pub rejected: Completion,
    pub truncated: bool,
    pub category: Option<String>,
}

/// What tokenizing a data set did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    pub examples: usize,
    /// Cut to `max_length` (and kept).
    pub truncated: usize,
    /// Dropped because truncation left no token with a loss.
    pub dropped_no_loss: usize,
    pub tokens: usize,
    pub loss_tokens: usize,
    pub longest: usize,
}

pub struct ChatEncoder {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// Special-token texts, any of which can end an assistant turn.
    special: Vec<String>,
    /// A special token (text, id) to tokenize pieces behind; None if the tokenizer has none.
    anchor: Option<(String, u32)>,
    opts: EncodeOptions,
}

impl ChatEncoder {
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate, opts: EncodeOptions) -> Self {
        let mut special: Vec<String> = tokenizer
            .inner()
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content.clone())
            .collect();
        if !template.eos_token.is_empty() && !special.contains(&template.eos_token) {
            special.push(template.eos_token.clone());
        }
        special.sort();
        let anchor = special.iter().find_map(|s| {
            let id = tokenizer.token_to_id(s)?;
            (tokenizer.encode(s, false).ok()? == [id]).then(|| (s.clone(), id))
        });
        Self {
            tokenizer,
            template,
            special,
            anchor,
            opts,
        }
    }

    /// From a model's tokenizer and chat template (an error if it has no template).
    pub fn from_bundle(bundle: &TokenizerBundle, opts: EncodeOptions) -> Result<Self> {
        let template = bundle.template.clone().ok_or_else(|| {
            Error::Invalid(
                "the model has no chat template; loss masks need one to render conversations"
                    .into(),
            )
        })?;
        Ok(Self::new(bundle.tokenizer.clone(), template, opts))
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn options(&self) -> EncodeOptions {
        self.opts
    }

    /// The rendered conversation and the byte range of each assistant turn (its content and its
    /// end-of-turn token; the last turn without it when `unfinished`).
    pub fn render_spans(
        &self,
        messages: &[Message],
        unfinished: bool,
    ) -> Result<(String, Vec<Range<usize>>)> {
        let last = messages.iter().rposition(|m| m.role == "assistant");
        let full = self.template.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.template.render(&messages[..i], true)?;
            let through = self.template.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(Error::Invalid(format!(
                    "the chat template renders the conversation up to message {i} differently from the start of the \
                     whole conversation, so its assistant turns cannot be found by prefix rendering"
                )));
            }
            let turn = &through[before.len()..];
            let closing = self
                .special
                .iter()
                .filter_map(|s| turn.rfind(s.as_str()).map(|p| (p + s.len(), p)))
                .max();
            let end = match closing {
                Some((_, start)) if unfinished && Some(i) == last => start,
                Some((end, _)) => end,
                None => turn.len(),
            };
            spans.push(before.len()..before.len() + end);
        }
        Ok((full, spans))
    }

    /// Token ids and labels of a whole conversation, untruncated. Tokens after the last labelled one
    /// (a trailing newline, a final user turn) are dropped: they can carry no loss.
    pub fn encode_messages(
        &self,
        messages: &[Message],
        turns: AssistantTurns,
    ) -> Result<(Vec<u32>, Vec<i64>)> {
        self.encode_turns(messages, turns, false)
    }

    /// [`Self::encode_messages`], with the last assistant turn `unfinished` ([`SftExample::unfinished`]):
    /// the sequence then ends with its last content token.
    pub fn encode_turns(
        &self,
        messages: &[Message],
        turns: AssistantTurns,
        unfinished: bool,
    ) -> Result<(Vec<u32>, Vec<i64>)> {
        let (text, turn_spans) = self.render_spans(messages, unfinished)?;
        // Every turn start cuts the text, whichever turns carry loss, so the ids do not depend on `turns`.
        let spans = match turns {
            AssistantTurns::All => turn_spans.clone(),
            AssistantTurns::Last => turn_spans.last().cloned().into_iter().collect(),
        };
        let (mut ids, mut offsets) = (Vec::new(), Vec::new());
        let mut cut = 0;
        for end in turn_spans.iter().map(|r| r.start).chain([text.len()]) {
            if end > cut {
                let (piece_ids, piece_offsets) = self.encode_piece(&text[cut..end], cut > 0)?;
                ids.extend(piece_ids);
                offsets.extend(piece_offsets.into_iter().map(|(s, e)| (s + cut, e + cut)));
                cut = end;
            }
        }
        let labels: Vec<i64> = ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(s, e))| {
                let inside = spans.iter().any(|r| {
                    if s == e {
                        r.contains(&s)
                    } else {
                        s < r.end && e > r.start
                    }
                });
                if inside {
                    id as i64
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        let keep = labels
            .iter()
            .rposition(|&l| l != IGNORE_INDEX)
            .map_or(ids.len(), |p| p + 1);
        Ok((ids[..keep].to_vec(), labels[..keep].to_vec()))
    }

    /// Ids and byte offsets of `piece`; `behind_special` tokenizes it as it would follow a special token.
    fn encode_piece(&self, piece: &str, behind_special: bool) -> Result<(Vec<u32>, Offsets)> {
        let encode = |text: &str| {
            self.tokenizer
                .inner()
                .encode(text, false)
                .map_err(|e| Error::from(burnish_core::Error::Tokenizer(e.to_string())))
        };
        if let (true, Some((anchor, id))) = (behind_special, &self.anchor) {
            let enc = encode(&format!("{anchor}{piece}"))?;
            if enc.get_ids().first() == Some(id) {
                let shift = anchor.len();
                let offsets = enc.get_offsets()[1..]
                    .iter()
                    .map(|&(s, e)| (s.saturating_sub(shift), e.saturating_sub(shift)));
                return Ok((enc.get_ids()[1..].to_vec(), offsets.collect()));
            }
        }
        let enc = encode(piece)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Ids of a prompt rendered with the generation prompt, ready for `generate`.
    pub fn encode_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// An SFT example, truncated to `max_length`; None when truncation leaves no loss token.
    pub fn encode_sft(&self, ex: &SftExample) -> Result<Option<TokenizedExample>> {
        let (mut ids, mut labels) = self
            .encode_turns(&ex.messages, self.opts.assistant_turns, ex.unfinished)
            .map_err(|e| locate(ex.origin.as_ref(), e))?;
        let max = self.opts.max_length;
        let truncated = ids.len() > max;
        if truncated {
            let cut = match self.opts.truncation {
                Truncation::Right => 0..max,
                Truncation::Left => ids.len() - max..ids.len(),
            };
            ids = ids[cut.clone()].to_vec();
            labels = labels[cut].to_vec();
        }
        if labels.iter().all(|&l| l == IGNORE_INDEX) {
            return Ok(None);
        }
        Ok(Some(TokenizedExample {
            input_ids: ids,
            labels,
            truncated,
            category: ex.category.clone(),
        }))
    }

    /// A preference pair. The prompt is the longest common token prefix of the two full sequences before
    /// either completion starts (usually exactly the prompt's own tokenization). With truncation "right"
    /// the completions are cut; with "left" the prompt loses its start first. None when a completion is
    /// left without loss tokens.
    pub fn encode_pair(&self, ex: &PairExample) -> Result<Option<TokenizedPair>> {
        let side = |completion: &str, unfinished: bool| {
            let mut m = ex.prompt.clone();
            m.push(Message::assistant(completion));
            self.encode_turns(&m, AssistantTurns::Last, unfinished)
                .map_err(|e| locate(ex.origin.as_ref(), e))
        };
        let (c_ids, c_labels) = side(&ex.chosen, ex.chosen_unfinished)?;
        let (r_ids, r_labels) = side(&ex.rejected, ex.rejected_unfinished)?;
        let first_label = |l: &[i64]| l.iter().position(|&x| x != IGNORE_INDEX).unwrap_or(l.len());
        let limit = first_label(&c_labels).min(first_label(&r_labels));
        let shared = c_ids
            .iter()
            .zip(&r_ids)
            .take(limit)
            .take_while(|(a, b)| a == b)
            .count();
        let completion = |ids: &[u32], labels: &[i64]| Completion {
            ids: ids[shared..].to_vec(),
            mask: labels[shared..]
                .iter()
                .map(|&l| l != IGNORE_INDEX)
                .collect(),
        };
        let mut pair = TokenizedPair {
            prompt_ids: c_ids[..shared].to_vec(),
            chosen: completion(&c_ids, &c_labels),
            rejected: completion(&r_ids, &r_labels),
            truncated: false,
            category: ex.category.clone(),
        };
        let max = self.opts.max_length;
        let longest = pair.chosen.ids.len().max(pair.rejected.ids.len());
        if pair.prompt_ids.len() + longest > max {
            pair.truncated = true;
            if self.opts.truncation == Truncation::Left {
                let drop = (pair.prompt_ids.len() + longest - max).min(pair.prompt_ids.len());
                pair.prompt_ids.drain(..drop);
            }
            let room = max.saturating_sub(pair.prompt_ids.len());
            for c in [&mut pair.chosen, &mut pair.rejected] {
                c.ids.truncate(room);
                c.mask.truncate(room);
            }
        }
        let has_loss = |c: &Completion| c.mask.iter().any(|&m| m);
        Ok((has_loss(&pair.chosen) && has_loss(&pair.rejected)).then_some(pair))
    }

    /// Tokenizes SFT examples, dropping (and counting) those that truncation leaves without loss.
    pub fn encode_all_sft(
        &self,
        examples: &[SftExample],
    ) -> Result<(Vec<TokenizedExample>, TokenStats)> {
        let mut stats = TokenStats::default();
        let mut out = Vec::with_capacity(examples.len());
        for ex in examples {
            stats.examples += 1;
            match self.encode_sft(ex)? {
                Some(t) => {
                    stats.truncated += usize::from(t.truncated);
                    stats.tokens += t.input_ids.len();
                    stats.loss_tokens += t.loss_tokens();
                    stats.longest = stats.longest.max(t.input_ids.len());
                    out.push(t);
                }
                None => stats.dropped_no_loss += 1,
            }
        }
        Ok((out, stats))
    }

    /// Tokenizes preference pairs, dropping (and counting) those that truncation leaves without loss.
    pub fn encode_all_pairs(
        &self,
        examples: &[PairExample],
    ) -> Result<(Vec<TokenizedPair>, TokenStats)> {
        let mut stats = TokenStats::default();
        let mut out = Vec::with_capacity(examples.len());
        for ex in examples {
            stats.examples += 1;
            match self.encode_pair(ex)? {
                Some(p) => {
                    let (c, r) = (&p.chosen, &p.rejected);
                    stats.truncated += usize::from(p.truncated);
                    stats.tokens += 2 * p.prompt_ids.len() + c.ids.len() + r.ids.len();
                    stats.loss_tokens += c.mask.iter().chain(&r.mask).filter(|&&m| m).count();
                    stats.longest = stats
                        .longest
                        .max(p.prompt_ids.len() + c.ids.len().max(r.ids.len()));
                    out.push(p);
                }
                None => stats.dropped_no_loss += 1,
            }
        }
        Ok((out, stats))
    }
}

/// Names the record an encoding error came from.
fn locate(origin: Option<&Location>, e: Error) -> Error {
    match origin {
        Some(loc) => Error::Record(RecordError {
            loc: loc.clone(),
            field: None,
            msg: e.to_string(),
        }),
        None => e,
    }
}
