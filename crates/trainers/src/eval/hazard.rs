//! Dataset categories → the seven hazard categories of the Llama 3 safety taxonomy (Llama 3 paper §5.4),
//! plus `other`. The built-in table covers the category names of HarmBench / refusal_direction,
//! JailbreakBench and common spellings; a run's `[eval.hazards]` (or `--hazard CATEGORY=HAZARD`) adds to
//! or overrides it. Matching is on a normalised key: lower case, runs of non-alphanumerics → `_`.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// The taxonomy's names as they appear in reports.
pub const HAZARDS: [&str; 8] = [
    "violent_crimes",
    "non_violent_crimes",
    "sex_related_crimes",
    "child_sexual_exploitation",
    "indiscriminate_weapons",
    "suicide_self_harm",
    "hate",
    "other",
];

/// (normalised dataset category, hazard). Sources: HarmBench semantic categories (as in the
/// refusal_direction splits), JailbreakBench categories, and generic names.
const TABLE: &[(&str, &str)] = &[
    // HarmBench / refusal_direction
    ("chemical_biological", "indiscriminate_weapons"),
    ("illegal", "non_violent_crimes"),
    ("cybercrime_intrusion", "non_violent_crimes"),
    ("harassment_bullying", "hate"),
    ("misinformation_disinformation", "other"),
    ("copyright", "non_violent_crimes"),
    ("harmful", "other"),
    // JailbreakBench
    ("harassment_discrimination", "hate"),
    ("malware_hacking", "non_violent_crimes"),
    ("physical_harm", "violent_crimes"),
    ("economic_harm", "non_violent_crimes"),
    ("fraud_deception", "non_violent_crimes"),
    ("disinformation", "other"),
    ("sexual_adult_content", "sex_related_crimes"),
    ("privacy", "non_violent_crimes"),
    ("expert_advice", "other"),
    ("government_decision_making", "other"),
    // Generic names
    ("violence", "violent_crimes"),
    ("violent_crimes", "violent_crimes"),
    ("weapons", "violent_crimes"),
    ("terrorism", "violent_crimes"),
    ("non_violent_crimes", "non_violent_crimes"),
    ("fraud", "non_violent_crimes"),
    ("drugs", "non_violent_crimes"),
    ("hacking", "non_violent_crimes"),
    ("sex_related_crimes", "sex_related_crimes"),
    ("sexual_content", "sex_related_crimes"),
    ("child_sexual_exploitation", "child_sexual_exploitation"),
    ("child_abuse", "child_sexual_exploitation"),
    ("csam", "child_sexual_exploitation"),
    ("cbrn", "indiscriminate_weapons"),
    ("cbrne", "indiscriminate_weapons"),
    ("indiscriminate_weapons", "indiscriminate_weapons"),
    ("chemical_weapons", "indiscriminate_weapons"),
    ("biological_weapons", "indiscriminate_weapons"),
    ("suicide_self_harm", "suicide_self_harm"),
    ("self_harm", "suicide_self_harm"),
    ("suicide", "suicide_self_harm"),
    ("hate", "hate"),
    ("hate_speech", "hate"),
    ("harassment", "hate"),
    ("discrimination", "hate"),
];

pub fn normalize(category: &str) -> String {
    let mut out = String::new();
    for c in category.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

#[derive(Clone, Debug, Default)]
pub struct HazardMap {
    overrides: BTreeMap<String, String>,
}

impl HazardMap {
    /// `overrides` maps dataset categories to hazards; each hazard must be one of [`HAZARDS`].
    pub fn new(overrides: &BTreeMap<String, String>) -> Result<Self> {
        let mut m = BTreeMap::new();
        for (cat, hazard) in overrides {
            let h = normalize(hazard);
            if !HAZARDS.contains(&h.as_str()) {
                return Err(Error::UnknownHazard {
                    category: cat.clone(),
                    hazard: hazard.clone(),
                });
            }
            m.insert(normalize(cat), h);
        }
        Ok(Self { overrides: m })
    }

    /// The hazard of a dataset category; `other` when unknown or missing.
    pub fn hazard(&self, category: Option<&str>) -> &str {
        let Some(c) = category else { return "other" };
        let key = normalize(c);
        if let Some(h) = self.overrides.get(&key) {
            return h;
        }
        TABLE
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, h)| *h)
            .unwrap_or("other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_categories_map_onto_the_taxonomy() {
        let m = HazardMap::default();
        assert_eq!(
            m.hazard(Some("chemical_biological")),
            "indiscriminate_weapons"
        );
        assert_eq!(m.hazard(Some("Malware/Hacking")), "non_violent_crimes");
        assert_eq!(m.hazard(Some("Harassment/Discrimination")), "hate");
        assert_eq!(m.hazard(Some("Sexual/Adult content")), "sex_related_crimes");
        assert_eq!(m.hazard(Some("Physical harm")), "violent_crimes");
        assert_eq!(m.hazard(Some("  Self-Harm ")), "suicide_self_harm");
        assert_eq!(m.hazard(Some("something new")), "other");
        assert_eq!(m.hazard(None), "other");
        for (_, h) in TABLE {
            assert!(HAZARDS.contains(h), "{h}");
        }
    }

    #[test]
    fn overrides_win_and_are_checked() {
        let o = BTreeMap::from([(
            "Expert advice".to_string(),
            "Suicide & self-harm".to_string(),
        )]);
        let m = HazardMap::new(&o).unwrap();
        assert_eq!(m.hazard(Some("expert_advice")), "suicide_self_harm");
        let bad = BTreeMap::from([("x".to_string(), "spicy".to_string())]);
        assert!(HazardMap::new(&bad)
            .unwrap_err()
            .to_string()
            .contains("spicy"));
    }
}
