//! The alerts a live console shows: the last ones written, numbered, so that a page that connects
//! gets them all and then each new one once.
//!
//! The decision sink hands every alert it writes (its decision as a JSON line) to [`RECENT`];
//! readers ask for what came after the last number they saw. Only the newest
//! [`RecentAlerts::KEPT`] are kept: a console is a window on the stream, the outputs are its record.
//!
//! ```
//! use threatflow::recent::RecentAlerts;
//! let recent = RecentAlerts::default();
//! recent.push("{\"decision_id\":\"a\"}".to_string());
//! recent.push("{\"decision_id\":\"b\"}".to_string());
//! let (last, alerts) = recent.after(1);
//! assert_eq!((last, alerts), (2, vec!["{\"decision_id\":\"b\"}".to_string()]));
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

/// The alerts of this process's job (written by worker 0 of process 0).
pub static RECENT: LazyLock<RecentAlerts> = LazyLock::new(RecentAlerts::default);

/// The newest alerts, numbered from 1 in the order written.
#[derive(Default)]
pub struct RecentAlerts {
    inner: Mutex<(u64, VecDeque<String>)>,
    enabled: AtomicBool,
}

impl RecentAlerts {
    /// How many alerts are kept.
    pub const KEPT: usize = 1_000;

    /// Keeps alerts from now on (a console is open); until then the sink spends nothing on them.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Whether alerts are kept.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Adds an alert (its decision as JSON).
    pub fn push(&self, alert: String) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.0 += 1;
            inner.1.push_back(alert);
            if inner.1.len() > Self::KEPT {
                inner.1.pop_front();
            }
        }
    }

    /// The number of the newest alert, and the alerts kept that are numbered after `seen`.
    pub fn after(&self, seen: u64) -> (u64, Vec<String>) {
        let Ok(inner) = self.inner.lock() else { return (seen, Vec::new()) };
        let (last, kept) = (inner.0, &inner.1);
        let first = last + 1 - kept.len() as u64;
        let skip = seen.saturating_add(1).saturating_sub(first) as usize;
        (last, kept.iter().skip(skip).cloned().collect())
    }
}
