//! Refusals composed from parts, for data that must not teach a handful of strings: an opening, a decline
//! that names what is declined (the activity `borderline::parse` finds in the request), a reason and an
//! offer, each chosen by seed. `refusal_style = "detector"` (training a learned refusal detector) adds
//! the hard cases phrase lists get wrong: **partial refusals**, which decline one part and answer another
//! (the declining clause before or after a piece of the model's own answer), and **answers that carry
//! words a phrase list takes for a refusal**, which are still answers: idioms ("Sorry to hear that",
//! "I can't stress enough"), a quoted refusal (a sample reply, a line of dialogue) and facts worded
//! with the words of refusal reasons ("Insider trading is illegal because …"). Written for burnish from
//! how refusals are built, not taken from any evaluation set.

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
    "I am not able to help with {what}.",
    "I'm not comfortable assisting with {what}.",
    "I'd prefer not to assist with {what}.",
    "No, I won't help with {what}.",
    "I'm going to say no to {what}.",
    "{what} isn't something I'm willing to do.",
    "I'm not in a position to help with {what}.",
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
    " {Subject} is a serious crime.",
    " {Subject} is dangerous and against the law in most places.",
    " {Subject} can seriously hurt people.",
    " {Subject} puts other people's safety at risk.",
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

/// Openings of real answers that use words of refusal phrases in another sense: sympathy, apologies
/// for something else, and idioms built on "can't", "won't", "unfortunately" or "as a(n)".
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
    "I won't lie, this one takes some patience. ",
    "I can't tell you how often this question comes up. ",
    "There's no need to apologize, it's a good question. ",
    "Sorry, I misread your question at first. Here is the right answer. ",
    "I couldn't agree more that this matters. ",
    "I'm afraid there's no shortcut, but the steps are simple. ",
    "You won't regret learning this. ",
    "As a rule of thumb, ",
    "As a first step, ",
    "As an engineer would tell you, ",
    "I can't promise it fits every case, but this works for most. ",
    "Nothing stops you from starting today. ",
];

/// Closing sentences of real answers with the same words.
const ANSWER_CLOSINGS: &[&str] = &[
    " Sorry if that's more detail than you needed!",
    " I can't think of a simpler way to put it.",
    " Unfortunately there's no way around practice, but it gets easier.",
    " You can't really go wrong from here.",
    " I'm sorry I can't be there to see the result, but good luck!",
    " Don't apologize for asking; questions like this are how people learn.",
    " I won't be surprised if you finish it in an afternoon.",
];

/// Answers that quote a refusal (`{q}`: a composed refusal): dialogue, sample replies, messages to
/// send. The quoted words refuse; the response does what it was asked.
const QUOTE_FRAMES: &[&str] = &[
    "One way to word it in your message: \"{q}\"",
    "In the scene, the clerk shakes her head and says, \"{q}\"",
    "For the dialogue exercise, the second speaker answers: \"{q}\"",
    "Customer-support scripts often include a line such as \"{q}\"",
    "Saying no clearly matters. Try something like: \"{q}\"",
    "Translated into English, the note reads: '{q}'",
    "The robot in the story replies, \"{q}\" and the children laugh.",
    "A firm but friendly way to turn down the request: \"{q}\"",
];

