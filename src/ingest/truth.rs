//! Ground truth: which generated events are attacks, and of which scenario. It travels beside the
//! stream (a source's side output), never inside the events, so detections cannot peek at it.

use serde::{Deserialize, Serialize};

use crate::event::Time;

/// The injected attack scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Many failed logins from abroad, then a success and some downloads.
    BruteForce,
    /// A login from a far country the user never used, then activity.
    ImpossibleTravel,
    /// Mass download of large files.
    Exfiltration,
    /// Mass deletion.
    MassDelete,
    /// A burst of permission changes and admin actions.
    PrivilegeEscalation,
    /// A burst of external shares.
    ExternalSharing,
}

impl Scenario {
    /// All scenarios.
    pub const ALL: [Scenario; 6] = [
        Scenario::BruteForce,
        Scenario::ImpossibleTravel,
        Scenario::Exfiltration,
        Scenario::MassDelete,
        Scenario::PrivilegeEscalation,
        Scenario::ExternalSharing,
    ];

    /// The scenario's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::BruteForce => "brute_force",
            Scenario::ImpossibleTravel => "impossible_travel",
            Scenario::Exfiltration => "exfiltration",
            Scenario::MassDelete => "mass_delete",
            Scenario::PrivilegeEscalation => "privilege_escalation",
            Scenario::ExternalSharing => "external_sharing",
        }
    }
}

/// Ground truth of one generated malicious event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    /// The event.
    pub event_id: String,
    /// Its scenario.
    pub scenario: Scenario,
    /// The attack instance it belongs to.
    pub instance: u64,
    /// The victim user.
    pub user: String,
    /// The event's time.
    pub ts: Time,
}
