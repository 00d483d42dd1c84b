//! Loss masks are exact: the labelled tokens are the assistant content plus its end-of-turn token and
//! nothing else, on SmolLM2's ChatML template and on a Llama-3 template; truncation and pairs.

mod common;

use std::sync::OnceLock;

use burnish_core::{ChatTemplate, Message, Tokenizer, TokenizerBundle};
use burnish_data::config::{AssistantTurns, Truncation};
use burnish_data::{ChatEncoder, EncodeOptions, PairExample, SftExample, IGNORE_INDEX};
use common::*;

fn bundle() -> &'static TokenizerBundle {
    static B: OnceLock<TokenizerBundle> = OnceLock::new();
    B.get_or_init(|| TokenizerBundle::load(smollm2()).unwrap())
}

fn opts(
    max_length: usize,
    truncation: Truncation,
    assistant_turns: AssistantTurns,
) -> EncodeOptions {
    EncodeOptions {
        max_length,
        truncation,
        assistant_turns,
    }
}

fn chatml(o: EncodeOptions) -> ChatEncoder {
    ChatEncoder::from_bundle(bundle(), o).unwrap()
}

/// The labelled tokens, decoded run by run; and a check that labels equal ids where set.
fn runs(tok: &Tokenizer, ids: &[u32], labels: &[i64]) -> Vec<String> {
    assert_eq!(ids.len(), labels.len());
    let mut out = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (&id, &l) in ids.iter().zip(labels) {
        if l == IGNORE_INDEX {
            if !cur.is_empty() {
                out.push(tok.decode(&cur, false).unwrap());
                cur.clear();
            }
        } else {
            assert_eq!(l, id as i64);
            cur.push(id);
        }
    }
    if !cur.is_empty() {
        out.push(tok.decode(&cur, false).unwrap());
    }
    out
}

fn sft(messages: Vec<Message>) -> SftExample {
    SftExample {
        messages,
        category: None,
        harmful: None,
        refused: None,
        unfinished: false,
        origin: None,
    }
}

/// Contents chosen to stress token boundaries: leading/trailing whitespace, newlines, non-ASCII, and
/// text that looks like template syntax.
fn conversation() -> Vec<Message> {
    vec![
        Message::user("Say hello."),
        Message::assistant("Hello! ✓ Ça va?"),
        Message::user("Now two lines, please."),
        Message::assistant("  first line\nsecond {{ line }}\n"),
        Message::user("Thanks."),
        Message::assistant("You're welcome."),
    ]
}

#[test]
fn chatml_masks_are_content_plus_im_end() {
    let enc = chatml(opts(4096, Truncation::Right, AssistantTurns::All));
    let (ids, labels) = enc
        .encode_messages(&conversation(), AssistantTurns::All)
        .unwrap();
    let tok = enc.tokenizer();
    assert_eq!(
        runs(tok, &ids, &labels),
        [
            "Hello! ✓ Ça va?<|im_end|>",
            "  first line\nsecond {{ line }}\n<|im_end|>",
            "You're welcome.<|im_end|>"
        ]
    );
    // Everything before the last label is the template's rendering, token for token (nothing lost).
    let text = bundle().render_chat(&conversation(), false).unwrap();
    assert!(text.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    assert_eq!(format!("{}\n", tok.decode(&ids, false).unwrap()), text);
    // The first prompt is tokenized exactly as `generate` will see it.
    let first = labels.iter().position(|&l| l != IGNORE_INDEX).unwrap();
    assert_eq!(
        ids[..first],
        enc.encode_prompt(&conversation()[..1]).unwrap()
    );
    let (_, last) = enc
        .encode_messages(&conversation(), AssistantTurns::Last)
        .unwrap();
    assert_eq!(
        runs(tok, &ids[..last.len()], &last),
        ["You're welcome.<|im_end|>"]
    );
}

#[test]
fn llama3_masks_are_content_plus_eot_id() {
    // Llama 3's template (Meta-Llama-3-8B-Instruct): contents are trimmed, turns end with <|eot_id|>.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    // SmolLM2's BPE plus Llama 3's special tokens, loaded the way a HF directory is.
    let mut inner = bundle().tokenizer.inner().clone();
    let specials = [
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ];
    let added: Vec<tokenizers::AddedToken> = specials
        .iter()
        .map(|s| tokenizers::AddedToken::from(*s, true))
        .collect();
    assert_eq!(inner.add_special_tokens(&added), 4);
    let dir = tempfile::tempdir().unwrap();
    inner
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let cfg = r#"{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    let template = ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let enc = ChatEncoder::new(
        tok,
        template,
        opts(4096, Truncation::Right, AssistantTurns::All),
    );

    let mut msgs = vec![Message::system("Be kind.")];
    msgs.extend(conversation());
    let (ids, labels) = enc.encode_messages(&msgs, AssistantTurns::All).unwrap();
    let tok = enc.tokenizer();
    assert_eq!(
        runs(tok, &ids, &labels),
        [
            "Hello! ✓ Ça va?<|eot_id|>",
            "first line\nsecond {{ line }}<|eot_id|>",
            "You're welcome.<|eot_id|>"
        ]
    );
    assert_eq!(
        tok.id_to_token(ids[0]).as_deref(),
        Some("<|begin_of_text|>")
    );
    let unlabelled: Vec<u32> = ids
        .iter()
        .zip(&labels)
        .filter(|(_, &l)| l == IGNORE_INDEX)
        .map(|(&i, _)| i)
        .collect();
    let prompt_text = tok.decode(&unlabelled, false).unwrap();
    assert!(prompt_text.ends_with("<|start_header_id|>user<|end_header_id|>\n\nThanks.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"), "{prompt_text}");

    // An unfinished last turn: trimmed content, no <|eot_id|>, and the sequence ends there.
    let (open_ids, open_labels) = enc.encode_turns(&msgs, AssistantTurns::All, true).unwrap();
    assert_eq!(
        runs(tok, &open_ids, &open_labels),
        [
            "Hello! ✓ Ça va?<|eot_id|>",
            "first line\nsecond {{ line }}<|eot_id|>",
            "You're welcome."
        ]
    );
    assert_eq!(open_ids[..], ids[..ids.len() - 1]);
}

