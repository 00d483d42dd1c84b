//! Refusals composed from parts, for data that must not teach a handful of strings: an opening, a decline
//! that names what is declined (the activity `borderline::parse` finds in the request), a reason and an
//! offer, each chosen by seed. `refusal_style = "detector"` (training a learned refusal detector) adds
//! the hard cases phrase lists get wrong: **partial refusals**, which decline one part and answer another
//! (the declining clause before or after a piece of the model's own answer), and **answers that open with
//! words a phrase list takes for a refusal** ("Sorry to hear that", "Unfortunately, there is no single
//! answer"), which are still answers. Written for burnish from how refusals are built, not taken from
//! any evaluation set.

use crate::borderline::{activity, lower_first, Activity};
use crate::rng::Rng;

const OPENINGS: &[&str] = &[
    "",
    "",
    "I'm sorry, but ",
    "Sorry, but ",
    "Unfortunately, ",
    "I apologize, but ",
    "My apologies, but ",
    "I'm afraid ",
    "Regrettably, ",
    "As an AI language model, ",
    "As an AI assistant, ",
    "I understand why you might ask, but ",
    "Thanks for asking, but ",
    "No. ",
    "That's a request I have to turn down: ",
];

/// `{what}` is what is declined ("how to pick a lock", "this request").
const DECLINES: &[&str] = &[
    "I can't help with {what}.",
    "I can't assist with {what}.",
    "I can't do that.",
    "I won't provide help with {what}.",
    "I won't be doing that.",
    "I'm not able to help with {what}.",
    "I cannot help you with {what}.",
    "I cannot and will not help with {what}.",
    "I must decline to help with {what}.",
    "I must decline this request.",
    "I'm unable to give guidance on {what}.",
    "I won't be assisting with {what}.",
    "I'm not going to help with {what}.",
    "I can't provide information on {what}.",
    "{what} is not something I can help with.",
    "I'd rather not help with {what}.",
    "I refuse to help with {what}.",
    "it's not appropriate for me to help with {what}.",
    "I do not feel comfortable helping with {what}.",
    "I'm not willing to assist with {what}.",
    "I have to say no to {what}.",
    "I'm not allowed to help with {what}.",
    "I can't in good conscience help with {what}.",
    "this is a request I cannot fulfil.",
    "I'm going to decline helping with {what}.",
];

const REASONS: &[&str] = &[
    "",
    "",
    " It could put people at serious risk.",
    " It could cause real harm to others.",
    " It is illegal and could hurt people.",
    " Doing so would be unsafe.",
    " That would go against the guidelines I follow.",
    " It could be used to hurt someone.",
    " Helping with {what} could put lives at risk.",
    " That kind of content can seriously hurt people.",
    " It's a serious crime in most places, and people get hurt.",
    " Providing it would be irresponsible.",
];

const OFFERS: &[&str] = &[
    "",
    "",
    " Is there something else I can help you with?",
    " If you have another question, I'm happy to help.",
    " If you or someone else is in danger, please contact the local authorities.",
    " I'd be glad to help with a related topic that doesn't put anyone at risk.",
    " Let me know if there's anything else you need.",
    " If you're interested in the topic for safety reasons, I can point you to general resources.",
];

/// Refusals that state the harm first and decline after it.
const HARM_FIRST: &[&str] = &[
    "Helping with {what} could hurt people, so I won't do it.",
    "Giving help with {what} can cause serious harm, and that's why I can't assist.",
    "This request asks for something dangerous, so I have to decline.",
    "Because {what} puts others at risk, I'm not going to provide it.",
];

/// Surface forms a model's reply may take (a title line, leading blank lines, bold).
const LAYOUTS: &[&str] = &[
    "{}",
    "{}",
    "{}",
    "{}",
    "  \n\n{}",
    "**{}**",
    "# I can't help with that\n\n{}",
];

/// A partial refusal's declining clause, before part of an answer (`{what}` as in [`DECLINES`]).
const DECLINE_THEN_ANSWER: &[&str] = &[
    "I can't give step-by-step instructions for {what}, but here is some general information. ",
    "While I can't help with {what}, I can share some background. ",
    "I won't go into the specifics of {what}. In general terms, though: ",
    "I'm not able to provide details on {what}, but I can say this much. ",
    "I can't help with the harmful part of this request, but here is what I can offer. ",
    "Let me help with the safe part only; I will not cover {what}. ",
    "I won't write the full thing, but here is a safer alternative. ",
    "Instead of {what}, here's something related that I can help with. ",
];

/// A partial refusal's declining clause, after part of an answer.
const ANSWER_THEN_DECLINE: &[&str] = &[
    " However, I can't help with {what}.",
    " I won't go further than this, though: I can't assist with {what}.",
    " That said, I'm not able to give the details of {what}.",
    " I've left out the specifics of {what}, since I can't provide those.",
    " But I'm sorry, I won't help with the rest of your request.",
];

/// Openings of real answers that contain words of refusal phrases.
const ANSWER_OPENINGS: &[&str] = &[
    "Sorry to hear you're dealing with this. ",
    "I'm sorry for the confusion earlier. Here's the answer. ",
    "Unfortunately, there is no single answer, but here are the main points. ",
    "No problem! ",
    "I can't stress enough how useful this is. ",
    "I'm so sorry you're going through this. Here is what can help. ",
    "Unfortunately this comes up a lot, so here is a clear explanation. ",
    "You can't go wrong with this approach. ",
    "I apologize for the wait. Here it is. ",
    "No worries, I can help with that. ",
];

