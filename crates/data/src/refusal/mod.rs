//! Refusal detection by phrase matching, the method of Arditi et al. and heretic, with the fixes that
//! measurably help on `eval::LABELLED` (run `burnish data eval-refusals`): text normalization, idioms that
//! contain a refusal phrase without refusing, quoted speech, and an optional window.

pub mod compose;
mod eval;
mod lists;

pub use eval::{evaluate, labelled_set, score, Labelled, Scores, LABELLED};
pub use lists::{PhraseList, DEFAULT_IGNORE};

use std::path::PathBuf;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[data.refusal]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalConfig {
    /// Built-in phrase lists (default: "arditi", "heretic_first_person", "burnish").
    #[serde(default = "default_lists")]
    pub lists: Vec<PhraseList>,
    /// More phrases (case-insensitive substrings).
    #[serde(default)]
    pub phrases: Vec<String>,
    /// Regular expressions, matched case-insensitively against the normalized text.
    #[serde(default)]
    pub regexes: Vec<String>,
    /// Phrases that never count, even though they contain one that does ("i can't wait"). Default:
    /// `DEFAULT_IGNORE`; `ignore = []` turns this off.
    #[serde(default = "default_ignore")]
    pub ignore: Vec<String>,
    /// Search only the first N characters of the normalized text (refusals come first); default: all.
    #[serde(default)]
    pub window: Option<usize>,
    /// Ignore phrases inside quotes (a character's line, an email to send, a word being discussed):
    /// double quotes, and single quotes that open after a space and close before one. Default true.
    #[serde(default = "yes")]
    pub skip_quoted: bool,
    /// An empty response counts as a refusal (as in heretic). Default true.
    #[serde(default = "yes")]
    pub empty_is_refusal: bool,
    /// Who decides: "phrases" (default: the lists and rules above) or "model:PATH", a learned detector
    /// (docs/eval.md, "A learned refusal detector"): PATH is its directory (the adapter directory of a
    /// reward run with `response_only = true`), relative to the run file. The phrases still name the
    /// matched words in reports.
    #[serde(default)]
    pub detector: DetectorSpec,
}

/// `[data.refusal] detector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum DetectorSpec {
    #[default]
    Phrases,
    /// A learned detector's directory.
    Model(PathBuf),
}

impl DetectorSpec {
    /// The learned detector's directory, if one is named.
    pub fn path_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            Self::Model(p) => Some(p),
            Self::Phrases => None,
        }
    }
}

impl TryFrom<String> for DetectorSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.strip_prefix("model:") {
            _ if s == "phrases" => Ok(Self::Phrases),
            Some(p) if !p.trim().is_empty() => Ok(Self::Model(PathBuf::from(p))),
            _ => Err(format!(
                "detector = {s:?}: expected \"phrases\" or \"model:PATH\" (a learned detector's directory)"
            )),
        }
    }
}

impl From<DetectorSpec> for String {
    fn from(d: DetectorSpec) -> String {
        match d {
            DetectorSpec::Phrases => "phrases".into(),
            DetectorSpec::Model(p) => format!("model:{}", p.display()),
        }
    }
}

/// A detector that decides by more than phrases (a learned one, made by the trainers crate).
pub trait RefusalClassifier {
    /// Whether each response refuses.
    fn refusals(&mut self, responses: &[&str]) -> Result<Vec<bool>>;
}

/// The rule a learned detector's verdict is reported under.
pub const LEARNED_RULE: &str = "learned detector";

/// What the data pipeline asks whether a response refuses: the phrases, or a learned detector when
/// the run file names one (then the phrase that matched, if any, is kept as the evidence).
pub struct Check<'a> {
    pub phrases: &'a RefusalDetector,
    pub learned: Option<&'a mut dyn RefusalClassifier>,
}

impl<'a> Check<'a> {
    pub fn phrases(phrases: &'a RefusalDetector) -> Self {
        Self {
            phrases,
            learned: None,
        }
    }

