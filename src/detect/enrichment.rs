//! Enrichment in the dataflow: each event reads the GeoIP and ASN databases in force at its own
//! time (the control collection, as of the event's time, as the decision step reads the model),
//! so a database replaced while the job runs changes what events say exactly from its
//! `effective_from`, on any number of workers, and a replayed input is enriched as it was.
//!
//! An enriched event carries [`Enrichment`] (its address's class, country, city, coordinates,
//! ASN and organisation); an event without a country gets the database's, so the country
//! features see it; a provider's record gets an `enrichment` object, so Sigma rules can name
//! `enrichment.country`, `enrichment.asn`, `enrichment.as_org`, `enrichment.ip_class`, ….

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use crate::detect::control::{in_force, Control, ControlArrangement};
use crate::enrich::{DatabaseKind, Databases, Enrichment};
use crate::event::{Event, Text, Time};
use crate::state::as_of::{as_of_lookup, PerVersion};

/// How a job enriches its events.
#[derive(Clone, Debug, Default)]
pub enum EnrichmentMode {
    /// Not at all (the job has no database).
    #[default]
    Off,
    /// With these databases, which nothing can replace while the job runs (no update applies
    /// later and none can arrive): events are enriched as they pass, without waiting.
    Fixed(Databases),
    /// With the databases in force at each event's time ([`enriched`]).
    InForce,
}

impl EnrichmentMode {
    /// The events enriched as this mode says.
    pub fn apply<'s>(self, events: StreamVec<'s, Time, Event>, control: &ControlArrangement<'s>) -> StreamVec<'s, Time, Event> {
        match self {
            EnrichmentMode::Off => events,
            EnrichmentMode::Fixed(databases) => {
                let mut cache = Cache::default();
                events.map(move |event| enrich_with(event, &databases, &mut cache))
            }
            EnrichmentMode::InForce => enriched(events, control.clone()),
        }
    }
}

/// The events, each enriched with the databases in force at its time (events wait for the
/// control collection to be complete up to their time, as decisions do).
pub fn enriched<'s>(events: StreamVec<'s, Time, Event>, control: ControlArrangement<'s>) -> StreamVec<'s, Time, Event> {
    let mut in_force_at = PerVersion::default();
    let mut cache = Cache::default();
    // Boxed while they wait: the lookup stashes and sorts what it holds, and an event is large.
    let boxed = events.map(Box::new);
    let enriched = as_of_lookup(boxed, control, Pipeline, "Enrich", |_| (), |e| e.time, move |_time, event, controls, version| {
        let databases = in_force_at.get(version, || databases_in(controls));
        Some(enrich_with(*event, databases, &mut cache))
    });
    enriched
}

/// The enrichments of recent addresses with the databases they were made with: addresses repeat
/// (a user works from one or two), and a lookup costs more than the event's other work here.
#[derive(Default)]
pub struct Cache {
    made_with: Vec<String>,
    by_address: HashMap<Text, Arc<Enrichment>, foldhash::fast::FixedState>,
}

impl Cache {
    /// Addresses kept before the cache starts over.
    const ADDRESSES: usize = 1 << 16;

    /// The enrichment of `ip` with `databases`.
    fn get(&mut self, ip: &Text, databases: &Databases) -> Arc<Enrichment> {
        let identity = [&databases.geo, &databases.asn];
        let same = self.made_with.len() == 2 && identity.iter().zip(&self.made_with).all(|(d, sha)| d.as_ref().map_or("", |d| d.sha256.as_str()) == sha);
        if !same || self.by_address.len() >= Self::ADDRESSES {
            self.by_address.clear();
            self.made_with = identity.iter().map(|d| d.as_ref().map_or(String::new(), |d| d.sha256.clone())).collect();
        }
        Arc::clone(self.by_address.entry(ip.clone()).or_insert_with(|| Arc::new(Enrichment::of(ip, databases))))
    }
}

/// The databases among accumulated controls.
pub fn databases_in(controls: &[(&Control, isize)]) -> Databases {
    let mut databases = Databases::default();
    for (_, control) in in_force(controls) {
        if let Control::Database(database) = control {
            match database.kind {
                DatabaseKind::Geoip => databases.geo = Some(database.clone()),
                DatabaseKind::Asn => databases.asn = Some(database.clone()),
            }
        }
    }
    databases
}

/// An event enriched with `databases` (unchanged when none is in force or it has no `src_ip`).
///
/// ```
/// use threatflow::detect::enrichment::enrich;
/// use threatflow::enrich::Databases;
/// # let databases = Databases::default();
/// let event = threatflow::event::parse_event(br#"{"event_id":"e","ts":1,"user":"u","action":"login","src_ip":"10.0.0.1"}"#, 1 << 20)?;
/// assert!(enrich(event.clone(), &databases).enrichment.is_none(), "no database, no enrichment");
/// # Ok::<(), threatflow::event::RejectReason>(())
/// ```
pub fn enrich(event: Event, databases: &Databases) -> Event {
    enrich_with(event, databases, &mut Cache::default())
}

fn enrich_with(mut event: Event, databases: &Databases, cache: &mut Cache) -> Event {
    if databases.is_empty() {
        return event;
    }
    let Some(ip) = event.src_ip.as_ref() else { return event };
    let enrichment = cache.get(ip, databases);
    if event.country.is_none() {
        event.country = enrichment.country.as_deref().map(Text::from);
    }
    if event.source.is_some() {
        event.extra.insert("enrichment", enrichment.to_value());
    }
    event.enrichment = Some(enrichment);
    event
}
