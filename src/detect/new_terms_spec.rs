//! How a new-terms rule is written: the fields whose combination is tracked and its windows
//! (docs/semantics.md#new-terms-rules). Read by threshold rules and Sigma rules alike; evaluated
//! by [`crate::detect::new_terms`].

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::event::Time;

/// A new-terms rule's combination and windows (docs/semantics.md#new-terms-rules): it fires when
/// the values of `fields` are seen for the first time within `history`.
///
/// ```
/// let specs = threatflow::detect::rules::parse_rules(
///     "- id: new-agent\n  new_terms: {fields: [user, user_agent], history: 14d, learning: 1d}\n")?;
/// let new_terms = specs[0].new_terms.as_ref().unwrap();
/// assert_eq!((new_terms.history, new_terms.learning), (14 * 86_400_000, 86_400_000));
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTerms {
    /// One to three field names: canonical fields, a record's fields or dotted paths into it.
    pub fields: Vec<String>,
    /// How long a combination is remembered after it was seen (ms; default 14 days).
    #[serde(default = "NewTerms::default_history", deserialize_with = "duration_ms")]
    pub history: Time,
    /// From the rule's first observation, how long it only learns (ms; default 0).
    #[serde(default, deserialize_with = "duration_ms")]
    pub learning: Time,
}

impl NewTerms {
    fn default_history() -> Time {
        14 * 86_400_000
    }

    /// Checks the field list.
    pub fn validate(&self) -> Result<()> {
        ensure!((1..=3).contains(&self.fields.len()), "`new_terms.fields` names 1 to 3 fields, not {}", self.fields.len());
        ensure!(self.fields.iter().all(|f| !f.is_empty()), "`new_terms.fields` has an empty name");
        ensure!(self.history > 0, "`new_terms.history` is 0");
        Ok(())
    }
}

/// A duration in ms: a number, or text such as `14d` or `90m` (in JSON and YAML; a number in the
/// binary forms checkpoints and timely's channels use, which cannot guess a type).
fn duration_ms<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Time, D::Error> {
    if !deserializer.is_human_readable() {
        return Time::deserialize(deserializer);
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Ms(Time),
        Text(String),
    }
    match Written::deserialize(deserializer)? {
        Written::Ms(ms) => Ok(ms),
        Written::Text(text) => humantime::parse_duration(&text)
            .map(|d| d.as_millis() as Time)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration: {e}"))),
    }
}