/// An answer cut at `max_new_tokens` (`unfinished`) is learned up to its last token and never closed:
/// the end-of-turn token and the template text after it are not in the sequence at all.
#[test]
fn unfinished_answers_carry_no_end_of_turn() {
    let enc = chatml(opts(4096, Truncation::Right, AssistantTurns::All));
    let closed = sft(conversation());
    let open = SftExample {
        unfinished: true,
        ..closed.clone()
    };
    let c = enc.encode_sft(&closed).unwrap().unwrap();
    let o = enc.encode_sft(&open).unwrap().unwrap();
    let tok = enc.tokenizer();
    assert_eq!(
        runs(tok, &o.input_ids, &o.labels),
        [
            "Hello! ✓ Ça va?<|im_end|>",
            "  first line\nsecond {{ line }}\n<|im_end|>",
            "You're welcome."
        ]
    );
    // The same tokens, less the closing one.
    assert_eq!(o.input_ids[..], c.input_ids[..c.input_ids.len() - 1]);
    assert_eq!(o.labels[..], c.labels[..c.labels.len() - 1]);
    assert_eq!(o.loss_tokens() + 1, c.loss_tokens());
    let text = tok.decode(&o.input_ids, false).unwrap();
    assert!(
        text.ends_with("<|im_start|>assistant\nYou're welcome."),
        "{text}"
    );

    // In a pair, each side by its own flag; the shared prompt is unchanged.
    let pair = PairExample {
        prompt: vec![Message::user("Is the sky blue?")],
        chosen: "Yes, on a clear day the sky".into(),
        rejected: "I can't help with that.".into(),
        chosen_unfinished: true,
        rejected_unfinished: false,
        category: None,
        harmful: None,
        origin: None,
    };
    let p = enc.encode_pair(&pair).unwrap().unwrap();
    assert_eq!(p.prompt_ids, enc.encode_prompt(&pair.prompt).unwrap());
    assert_eq!(
        tok.decode(&p.chosen.ids, false).unwrap(),
        "Yes, on a clear day the sky"
    );
    assert_eq!(
        tok.decode(&p.rejected.ids, false).unwrap(),
        "I can't help with that.<|im_end|>"
    );
    assert!(p.chosen.mask.iter().chain(&p.rejected.mask).all(|&m| m));
}

