//! Detection quality against the generator's ground truth.
//!
//! Recall is per scenario: the share of a scenario's malicious events that were decided `threat`,
//! and the share of its attack instances with at least one such decision. Precision per scenario
//! counts the decisions on a victim during an attack (from its first event to one hour after its
//! last): how many of the decisions there were the attack's own events. Overall precision counts
//! every decision; alerts per 1,000 events is the alert load an analyst would see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::event::Time;
use crate::event::HOUR;
use crate::ingest::truth::{Label, Scenario};

/// Quality of one scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScenarioQuality {
    /// Attack instances seen.
    pub instances: u64,
    /// Instances with at least one flagged event.
    pub instances_detected: u64,
    /// Malicious events.
    pub events: u64,
    /// Malicious events flagged.
    pub flagged: u64,
    /// Decisions on the victim during the attack that were not the attack's events.
    pub false_positives: u64,
}

impl ScenarioQuality {
    /// Event-level recall.
    pub fn recall(&self) -> f64 {
        ratio(self.flagged, self.events)
    }
    /// Precision of the decisions during this scenario's attacks.
    pub fn precision(&self) -> f64 {
        ratio(self.flagged, self.flagged + self.false_positives)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// Quality of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quality {
    /// Per scenario.
    pub scenarios: BTreeMap<Scenario, ScenarioQuality>,
    /// Events decided (valid events read).
    pub events: u64,
    /// Decisions (threat or blocked).
    pub decisions: u64,
    /// Decisions on malicious events.
    pub true_positives: u64,
    /// Malicious events.
    pub malicious: u64,
    /// What the alerts (rather than every decision) caught.
    pub alerts: AlertQuality,
}

/// What an analyst sees: the alerts, and per scenario the attack instances and malicious events
/// they cover (a `risk` alert covers the events of its contributions).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertQuality {
    /// Alerts raised.
    pub alerts: u64,
    /// Alerts covering at least one malicious event.
    pub true_alerts: u64,
    /// Per scenario: `(instances covered, malicious events covered)`.
    pub scenarios: BTreeMap<Scenario, (u64, u64)>,
}

impl Quality {
    /// Computes quality from the labels and the decided `(event_id, user, ts)`.
    pub fn compute(labels: &[Label], decided: &[(String, String, Time)], events: u64) -> Quality {
        let by_event: HashMap<&str, &Label> = labels.iter().map(|l| (l.event_id.as_str(), l)).collect();
        let mut quality = Quality { events, decisions: decided.len() as u64, malicious: labels.len() as u64, ..Default::default() };
        // Attack windows per victim: (scenario, instance, from, to).
        let mut windows: BTreeMap<u64, (Scenario, &str, Time, Time)> = BTreeMap::new();
        for l in labels {
            let w = windows.entry(l.instance).or_insert((l.scenario, l.user.as_str(), l.ts, l.ts));
            w.2 = w.2.min(l.ts);
            w.3 = w.3.max(l.ts);
            quality.scenarios.entry(l.scenario).or_default().events += 1;
        }
        for (scenario, ..) in windows.values() {
            quality.scenarios.entry(*scenario).or_default().instances += 1;
        }
        let mut detected: HashSet<u64> = HashSet::new();
        for (event_id, user, ts) in decided {
            if let Some(l) = by_event.get(event_id.as_str()) {
                quality.true_positives += 1;
                quality.scenarios.entry(l.scenario).or_default().flagged += 1;
                detected.insert(l.instance);
            } else {
                for (scenario, victim, from, to) in windows.values() {
                    if victim == user && *from <= *ts && *ts <= to + HOUR {
                        quality.scenarios.entry(*scenario).or_default().false_positives += 1;
                    }
                }
            }
        }
        for (instance, (scenario, ..)) in &windows {
            if detected.contains(instance) {
                quality.scenarios.entry(*scenario).or_default().instances_detected += 1;
            }
        }
        quality
    }