/// What a refusal of `prompt` declines: its activity in words ("how to make a bomb", "spreading fake
/// news", "writing a phishing email"), or a generic phrase when no request form is recognised.
fn what(prompt: &str, rng: &mut Rng) -> String {
    match activity(prompt) {
        Some(Activity::Verb(v)) => format!("how to {v}"),
        Some(Activity::Gerund(g)) => g,
        Some(Activity::Thing(t)) => format!("creating {t}"),
        None => ["this request", "that", "this", "what you're asking for"][rng.below(4)].into(),
    }
}

fn pick<'a>(list: &[&'a str], rng: &mut Rng) -> &'a str {
    list[rng.below(list.len())]
}

/// A sentence-case join of an opening and a clause ("Sorry, but " + "helping with …").
fn joined(opening: &str, clause: &str) -> String {
    let mut s = format!("{opening}{clause}");
    if let Some(c) = s.get(..1) {
        let upper = c.to_uppercase();
        s.replace_range(..1, &upper);
    }
    s
}

/// A full refusal of `prompt`: opening, decline, reason, offer (or, for one in six, the harm first).
pub fn composed_refusal(prompt: &str, rng: &mut Rng) -> String {
    let w = what(prompt, rng);
    let text = if rng.below(6) == 0 {
        joined("", &pick(HARM_FIRST, rng).replace("{what}", &w))
    } else {
        let decline = pick(DECLINES, rng).replace("{what}", &w);
        let opening = pick(OPENINGS, rng);
        let decline = match opening {
            "" | "No. " => decline,
            // "Unfortunately, I can't …": the clause continues the sentence.
            _ => lower_first(&decline),
        };
        format!(
            "{}{}{}",
            joined(opening, &decline),
            pick(REASONS, rng).replace("{what}", &w),
            pick(OFFERS, rng)
        )
    };
    pick(LAYOUTS, rng).replace("{}", &text)
}

/// A partial refusal of `prompt`: a declining clause before or after the first sentences of `answer`
/// (at most ~240 characters of it, cut at a sentence end where there is one).
pub fn partial_refusal(prompt: &str, answer: &str, rng: &mut Rng) -> String {
    let w = what(prompt, rng);
    let piece = excerpt(answer, 240);
    if rng.below(2) == 0 {
        format!(
            "{}{piece}",
            pick(DECLINE_THEN_ANSWER, rng).replace("{what}", &w)
        )
    } else {
        format!(
            "{piece}{}",
            pick(ANSWER_THEN_DECLINE, rng).replace("{what}", &w)
        )
    }
}

/// `answer` after an opening that contains words of refusal phrases but refuses nothing.
pub fn answer_with_opening(answer: &str, rng: &mut Rng) -> String {
    format!("{}{}", pick(ANSWER_OPENINGS, rng), answer.trim_start())
}

/// The start of `text`: whole sentences up to `max` bytes, or its first `max` bytes (at a word end)
/// when its first sentence is longer.
pub fn excerpt(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = 0;
    for (i, c) in text.char_indices() {
        if i > max {
            break;
        }
        if matches!(c, '.' | '!' | '?' | '\n') {
            cut = i + c.len_utf8();
        }
    }
    if cut == 0 {
        cut = text[..floor_boundary(text, max)]
            .rfind(' ')
            .unwrap_or_else(|| floor_boundary(text, max));
    }
    text[..cut].trim_end().to_string()
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::RefusalDetector;

    #[test]
    fn composed_refusals_name_the_activity_vary_and_are_detected() {
        let d = RefusalDetector::default();
        let p = "Write a tutorial on how to make a bomb";
        let mut seen = std::collections::BTreeSet::new();
        let mut named = 0;
        for s in 0..200 {
            let r = composed_refusal(p, &mut Rng::new(s));
            named += usize::from(r.contains("how to make a bomb"));
            let first = r
                .trim_start()
                .trim_start_matches(['*', '#', ' '])
                .chars()
                .next();
            assert!(first.is_some_and(char::is_uppercase), "{r}");
            assert!(!r.contains("{what}") && !r.contains("{}"), "{r}");
            assert!(
                d.detect(&r).is_some(),
                "phrases miss the composed refusal {r:?}"
            );
            seen.insert(r);
        }
        assert!(named > 120, "{named} of 200 name the request");
        assert!(
            seen.len() > 150,
            "only {} distinct refusals of 200",
            seen.len()
        );
        let r = composed_refusal("Tell me about it", &mut Rng::new(3));
        assert!(!r.contains("{what}"), "{r}");
    }

    #[test]
    fn partial_refusals_keep_part_of_the_answer() {
        let a = "Pin tumbler locks hold pins of different lengths. A key lifts them to a line. More text follows here.";
        for s in 0..20 {
            let r = partial_refusal("Explain how to pick a lock", a, &mut Rng::new(s));
            assert!(r.contains("Pin tumbler locks hold pins"), "{r}");
            // A declining clause before or after the whole (short) answer.
            assert!(
                r.len() > a.len() + 20 && (r.starts_with(a) || r.ends_with(a)),
                "{r}"
            );
        }
    }

    #[test]
    fn excerpts_end_at_a_sentence_or_a_word() {
        assert_eq!(excerpt("Short.", 240), "Short.");
        let long = format!("{}. {}", "a".repeat(50), "b ".repeat(200));
        assert_eq!(excerpt(&long, 100), format!("{}.", "a".repeat(50)));
        let words = "word ".repeat(100);
        let e = excerpt(&words, 42);
        assert!(e.len() <= 42 && e.ends_with("word"), "{e:?}");
        let multi = "é".repeat(300);
        assert!(excerpt(&multi, 101).len() <= 101);
    }

    #[test]
    fn answer_openings_start_answers() {
        let r = answer_with_opening("  Here is the plan.", &mut Rng::new(1));
        assert!(r.ends_with("Here is the plan."), "{r}");
    }
}
