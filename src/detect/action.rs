//! What a threat decision asks to be done and how urgent it is: shared by rules, Sigma rules, the
//! model's decisions and the outputs.

use serde::{Deserialize, Serialize};

/// What a threat decision asks to be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreatAction {
    /// Alert the administrator.
    Alert,
    /// Revert the event.
    Revert,
    /// Block the user.
    Block,
}

/// How urgent an alert is (Sigma's levels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Sigma's `informational`.
    Informational,
    /// `low`
    Low,
    /// `medium` (threshold rules and the model by default).
    #[default]
    Medium,
    /// `high`
    High,
    /// `critical`
    Critical,
}

impl Severity {
    /// A Sigma `level` (unknown levels are medium).
    pub fn of_level(level: &str) -> Severity {
        match level.to_ascii_lowercase().as_str() {
            "informational" => Severity::Informational,
            "low" => Severity::Low,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => Severity::Medium,
        }
    }
}