#[test]
fn truncation_left_and_right_with_counts() {
    let long = "word ".repeat(60);
    let examples = vec![
        sft(vec![
            Message::user(long.clone()),
            Message::assistant("Short answer."),
        ]),
        sft(vec![
            Message::user("Short question?"),
            Message::assistant("Yes."),
        ]),
    ];
    let full = chatml(opts(4096, Truncation::Right, AssistantTurns::All));
    let n = full
        .encode_sft(&examples[0])
        .unwrap()
        .unwrap()
        .input_ids
        .len();
    let short = full
        .encode_sft(&examples[1])
        .unwrap()
        .unwrap()
        .input_ids
        .len();
    let max = short + 10;
    assert!(n > max + 10);

    // Left keeps the answer; right keeps the start, which here holds no assistant token: dropped.
    let left = chatml(opts(max, Truncation::Left, AssistantTurns::All));
    let (out, stats) = left.encode_all_sft(&examples).unwrap();
    assert_eq!(
        (stats.examples, stats.truncated, stats.dropped_no_loss),
        (2, 1, 0)
    );
    assert_eq!(out[0].input_ids.len(), max);
    assert!(out[0].truncated && !out[1].truncated);
    assert_eq!(
        runs(left.tokenizer(), &out[0].input_ids, &out[0].labels),
        ["Short answer.<|im_end|>"]
    );
    let right = chatml(opts(max, Truncation::Right, AssistantTurns::All));
    let (out, stats) = right.encode_all_sft(&examples).unwrap();
    assert_eq!(
        (stats.examples, stats.truncated, stats.dropped_no_loss),
        (2, 0, 1)
    );
    assert_eq!(out.len(), 1);
    assert_eq!(stats.longest, short);
    assert_eq!(stats.loss_tokens, out[0].loss_tokens());
}

#[test]
fn pairs_share_the_prompt_and_mask_each_answer() {
    let enc = chatml(opts(4096, Truncation::Right, AssistantTurns::All));
    let pair = PairExample {
        prompt: vec![Message::user("Is the sky blue?")],
        chosen: "Yes, on a clear day.".into(),
        rejected: "No.".into(),
        chosen_unfinished: false,
        rejected_unfinished: false,
        category: Some("science".into()),
        harmful: None,
        origin: None,
    };
    let p = enc.encode_pair(&pair).unwrap().unwrap();
    let tok = enc.tokenizer();
    let prompt_ids = enc.encode_prompt(&pair.prompt).unwrap();
    assert_eq!(p.prompt_ids, prompt_ids);
    let labels = |c: &burnish_data::Completion| -> Vec<i64> {
        c.ids
            .iter()
            .zip(&c.mask)
            .map(|(&i, &m)| if m { i as i64 } else { IGNORE_INDEX })
            .collect()
    };
    assert_eq!(
        runs(tok, &p.chosen.ids, &labels(&p.chosen)),
        ["Yes, on a clear day.<|im_end|>"]
    );
    assert_eq!(
        runs(tok, &p.rejected.ids, &labels(&p.rejected)),
        ["No.<|im_end|>"]
    );
    assert!(p.chosen.mask.iter().all(|&m| m));
    assert_eq!(p.category.as_deref(), Some("science"));

    // Right truncation cuts the completions; left the prompt first.
    let max = prompt_ids.len() + 3;
    let right = chatml(opts(max, Truncation::Right, AssistantTurns::All))
        .encode_pair(&pair)
        .unwrap()
        .unwrap();
    assert!(right.truncated);
    assert_eq!(
        (
            right.prompt_ids.len(),
            right.chosen.ids.len(),
            right.rejected.ids.len()
        ),
        (prompt_ids.len(), 3, 3)
    );
    let left = chatml(opts(max, Truncation::Left, AssistantTurns::All))
        .encode_pair(&pair)
        .unwrap()
        .unwrap();
    assert_eq!(left.prompt_ids.len() + left.chosen.ids.len(), max);
    assert_eq!(left.chosen.ids, p.chosen.ids);
    // No room for any completion token: dropped.
    assert!(chatml(opts(
        prompt_ids.len(),
        Truncation::Right,
        AssistantTurns::All
    ))
    .encode_pair(&pair)
    .unwrap()
    .is_none());
}

#[test]
fn templates_that_rewrite_earlier_turns_are_refused() {
    let tok = bundle().tokenizer.clone();
    let src = "{% for m in messages %}{{ m.content }}{% if loop.last %}<|im_end|>{% else %}|{% endif %}{% endfor %}";
    let enc = ChatEncoder::new(
        tok,
        ChatTemplate::new(src, "", "<|im_end|>").unwrap(),
        opts(64, Truncation::Right, AssistantTurns::All),
    );
    let mut ex = sft(vec![
        Message::user("a"),
        Message::assistant("b"),
        Message::user("c"),
        Message::assistant("d"),
    ]);
    ex.origin = Some(burnish_data::Location::line(
        &std::sync::Arc::from(std::path::Path::new("x.jsonl")),
        9,
    ));
    let e = enc.encode_sft(&ex).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "x.jsonl:9: the chat template renders the conversation up to message 1 differently"
        ),
        "{e}"
    );
}