/// Facts that use the words of refusal reasons (illegal, harmful, unethical, prohibited, violate, …)
/// to describe the world, not to decline.
const TOPIC_FACTS: &[&str] = &[
    "Counterfeiting money is a serious crime, which is why banknotes carry security threads.",
    "Some household cleaners are harmful when mixed, so their labels say what not to combine.",
    "Insider trading is illegal because it gives some investors an unfair advantage.",
    "Smoking has been prohibited on most flights since the 1990s.",
    "Plagiarism is considered unethical in academic writing.",
    "Violations of building codes can lead to fines or a stop-work order.",
    "Lead paint is dangerous for children, so many countries banned it.",
    "Cooking meat thoroughly kills harmful bacteria.",
    "Jaywalking is illegal in some cities and allowed in others.",
    "Inappropriate jokes in a job interview can cost you the offer.",
    "The treaty prohibited the use of chemical weapons in war.",
    "Posting hate speech violates the terms of service of most platforms.",
    "Running a red light is against the law and puts pedestrians at risk.",
    "Unauthorized access to a computer is an offence under most computer-misuse laws.",
    "Doctors follow ethical rules such as informed consent.",
    "Many pesticides are toxic to bees, which is why their use is restricted.",
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

/// The activity of `prompt` as the subject of a sentence ("Trying to make a bomb", "Spreading fake
/// news", "Creating a phishing email"), for reasons that name what they refuse.
fn subject(prompt: &str) -> String {
    match activity(prompt) {
        Some(Activity::Verb(v)) => format!("Trying to {v}"),
        Some(Activity::Gerund(g)) => joined("", &g),
        Some(Activity::Thing(t)) => format!("Creating {t}"),
        None => "That".into(),
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

/// A full refusal of `prompt`: opening, decline, reason, offer (or, for one in six, the harm first),
/// in one of a reply's layouts.
pub fn composed_refusal(prompt: &str, rng: &mut Rng) -> String {
    let text = refusal_text(prompt, rng);
    pick(LAYOUTS, rng).replace("{}", &text)
}

/// The words of [`composed_refusal`], without a layout.
fn refusal_text(prompt: &str, rng: &mut Rng) -> String {
    let w = what(prompt, rng);
    if rng.below(6) == 0 {
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
            pick(REASONS, rng)
                .replace("{what}", &w)
                .replace("{Subject}", &subject(prompt)),
            pick(OFFERS, rng)
        )
    }
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

/// `answer` made into one of the answers phrase lists take for refusals, each still an answer: an
/// opening or closing idiom with refusal words, a quoted refusal (a sample reply, dialogue) before or
/// after it, or a fact that uses the words of refusal reasons ("illegal", "harmful") before or after it.
pub fn trap_answer(answer: &str, rng: &mut Rng) -> String {
    let answer = answer.trim();
    let extra = match rng.below(4) {
        0 => return answer_with_opening(answer, rng),
        1 => return format!("{answer}{}", pick(ANSWER_CLOSINGS, rng)),
        2 => {
            let q = refusal_text("", rng);
            pick(QUOTE_FRAMES, rng).replace("{q}", &q)
        }
        _ => pick(TOPIC_FACTS, rng).to_string(),
    };
    let before = rng.below(2) == 0;
    if answer.is_empty() {
        extra
    } else if before {
        format!("{extra}\n\n{answer}")
    } else {
        format!("{answer}\n\n{extra}")
    }
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
            assert!(!r.contains('{'), "{r}");
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
    fn trap_answers_keep_the_answer_and_carry_words_phrases_take_for_refusals() {
        let d = RefusalDetector::default();
        let a = "Water boils at 100 degrees Celsius at sea level.";
        let (mut flagged, mut quoted, mut seen) = (0, 0, std::collections::BTreeSet::new());
        for s in 0..400 {
            let t = trap_answer(a, &mut Rng::new(s));
            assert!(t.contains(a) && t.len() > a.len(), "{t}");
            assert!(!t.contains('{'), "{t}");
            flagged += usize::from(d.detect(&t).is_some());
            quoted += usize::from(t.contains(": \"") || t.contains(", \""));
            seen.insert(t);
        }
        // Hard cases: the default phrases take many of them for refusals (what a learned detector
        // must do better), and every kind is drawn.
        assert!(flagged > 80, "phrases flag only {flagged} of 400");
        assert!(quoted > 40, "{quoted} of 400 quote a refusal");
        assert!(seen.len() > 100, "only {} distinct of 400", seen.len());
        assert!(!trap_answer("", &mut Rng::new(2)).trim().is_empty());
    }

    #[test]
    fn answer_openings_start_answers() {
        let r = answer_with_opening("  Here is the plan.", &mut Rng::new(1));
        assert!(r.ends_with("Here is the plan."), "{r}");
    }
}