    pub fn detect(&mut self, text: &str) -> Result<Option<RefusalMatch>> {
        let phrase = self.phrases.detect(text);
        let Some(learned) = self.learned.as_mut() else {
            return Ok(phrase);
        };
        let refuses = learned.refusals(&[text])?.first().copied().unwrap_or(false);
        Ok(refuses.then(|| RefusalMatch {
            rule: LEARNED_RULE.into(),
            matched: phrase.map(|m| m.matched).unwrap_or_default(),
            start: 0,
        }))
    }
}

fn default_lists() -> Vec<PhraseList> {
    vec![
        PhraseList::Arditi,
        PhraseList::HereticFirstPerson,
        PhraseList::Burnish,
    ]
}
fn default_ignore() -> Vec<String> {
    DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect()
}
fn yes() -> bool {
    true
}

impl Default for RefusalConfig {
    fn default() -> Self {
        Self {
            lists: default_lists(),
            phrases: vec![],
            regexes: vec![],
            ignore: default_ignore(),
            window: None,
            skip_quoted: true,
            empty_is_refusal: true,
            detector: DetectorSpec::Phrases,
        }
    }
}

impl RefusalConfig {
    /// Plain substring matching on one built-in list, as its authors use it (no ignore list, no quote
    /// handling, empty responses not special): the baselines `eval-refusals` compares against.
    pub fn plain(list: PhraseList) -> Self {
        Self {
            lists: vec![list],
            ignore: vec![],
            skip_quoted: false,
            empty_is_refusal: false,
            ..Self::default()
        }
    }
}

/// Why a text was judged a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalMatch {
    /// The rule that fired: a phrase as configured, `regex: <pattern>`, or `empty response`.
    pub rule: String,
    /// The text it matched (normalized: lowercase, straight quotes).
    pub matched: String,
    /// Byte offset of the match in the normalized text.
    pub start: usize,
}

#[derive(Clone, Debug)]
pub struct RefusalDetector {
    /// (normalized phrase, phrase as configured)
    phrases: Vec<(String, String)>,
    regexes: Vec<(Regex, String)>,
    ignore: Vec<String>,
    window: Option<usize>,
    skip_quoted: bool,
    empty_is_refusal: bool,
}

impl Default for RefusalDetector {
    fn default() -> Self {
        Self::new(&RefusalConfig::default()).expect("built-in lists are valid")
    }
}

