//! Per-user login-country drift: flags a login from a country other than the user's dominant
//! login country of the last 7 days, when the user's logins were concentrated there.
//!
//! A small example of a researcher's dataflow: it keeps state of its own (login countries per
//! user over 7 days, with the same `+1 at t, -1 at t + W` windows as the standard features)
//! through the checkpoint layer, so a job restored after a kill remembers the history, and reads
//! the shared feature arrangement for the decision's feature vector.


use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::StreamVec;

use crate::dataflows::{Dataflow, SharedInputs};
use crate::detect::decision::{Decision, Verdict};
use crate::detect::action::{Severity, ThreatAction};
use crate::event::{ActionKind, Time};
use crate::state::as_of::as_of_lookup;
use crate::event::DAY;
use crate::state::features::country_code;
use crate::state::windowed::Window;
use crate::state::{with_features, UserEvent};

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

/// The name its login history is checkpointed under.
const HISTORY: &str = "login-countries";

impl Dataflow for CountryDrift {
    fn name(&self) -> &'static str {
        "country-drift"
    }

    fn description(&self) -> &'static str {
        "logins from outside the user's dominant login country of the last 7 days"
    }

    fn checkpointed(&self) -> bool {
        true
    }

    fn build<'s>(&self, inputs: SharedInputs<'s>) -> StreamVec<'s, Time, Decision> {
        let features = inputs.features();
        let logins = inputs.events.clone().flat_map(|e: UserEvent| {
            let country = e.country.as_deref().and_then(country_code);
            let login = matches!(e.kind(), ActionKind::Login);
            country.filter(|_| login).map(|c| ((e.key, c), e.time))
        });
        // Each login counts from the millisecond after it, so that a login looked up at its own
        // time does not count towards its own user's habit.
        let history = inputs.windowed_by_user(HISTORY, logins, Window { delay: 1, length: self.window });
        let (min_logins, dominant_percent) = (self.min_logins, self.dominant_percent);
        let judged = as_of_lookup(
            inputs.events.filter(|e: &UserEvent| matches!(e.kind(), ActionKind::Login) && e.country.is_some() && e.time > 0),
            history,
            Pipeline,
            "CountryDriftLookup",
            |e: &UserEvent| e.key,
            |e: &UserEvent| e.time,
            move |_t, e, vals: &[(&u16, isize)], _| {
                let total: isize = vals.iter().map(|(_, n)| *n).sum();
                let (dominant, count) = vals.iter().max_by_key(|(c, n)| (*n, std::cmp::Reverse(*c)))?;
                let own = country_code(e.country.as_deref()?)?;
                let drift = total >= min_logins && own != **dominant && count * 100 >= total * dominant_percent;
                drift.then_some(e)
            },
        );
        with_features(judged, features).map(|(e, features)| Decision {
            rules: vec![RULE_ID.to_string()],
            rule_titles: vec![RULE_ID.to_string()],
            actions: vec![ThreatAction::Alert],
            severity: Severity::Medium,
            risk_score: Severity::Medium.risk_score(),
            ..Decision::for_event(e.time, &e, &features, Verdict::Threat)
        })
    }
}
