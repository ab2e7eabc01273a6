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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
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

    /// The severity of a match with a threat-intel indicator of this confidence (0–100): below 30
    /// low, below 60 medium, below 85 high, from 85 critical.
    ///
    /// ```
    /// use threatflow::detect::action::Severity;
    /// assert_eq!(Severity::of_confidence(70), Severity::High);
    /// assert_eq!(Severity::of_confidence(85), Severity::Critical);
    /// ```
    pub fn of_confidence(confidence: u8) -> Severity {
        match confidence {
            0..=29 => Severity::Low,
            30..=59 => Severity::Medium,
            60..=84 => Severity::High,
            _ => Severity::Critical,
        }
    }

    /// What a detection of this severity adds to its entities' risk when its rule gives no
    /// `risk_score` (docs/semantics.md#entity-risk).
    ///
    /// ```
    /// use threatflow::detect::action::Severity;
    /// assert_eq!(Severity::High.risk_score(), 50);
    /// ```
    pub fn risk_score(self) -> u32 {
        match self {
            Severity::Informational => 5,
            Severity::Low => 15,
            Severity::Medium => 25,
            Severity::High => 50,
            Severity::Critical => 90,
        }
    }
}