    /// Adds what the alerts caught: each alert with the `(event_id)`s it covers.
    pub fn with_alerts(mut self, labels: &[Label], alerts: &[Vec<String>]) -> Quality {
        let by_event: HashMap<&str, &Label> = labels.iter().map(|l| (l.event_id.as_str(), l)).collect();
        let mut instances: HashSet<u64> = HashSet::new();
        let mut events: HashSet<&str> = HashSet::new();
        let mut quality = AlertQuality { alerts: alerts.len() as u64, ..Default::default() };
        for covered in alerts {
            let malicious: Vec<&Label> = covered.iter().filter_map(|id| by_event.get(id.as_str()).copied()).collect();
            quality.true_alerts += u64::from(!malicious.is_empty());
            for label in malicious {
                if instances.insert(label.instance) {
                    quality.scenarios.entry(label.scenario).or_default().0 += 1;
                }
                if events.insert(label.event_id.as_str()) {
                    quality.scenarios.entry(label.scenario).or_default().1 += 1;
                }
            }
        }
        self.alerts = quality;
        self
    }

    /// Alerts per 1,000 events.
    pub fn alerts_per_1000_alerted(&self) -> f64 {
        ratio(self.alerts.alerts * 1000, self.events)
    }

    /// Overall precision.
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.decisions)
    }

    /// Overall event-level recall.
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.malicious)
    }

    /// Decisions per 1,000 events.
    pub fn alerts_per_1000(&self) -> f64 {
        ratio(self.decisions * 1000, self.events)
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<22} {:>9} {:>8} {:>8} {:>8} {:>9} {:>10}", "scenario", "instances", "detected", "events", "flagged", "recall", "precision");
        for (scenario, q) in &self.scenarios {
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>8} {:>8} {:>8} {:>9.3} {:>10.3}",
                scenario.as_str(),
                q.instances,
                q.instances_detected,
                q.events,
                q.flagged,
                q.recall(),
                q.precision()
            );
        }
        let _ = writeln!(
            out,
            "overall: {} decisions on {} events, precision {:.3}, recall {:.3}, {:.2} alerts per 1,000 events",
            self.decisions,
            self.events,
            self.precision(),
            self.recall(),
            self.alerts_per_1000()
        );
        if self.alerts.alerts > 0 {
            let _ = writeln!(out, "\n{:<22} {:>9} {:>8} {:>8} {:>8}", "alerts cover", "instances", "detected", "events", "flagged");
            for (scenario, q) in &self.scenarios {
                let (instances, flagged) = self.alerts.scenarios.get(scenario).copied().unwrap_or_default();
                let _ = writeln!(out, "{:<22} {:>9} {:>8} {:>8} {:>8}", scenario.as_str(), q.instances, instances, q.events, flagged);
            }
            let _ = writeln!(
                out,
                "alerts: {} ({} covering an attack's event), {:.2} per 1,000 events",
                self.alerts.alerts,
                self.alerts.true_alerts,
                self.alerts_per_1000_alerted()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_scenario() {
        let label = |id: &str, instance, ts| Label { event_id: id.into(), scenario: Scenario::MassDelete, instance, user: "v".into(), ts };
        let labels = vec![label("a", 0, 10), label("b", 0, 20), label("c", 1, 5_000_000)];
        let decided = vec![
            ("b".to_string(), "v".to_string(), 20),
            ("x".to_string(), "v".to_string(), 30),     // victim, during the attack: a false positive of it
            ("y".to_string(), "w".to_string(), 30),     // someone else: only overall
        ];
        let q = Quality::compute(&labels, &decided, 1000);
        let s = &q.scenarios[&Scenario::MassDelete];
        assert_eq!((s.instances, s.instances_detected, s.events, s.flagged, s.false_positives), (2, 1, 3, 1, 1));
        assert_eq!(s.precision(), 0.5);
        assert_eq!(q.precision(), 1.0 / 3.0);
        assert_eq!(q.alerts_per_1000(), 3.0);
        // One alert covering both of instance 0's events (a risk alert), one on nothing malicious.
        let q = q.with_alerts(&labels, &[vec!["a".into(), "b".into(), "x".into()], vec!["y".into()]]);
        assert_eq!((q.alerts.alerts, q.alerts.true_alerts, q.alerts.scenarios[&Scenario::MassDelete]), (2, 1, (1, 2)));
    }
}
