//! What decides: the actions a decision asks for ([`action`]), the model ([`model`]), threshold
//! rules ([`rules`]), Sigma rules ([`sigma`]) and the set of those in force ([`sigma_set`]), marked threats ([`marks`]), threat-intel matching
//! and retro-matching ([`intel`]), the control collection that carries them over event time
//! ([`control`]), each event's decision ([`decision`]), Sigma correlation windows
//! ([`correlation`]), new-terms rules ([`new_terms`], written as [`new_terms_spec`]) with the one
//! pass observing events for both ([`observe`]), the final verdict step with blocking
//! ([`verdicts`]) and entity risk over the decisions ([`risk`]).

pub mod action;
pub mod control;
pub mod correlation;
pub mod decision;
pub mod enrichment;
pub mod intel;
pub mod marks;
pub mod model;
pub mod new_terms;
pub mod new_terms_spec;
pub mod observe;
pub mod risk;
pub mod rules;
pub mod sigma;
pub mod sigma_set;
pub mod verdicts;
