//! What decides: the actions a decision asks for ([`action`]), the model ([`model`]), threshold rules ([`rules`]), Sigma rules ([`sigma`]),
//! marked threats ([`marks`]), threat-intel matching and retro-matching ([`intel`]), the control collection that carries them over event time
//! ([`control`]), each event's decision ([`decision`]), Sigma correlation windows
//! ([`correlation`]) and the final verdict step with blocking ([`verdicts`]).

pub mod action;
pub mod control;
pub mod correlation;
pub mod decision;
pub mod enrichment;
pub mod intel;
pub mod marks;
pub mod model;
pub mod rules;
pub mod sigma;
pub mod verdicts;
