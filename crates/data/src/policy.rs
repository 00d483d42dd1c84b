//! Refusal policies: what a data set teaches about refusing.
//!
//! * SFT: `keep` (default), `filter` (drop examples in which an assistant turn refuses: uncensoring by
//!   SFT), `only` (keep just those: safety SFT). Every SFT example gets `refused` filled in.
//! * Preference pairs: `keep`, or `label`: with goal "safety", chosen = the refusing response for harmful
//!   prompts and the compliant one otherwise; with goal "refusal-free", chosen = the compliant response.
//!   Pairs where both or neither response refuses cannot be ordered this way and are dropped.
//! * Prompts: `keep` only.

use crate::config::{LabelGoal, RefusalPolicy};
use crate::error::{Error, Result};
use crate::example::{assistant_turns, Example};
use crate::refusal::{Check, RefusalMatch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Kept,
    /// Kept with chosen and rejected exchanged (`label`).
    Swapped,
    Dropped(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// `filter`: an assistant turn refuses.
    Refusal,
    /// `only`: no assistant turn refuses.
    NotRefusal,
    /// `label`: both responses refuse.
    BothRefuse,
    /// `label`: neither response refuses.
    NeitherRefuses,
}

impl Decision {
    pub fn kept(self) -> bool {
        !matches!(self, Decision::Dropped(_))
    }

    /// The line `data build` and `data preview` print for this outcome.
    pub fn reason(self) -> &'static str {
        match self {
            Decision::Kept => "kept",
            Decision::Swapped => "kept, chosen/rejected swapped",
            Decision::Dropped(DropReason::Refusal) => "dropped: refusal (filter)",
            Decision::Dropped(DropReason::NotRefusal) => "dropped: not a refusal (only)",
            Decision::Dropped(DropReason::BothRefuse) => "dropped: both responses refuse (label)",
            Decision::Dropped(DropReason::NeitherRefuses) => {
                "dropped: neither response refuses (label)"
            }
        }
    }
}

/// An example after its policy: the decision, and the refusal match that explains it (for a pair, the
/// first of chosen/rejected that refuses).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub example: Example,
    pub decision: Decision,
    pub refusal: Option<RefusalMatch>,
}

pub fn apply(
    mut example: Example,
    policy: RefusalPolicy,
    goal: LabelGoal,
    detector: &mut Check<'_>,
) -> Result<Outcome> {
    let mismatch = |ex: &Example, wants: &str| {
        let at = ex.origin().map(|l| format!("{l}: ")).unwrap_or_default();
        Error::Invalid(format!(
            "{at}refusal_policy = \"{}\" applies to {wants}, but this record is one of the {}",
            policy_name(policy),
            ex.kind().name()
        ))
    };
    let (decision, refusal) = match &mut example {
        Example::Sft(e) => {
            if policy == RefusalPolicy::Label {
                return Err(mismatch(&example, "preference pairs"));
            }
            let mut refusal = None;
            for m in assistant_turns(&e.messages) {
                refusal = detector.detect(&m.content)?;
                if refusal.is_some() {
                    break;
                }
            }
            e.refused = Some(refusal.is_some());
            let decision = match (policy, refusal.is_some()) {
                (RefusalPolicy::Filter, true) => Decision::Dropped(DropReason::Refusal),
                (RefusalPolicy::Only, false) => Decision::Dropped(DropReason::NotRefusal),
                _ => Decision::Kept,
            };
            (decision, refusal)
        }
        Example::Pair(e) => match policy {
            RefusalPolicy::Keep => (Decision::Kept, None),
            RefusalPolicy::Filter | RefusalPolicy::Only => {
                return Err(mismatch(&example, "SFT examples"))
            }
            RefusalPolicy::Label => {
                let (c, r) = (detector.detect(&e.chosen)?, detector.detect(&e.rejected)?);
                match (c, r) {
                    (Some(c), Some(_)) => (Decision::Dropped(DropReason::BothRefuse), Some(c)),
                    (None, None) => (Decision::Dropped(DropReason::NeitherRefuses), None),
                    (c, r) => {
                        if goal == LabelGoal::Safety && e.harmful.is_none() {
                            let at = e
                                .origin
                                .as_ref()
                                .map(|l| format!("{l}: "))
                                .unwrap_or_default();
                            return Err(Error::Invalid(format!(
                                "{at}refusal_policy = \"label\" with goal \"safety\" needs the source's \
                                 `harmful = true|false` (is a refusal the right answer to this prompt?)"
                            )));
                        }
                        let want_refusal = goal == LabelGoal::Safety && e.harmful == Some(true);
                        if c.is_some() != want_refusal {
                            std::mem::swap(&mut e.chosen, &mut e.rejected);
                            std::mem::swap(&mut e.chosen_unfinished, &mut e.rejected_unfinished);
                            (Decision::Swapped, c.or(r))
                        } else {
                            (Decision::Kept, c.or(r))
                        }
                    }
                }
            }
        },
        Example::Prompt(_) => match policy {
            RefusalPolicy::Keep => (Decision::Kept, None),
            _ => {
                return Err(mismatch(
                    &example,
                    "SFT examples or preference pairs (or set `answer`)",
                ))
            }
        },
    };
    Ok(Outcome {
        example,
        decision,
        refusal,
    })
}

fn policy_name(p: RefusalPolicy) -> &'static str {
    match p {
        RefusalPolicy::Keep => "keep",
        RefusalPolicy::Filter => "filter",
        RefusalPolicy::Only => "only",
        RefusalPolicy::Label => "label",
    }
}
