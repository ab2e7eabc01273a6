//! The dataflows a job can run, one file each; `--dataflow NAME` selects one.
//!
//! To add one: write `dataflows/NAME.rs` with a type implementing [`crate::shared::Dataflow`],
//! add `pub mod NAME;` here and an entry to [`all`].

use crate::shared::Dataflow;

pub mod country_drift;
pub mod threat;

/// Every dataflow, the default first.
pub fn all() -> Vec<Box<dyn Dataflow>> {
    vec![Box::new(threat::Threat), Box::new(country_drift::CountryDrift::default())]
}

/// The dataflow named `name`.
pub fn find(name: &str) -> Option<Box<dyn Dataflow>> {
    all().into_iter().find(|d| d.name() == name)
}

/// The names of all dataflows.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|d| d.name()).collect()
}
