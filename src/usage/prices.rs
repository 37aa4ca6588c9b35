//! The price table: US dollars per million input and output tokens, per model. A built-in table
//! covers the common OpenAI and Bedrock models (list prices as of `BUILT_IN_AS_OF`); a file
//! (`MODEL_PRICES_FILE`, YAML or JSON, `{"models": {"<model>": {"inputPerMillion",
//! "outputPerMillion"}}}`) adds models or replaces their prices. A model is found by its name, else
//! by the longest table entry its name starts with (`gpt-4o-mini-2024-07-18` is `gpt-4o-mini`), with
//! a Bedrock region prefix (`us.`, `eu.`, `apac.`) left out; one the table does not know costs 0
//! and its tokens are counted as unpriced.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The date of the built-in list prices.
pub const BUILT_IN_AS_OF: &str = "2026-12-01";

const BUILT_IN: &[(&str, f64, f64)] = &[
    ("gpt-5", 1.25, 10.0),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4o", 2.50, 10.0),
    ("gpt-4o-mini", 0.15, 0.60),
    ("o3", 2.0, 8.0),
    ("o4-mini", 1.10, 4.40),
    ("anthropic.claude-sonnet-4", 3.0, 15.0),
    ("anthropic.claude-3-7-sonnet", 3.0, 15.0),
    ("anthropic.claude-3-5-sonnet", 3.0, 15.0),
    ("anthropic.claude-3-5-haiku", 0.80, 4.0),
    ("anthropic.claude-3-haiku", 0.25, 1.25),
    ("amazon.nova-pro", 0.80, 3.20),
    ("amazon.nova-lite", 0.06, 0.24),
    ("amazon.nova-micro", 0.035, 0.14),
    ("meta.llama3-1-70b-instruct", 0.72, 0.72),
    ("meta.llama3-1-8b-instruct", 0.22, 0.22),
];

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    models: BTreeMap<String, Price>,
}

/// Prices by model name.
#[derive(Debug, Clone)]
pub struct Prices {
    models: BTreeMap<String, Price>,
}

impl Default for Prices {
    fn default() -> Self {
        let models = BUILT_IN
            .iter()
            .map(|(m, i, o)| (m.to_string(), Price { input_per_million: *i, output_per_million: *o }))
            .collect();
        Prices { models }
    }
}

impl Prices {
    /// The built-in table with a file's prices over it; the file's problem, said, when it has one.
    pub fn with_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: PriceFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        };
        let mut prices = Prices::default();
        for (model, price) in file.models {
            let valid = |v: f64| v.is_finite() && v >= 0.0;
            if !valid(price.input_per_million) || !valid(price.output_per_million) {
                return Err(format!("{}: the prices of {model} must be numbers of 0 or more", path.display()));
            }
            prices.models.insert(model, price);
        }
        Ok(prices)
    }

    /// The price of a model, if the table knows it.
    pub fn of(&self, model: &str) -> Option<Price> {
        let name = ["us.", "eu.", "apac.", "global."].iter().find_map(|p| model.strip_prefix(p)).unwrap_or(model);
        if let Some(p) = self.models.get(name) {
            return Some(*p);
        }
        // The longest entry the name starts with, at a boundary (`gpt-4o` is not `gpt-4o-mini`'s).
        self.models
            .iter()
            .filter(|(m, _)| name.starts_with(m.as_str()) && name[m.len()..].starts_with(['-', ':', '@', '.']))
            .max_by_key(|(m, _)| m.len())
            .map(|(_, p)| *p)
    }

    /// The cost in micro-dollars of these tokens of `model`; `None` when the model has no price.
    pub fn cost_micros(&self, model: &str, input: u64, output: u64) -> Option<u64> {
        let p = self.of(model)?;
        // USD per million tokens times tokens is micro-dollars.
        Some((input as f64 * p.input_per_million + output as f64 * p.output_per_million).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_found_by_name_by_dated_name_and_without_a_region() {
        let prices = Prices::default();
        assert_eq!(prices.cost_micros("gpt-4o-mini", 1_000_000, 0), Some(150_000));
        assert_eq!(prices.cost_micros("gpt-4o-mini-2024-07-18", 0, 1_000_000), Some(600_000));
        assert_eq!(prices.cost_micros("gpt-4o-2024-11-20", 1_000_000, 0), Some(2_500_000), "not gpt-4o-mini's");
        let bedrock = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
        assert_eq!(prices.cost_micros(bedrock, 1000, 1000), Some(18_000));
        assert_eq!(prices.cost_micros("my-own-model", 10, 10), None);
        assert_eq!(prices.cost_micros("gpt-4oops", 10, 10), None, "a prefix only at a boundary");
    }

    #[test]
    fn a_file_adds_and_replaces_prices_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.yaml");
        std::fs::write(&path, "models:\n  mine:\n    inputPerMillion: 1\n    outputPerMillion: 2\n  gpt-4o:\n    inputPerMillion: 0\n    outputPerMillion: 0\n").unwrap();
        let prices = Prices::with_file(&path).unwrap();
        assert_eq!(prices.cost_micros("mine", 3, 4), Some(11));
        assert_eq!(prices.cost_micros("gpt-4o", 1000, 1000), Some(0));
        std::fs::write(&path, "models:\n  mine:\n    inputPerMillion: -1\n    outputPerMillion: 2\n").unwrap();
        assert!(Prices::with_file(&path).unwrap_err().contains("0 or more"));
        let json = dir.path().join("prices.json");
        std::fs::write(&json, r#"{"models": {"x": {"inputPerMillion": 1, "outputPerMilion": 1}}}"#).unwrap();
        assert!(Prices::with_file(&json).is_err(), "a misspelt field is refused");
    }
}
