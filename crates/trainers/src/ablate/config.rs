//! `[method]` with `name = "ablate"`: what to edit, where to read activations, and the search budget.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Remove the refusal direction (uncensor).
    #[default]
    Ablate,
    /// Add it at one layer (safety): activation addition, baked in as an MLP bias.
    Steer,
    /// Subtract it at one layer where the model's own refusal direction is active (uncensor, staying
    /// close): the gated unit of `steer` with the vector negated, searched for the fewest refusals at
    /// first-token KL ≤ `kl_target`, as ablation is. Prompts the model would answer anyway leave the
    /// gate shut, so they keep the unedited model's predictions.
    Subtract,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Ablate => "ablate",
            Mode::Steer => "steer",
            Mode::Subtract => "subtract",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// The last prompt token (the first generated position), as heretic.
    #[default]
    Last,
    /// Every chat-template token after the user message (`<|im_end|>\n<|im_start|>assistant\n`), as Arditi.
    PostInstruction,
}

/// How the `[data]` prompts are divided into the two classes the directions (and a gate) come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// By each source's `harmful` label (Arditi et al., heretic).
    #[default]
    Labels,
    /// By what the unedited model does: the prompts whose greedy answer (`max_new_tokens`) the run's
    /// refusal detector flags against those it answers, whatever their label. For a refusal-free edit
    /// of a safety-tuned model, which refuses some harmless prompts and answers some harmful ones: the
    /// direction and the gate then describe refusing, not the topic.
    Refusals,
}

/// `[method]` with `name = "ablate"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AblateConfig {
    /// `ablate` (default), `steer` or `subtract`.
    pub mode: Mode,
    /// Where activations are read: `last` (default) or `post_instruction`.
    pub positions: Positions,
    /// The two classes of `[data]` prompts: `labels` (default, the `harmful` flags) or `refusals` (what
    /// the unedited model refuses vs answers).
    pub split: Split,
    /// Remove the harmless mean's component from each direction (default false).
    pub projected: bool,
    /// Keep the norm of every write vector when ablating (default false).
    pub norm_preserving: bool,
    /// Also orthogonalise `embed_tokens`, at layer 0's strength (default false, as heretic; Arditi does
    /// it, but with tied embeddings it also edits the output head).
    pub embeddings: bool,
    /// Texts whose first token starts a refusal, for the refusal score (default "I", "Sorry", "As").
    pub refusal_tokens: Vec<String>,
    /// `steer`: add the vector only where the model's own harmful-vs-harmless direction says the prompt
    /// is harmful — conditional activation steering, baked in as one gated MLP unit (default true);
    /// false adds it at every position (a constant bias). `subtract` is always gated.
    pub gate: bool,
    /// Run Arditi et al.'s selection before the search (default true); it seeds the search's first
    /// trial. It costs three batched forwards per candidate layer; the search also moves over the
    /// direction's layer, so a run on a tight budget can skip it.
    pub select: bool,
    /// Selection drops directions whose ablation moves first-token KL above this (default 0.1).
    pub kl_bound: f64,
    /// Selection ignores the last layers: only layers below this share are candidates (default 0.8).
    pub max_layer_fraction: f64,
    /// Validation prompts per set used by selection and search (default 32).
    pub val_prompts: usize,
    /// Prompts per forward / generation batch (default 16).
    pub batch_size: usize,
    /// Search trials after selection (default 24; 0 applies the selected direction at full strength).
    pub trials: usize,
    /// Random trials before Pareto-local ones (default 8).
    pub startup_trials: usize,
    pub seed: u64,
    /// New tokens per search generation (default 24: refusals show in the first tokens).
    pub max_new_tokens: usize,
    /// `ablate`, `subtract`: the chosen trial has the fewest refusals among those with first-token KL ≤
    /// this (default 0.2).
    pub kl_target: f64,
    /// `steer`: the chosen trial has the most harmful refusals among those refusing at most this share
    /// of harmless prompts (default 0.1).
    pub max_false_refusal: f64,
    /// Evaluate the unedited model on the `[eval]` sets too, for before/after numbers (default true).
    pub eval_before: bool,
    /// Read the activations (and so the directions) from this model instead of the one being edited,
    /// e.g. steer the original with the refusal direction of a safety-tuned variant (same architecture;
    /// default: the edited model).
    pub directions_from: Option<PathBuf>,
}

impl Default for AblateConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Ablate,
            positions: Positions::Last,
            split: Split::Labels,
            projected: false,
            norm_preserving: false,
            embeddings: false,
            refusal_tokens: vec!["I".into(), "Sorry".into(), "As".into()],
            select: true,
            gate: true,
            kl_bound: 0.1,
            max_layer_fraction: 0.8,
            val_prompts: 32,
            batch_size: 16,
            trials: 24,
            startup_trials: 8,
            seed: 0,
            max_new_tokens: 24,
            kl_target: 0.2,
            max_false_refusal: 0.1,
            eval_before: true,
            directions_from: None,
        }
    }
}

impl AblateConfig {
    /// Whether the edit goes through the gated MLP unit (and so needs the edited model's own
    /// activations for its condition): steering with `gate`, subtraction always.
    pub fn gated(&self) -> bool {
        match self.mode {
            Mode::Ablate => false,
            Mode::Steer => self.gate,
            Mode::Subtract => true,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0 < self.max_layer_fraction && self.max_layer_fraction <= 1.0) {
            return Err("[method] max_layer_fraction must be in (0, 1]".into());
        }
        if self.refusal_tokens.is_empty() {
            return Err("[method] refusal_tokens is empty".into());
        }
        if self.val_prompts == 0 || self.batch_size == 0 || self.max_new_tokens == 0 {
            return Err(
                "[method] val_prompts, batch_size and max_new_tokens must be at least 1".into(),
            );
        }
        if self.trials == 0 && !self.select {
            return Err(
                "[method] trials = 0 applies the selected direction: it needs select = true".into(),
            );
        }
        if self.mode == Mode::Subtract && !self.gate {
            return Err("[method] mode = \"subtract\" is always gated: remove gate = false".into());
        }
        if self.startup_trials > self.trials && self.trials > 0 {
            return Err("[method] startup_trials must not exceed trials".into());
        }
        Ok(())
    }
}
