//! Per-user login-country drift: flags a login from a country other than the user's dominant
//! login country of the last 7 days, when the user's logins were concentrated there.
//!
//! A small example of a researcher's dataflow: it builds an arrangement of its own (login
//! countries per user over 7 days, with the same `+1 at t, -1 at t + W` windows as the standard
//! features) and reads the shared feature arrangement for the decision's feature vector.

use std::rc::Rc;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::StreamVec;

use crate::as_of::as_of_lookup;
use crate::decision::{decision_id, Decision, Verdict};
use crate::event::{ActionKind, Time};
use crate::features::{country_code, DAY};
use crate::rules::{Severity, ThreatAction};
use crate::shared::{arrange_by_user, with_features, Dataflow, SharedInputs, UserEvent};

/// The country-drift dataflow and its thresholds.
pub struct CountryDrift {
    /// Window of the login-country history.
    pub window: Time,
    /// Logins needed in the window before drift is judged.
    pub min_logins: isize,
    /// Share of the window's logins the dominant country must have (percent).
    pub dominant_percent: isize,
}

impl Default for CountryDrift {
    fn default() -> Self {
        CountryDrift { window: 7 * DAY, min_logins: 5, dominant_percent: 80 }
    }
}

/// The id rule-like decisions of this dataflow carry.
pub const RULE_ID: &str = "country-drift";

impl Dataflow for CountryDrift {
    fn name(&self) -> &'static str {
        "country-drift"
    }

    fn description(&self) -> &'static str {
        "logins from outside the user's dominant login country of the last 7 days"
    }

    fn build<'s>(&self, inputs: SharedInputs<'s>) -> StreamVec<'s, Time, Decision> {
        let window = self.window;
        let features = inputs.features();
        let logins = inputs
            .events
            .clone()
            .flat_map(move |e: UserEvent| {
                let country = e.country.as_deref().and_then(country_code);
                let login = matches!(e.kind(), ActionKind::Login);
                let key = e.key;
                country
                    .filter(|_| login)
                    .into_iter()
                    .flat_map(move |c| [((key, c), e.time, 1isize), ((key, c), e.time + window, -1)])
            })
            .as_collection();
        let history = arrange_by_user(logins, "LoginCountries7d");
        let (min_logins, dominant_percent) = (self.min_logins, self.dominant_percent);
        // Judge each login against the history strictly before it (`time - 1`), so the login itself
        // does not count towards its own user's habit.
        let judged = as_of_lookup(
            inputs.events.filter(|e: &UserEvent| matches!(e.kind(), ActionKind::Login) && e.country.is_some() && e.time > 0),
            history,
            Pipeline,
            "CountryDriftLookup",
            |e: &UserEvent| e.key,
            |e: &UserEvent| e.time - 1,
            move |_t, e, vals: &[(&u16, isize)]| {
                let total: isize = vals.iter().map(|(_, n)| *n).sum();
                let (dominant, count) = vals.iter().max_by_key(|(c, n)| (*n, std::cmp::Reverse(*c)))?;
                let own = country_code(e.country.as_deref()?)?;
                let drift = total >= min_logins && own != **dominant && count * 100 >= total * dominant_percent;
                drift.then(|| Rc::clone(e))
            },
        );
        with_features(judged, features).map(|(e, features)| {
            let verdict = Verdict::Threat;
            Decision {
                decision_id: decision_id(&e.event_id, verdict),
                event_id: e.event_id.to_string(),
                user: e.user.to_string(),
                ts: e.time,
                verdict,
                score: None,
                model_version: None,
                rules: vec![RULE_ID.to_string()],
                rule_titles: vec![RULE_ID.to_string()],
                fingerprint_match: None,
                features,
                actions: vec![ThreatAction::Alert],
                severity: Severity::Medium,
                contributions: Vec::new(),
                late: e.late,
                event_ts: (e.ts != e.time).then_some(e.ts),
                correlation_groups: Vec::new(),
                blocked_by: None,
                blocked_until: None,
                position: e.position.clone(),
            }
        })
    }
}