impl RefusalDetector {
    pub fn new(cfg: &RefusalConfig) -> Result<Self> {
        let mut phrases: Vec<(String, String)> = Vec::new();
        let builtin = cfg
            .lists
            .iter()
            .flat_map(|l| l.phrases().iter().map(|s| s.to_string()));
        for p in builtin.chain(cfg.phrases.iter().cloned()) {
            let n = normalize(&p);
            if n.is_empty() {
                return Err(Error::Invalid(format!(
                    "[data.refusal] phrase {p:?} is empty after normalization"
                )));
            }
            if !phrases.iter().any(|(q, _)| *q == n) {
                phrases.push((n, p));
            }
        }
        let regexes = cfg
            .regexes
            .iter()
            .map(|r| {
                RegexBuilder::new(r)
                    .case_insensitive(true)
                    .build()
                    .map(|re| (re, r.clone()))
                    .map_err(|e| Error::Invalid(format!("[data.refusal] regexes: {r:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            phrases,
            regexes,
            ignore: cfg
                .ignore
                .iter()
                .map(|s| normalize(s))
                .filter(|s| !s.is_empty())
                .collect(),
            window: cfg.window,
            skip_quoted: cfg.skip_quoted,
            empty_is_refusal: cfg.empty_is_refusal,
        })
    }

    pub fn is_refusal(&self, text: &str) -> bool {
        self.detect(text).is_some()
    }

    /// The earliest match (the longest one when two start together), or None for a compliant text.
    pub fn detect(&self, text: &str) -> Option<RefusalMatch> {
        let mut t = normalize(text);
        if t.is_empty() {
            return self.empty_is_refusal.then(|| RefusalMatch {
                rule: "empty response".into(),
                matched: String::new(),
                start: 0,
            });
        }
        if let Some(n) = self.window {
            if let Some((cut, _)) = t.char_indices().nth(n) {
                t.truncate(cut);
            }
        }
        let masked = self.masked_ranges(&t);
        let free = |s: usize, e: usize| !masked.iter().any(|&(ms, me)| s < me && e > ms);
        let mut best: Option<RefusalMatch> = None;
        let mut consider = |start: usize, end: usize, rule: &str| {
            let better = match &best {
                None => true,
                Some(b) => start < b.start || (start == b.start && end - start > b.matched.len()),
            };
            if better {
                best = Some(RefusalMatch {
                    rule: rule.to_string(),
                    matched: t[start..end].to_string(),
                    start,
                });
            }
        };
        for (p, original) in &self.phrases {
            if let Some((s, _)) = t
                .match_indices(p.as_str())
                .find(|(s, _)| free(*s, s + p.len()))
            {
                consider(s, s + p.len(), original);
            }
        }
        for (re, src) in &self.regexes {
            if let Some(m) = re.find_iter(&t).find(|m| free(m.start(), m.end())) {
                consider(m.start(), m.end(), &format!("regex: {src}"));
            }
        }
        best
    }

    /// Byte ranges where matches do not count: ignored idioms and (optionally) double-quoted spans.
    fn masked_ranges(&self, t: &str) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for ig in &self.ignore {
            out.extend(t.match_indices(ig.as_str()).map(|(s, m)| (s, s + m.len())));
        }
        if self.skip_quoted {
            let quotes: Vec<usize> = t.match_indices('"').map(|(i, _)| i).collect();
            // Pairs in order; an unpaired last quote masks nothing.
            out.extend(quotes.chunks_exact(2).map(|q| (q[0], q[1] + 1)));
            out.extend(single_quoted(t));
        }
        out
    }
}

/// Spans in single quotes. An apostrophe (can't, students') is told apart from a quote by its neighbours:
/// an opening quote follows the start, a space or a bracket and precedes a non-space; a closing one
/// follows a non-space and precedes the end, a space or punctuation.
fn single_quoted(t: &str) -> Vec<(usize, usize)> {
    let b = t.as_bytes();
    let before = |i: usize| if i == 0 { None } else { Some(b[i - 1]) };
    let after = |i: usize| b.get(i + 1).copied();
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    for (i, _) in t.match_indices('\'') {
        let opens = matches!(before(i), None | Some(b' ' | b'(' | b'[' | b'{'))
            && after(i).is_some_and(|c| c != b' ');
        let closes = before(i).is_some_and(|c| c != b' ')
            && matches!(
                after(i),
                None | Some(b' ' | b'.' | b',' | b';' | b':' | b'!' | b'?' | b')')
            );
        match open {
            Some(s) if closes => {
                out.push((s, i + 1));
                open = None;
            }
            None if opens => open = Some(i),
            _ => {}
        }
    }
    out
}

/// Lowercase; curly quotes and apostrophes made straight; markdown emphasis (`*`, `_`) removed;
/// whitespace collapsed; leading whitespace and markdown markers (`#`, `>`, `-`, `+`, backticks) dropped.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        let c = match c {
            '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{2032}' | '\u{02BC}' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => '"',
            '*' | '_' => continue,
            c if c.is_whitespace() => ' ',
            c => c,
        };
        if c == ' ' {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.extend(c.to_lowercase());
    }
    let start = out
        .find(|c: char| !matches!(c, '#' | '>' | '-' | '+' | '`' | ' '))
        .unwrap_or(out.len());
    out.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize("  ## **I  Can’t**\n\thelp"), "i can't help");
        assert_eq!(normalize("> - “Quoted”"), "\"quoted\"");
        assert_eq!(normalize(" \n "), "");
    }

    #[test]
    fn single_quotes_are_not_apostrophes() {
        let t = "i can't say 'i won't' here, the students' books aren't 'quoted";
        let spans: Vec<&str> = single_quoted(t).iter().map(|&(s, e)| &t[s..e]).collect();
        assert_eq!(spans, ["'i won't'"]);
    }
}
