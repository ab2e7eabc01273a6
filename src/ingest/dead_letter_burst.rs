//! A bound on the dead letters a flood of bad records can hold in memory.
//!
//! A dead letter is given at its partition's watermark and waits, whole, until the output frontier
//! passes that time. The watermark only moves with valid events, so a partition that delivers
//! nothing but bad records would keep every one of them in memory. Per partition and time, the
//! first `burst` dead letters are given whole; the rest of that time's are counted into one
//! summary dead letter (how many, their bytes, the first and the last one's positions, the first
//! one's reason), given at the same time once the partition's time moves on.
//!
//! The summaries are deterministic: which dead letters a run holds is a function of the
//! partition's records, and a restored partition re-reads every run at or after the checkpoint's
//! frontier from its start (the batch holding a run's first record is the one a checkpoint at or
//! before the run's time resumes from).
//!
//! ```
//! use threatflow::event::{DeadLetter, Position, RejectReason};
//! use threatflow::ingest::dead_letter_burst::DeadLetterRun;
//!
//! let bad = |record| DeadLetter::new(&RejectReason::Invalid("not JSON".into()), Position { source: "file:x".into(), record, offset: 0 }, b"{", 1);
//! let (mut run, mut given) = (DeadLetterRun::default(), Vec::new());
//! for record in 1..=5 {
//!     run.admit(1_000, bad(record), 2, &mut given);
//! }
//! assert_eq!(given.len(), 2, "two whole, three held back");
//! run.admit(2_000, bad(6), 2, &mut given); // the time moves on: the run's summary, then record 6
//! assert_eq!(given.len(), 4);
//! assert_eq!(given[2].0, 1_000);
//! assert!(given[2].1.reason.starts_with("3 more records rejected at this time"), "{}", given[2].1.reason);
//! assert_eq!((given[2].1.position.record, given[2].1.size), (3, 3));
//! ```

use crate::event::{DeadLetter, Position, Time};

/// A partition's dead letters at one time: how many were given whole, and what was held back.
#[derive(Debug, Default)]
pub struct DeadLetterRun {
    /// The run's time and the dead letters given whole at it.
    at: Option<(Time, usize)>,
    held: Option<HeldBack>,
}

/// The dead letters of a run beyond its burst.
#[derive(Debug)]
struct HeldBack {
    first: Position,
    first_reason: String,
    last: Position,
    count: u64,
    bytes: u64,
}

impl DeadLetterRun {
    /// Takes a dead letter given at `time` (never before the run's): pushes what is to be given
    /// now to `out`, at its time (the previous run's summary when the time moved on, and this
    /// one when the run has given fewer than `burst` whole).
    pub fn admit(&mut self, time: Time, dead: DeadLetter, burst: usize, out: &mut Vec<(Time, DeadLetter)>) {
        if self.at.is_some_and(|(at, _)| at != time) {
            self.close(out);
        }
        let (_, given) = self.at.get_or_insert((time, 0));
        if *given < burst {
            *given += 1;
            out.push((time, dead));
            return;
        }
        match &mut self.held {
            Some(held) => {
                held.count += 1;
                held.bytes += dead.size;
                held.last = dead.position;
            }
            None => {
                self.held = Some(HeldBack {
                    first: dead.position.clone(),
                    first_reason: dead.reason,
                    last: dead.position,
                    count: 1,
                    bytes: dead.size,
                })
            }
        }
    }

    /// The run's time, while one is open.
    pub fn time(&self) -> Option<Time> {
        self.at.map(|(time, _)| time)
    }

    /// Ends the run: pushes its summary, if it held anything back, to `out` at the run's time.
    /// (Called when the partition's time moves on, before the source's capability passes the
    /// run's time, and when the partition ends.)
    pub fn close(&mut self, out: &mut Vec<(Time, DeadLetter)>) {
        if let (Some((time, _)), Some(held)) = (self.at.take(), self.held.take()) {
            let reason = format!(
                "{} more records rejected at this time are counted here, not kept one by one: records {} to {} of {} (the first: {})",
                held.count, held.first.record, held.last.record, held.first.source, held.first_reason
            );
            out.push((time, DeadLetter::summary(reason, held.first, held.bytes)));
        }
    }
}
