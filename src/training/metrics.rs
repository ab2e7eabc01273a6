//! Ranking metrics on model scores, and the choice of an alerting threshold from them.
//!
//! Everywhere an example is flagged when `score >= threshold`, so examples with equal scores are
//! always flagged together and a curve has one point per distinct score. A NaN score is never
//! flagged (no comparison with NaN holds): it sorts after every other score and never becomes a
//! threshold, but a NaN-scored positive still counts in the recall's denominator. Every function
//! sorts at most once, O(n log n), so 10 million scores are fine.

use anyhow::{bail, Result};
use serde::Serialize;

/// A point of the precision–recall curve: predictions are `score >= threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PrPoint {
    /// Examples scoring at least this are flagged.
    pub threshold: f64,
    /// True positives / flagged.
    pub precision: f64,
    /// True positives / positives (NaN when there is no positive).
    pub recall: f64,
    /// Examples flagged.
    pub flagged: u64,
    /// Positives flagged.
    pub true_positives: u64,
}

/// The PR curve: one point per distinct score (descending thresholds), ties handled together (all
/// examples with the same score are flagged together).
///
/// # Panics
/// When `scores` and `labels` differ in length.
pub fn pr_curve(scores: &[f64], labels: &[bool]) -> Vec<PrPoint> {
    let mut curve = Vec::new();
    walk_curve(scores, labels, |point| curve.push(point));
    curve
}

/// Average precision (PR-AUC as in scikit-learn's `average_precision_score`: `Σ (R_k − R_{k−1}) P_k`
/// over the curve's points in order of increasing recall, ties together). NaN when there is no
/// positive.
///
/// # Panics
/// When `scores` and `labels` differ in length.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    // Σ (R_k − R_{k−1}) P_k = Σ (TP_k − TP_{k−1}) P_k / positives: summing the integer recall steps
    // avoids subtracting nearly equal recalls.
    let mut sum = 0.0;
    let mut previous_true_positives = 0;
    let positives = walk_curve(scores, labels, |point| {
        sum += (point.true_positives - previous_true_positives) as f64 * point.precision;
        previous_true_positives = point.true_positives;
    });
    if positives == 0 {
        f64::NAN
    } else {
        sum / positives as f64
    }
}

/// The lowest threshold (among the scores) that flags at most `per_1000` examples per 1,000 (i.e.
/// `flagged * 1000 <= per_1000 * n`); ties are flagged together, so a tie that would exceed the
/// budget is excluded. If even the highest score exceeds the budget, returns the next representable
/// value above the highest score, so that nothing is flagged.
///
/// Errors on no scores, a negative or NaN budget, a NaN score, or a highest score of +∞ that
/// exceeds the budget (no threshold then flags nothing).
pub fn threshold_for_budget(scores: &[f64], per_1000: f64) -> Result<f64> {
    if scores.is_empty() {
        bail!("no scores to choose a threshold from");
    }
    if per_1000.is_nan() || per_1000 < 0.0 {
        bail!("the alert budget must be >= 0 per 1,000, got {per_1000}");
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        bail!("score {i} is NaN: no threshold can account for it");
    }
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let allowed = per_1000 * scores.len() as f64;
    let mut flagged = 0u64;
    let mut threshold = None;
    // 0.0 and -0.0 are one group: total_cmp puts them side by side, `==` joins them, and `>=`
    // flags both at either threshold.
    for group in sorted.chunk_by(|a, b| a == b) {
        flagged += group.len() as u64;
        // Exact: flagged ≤ 2^53 and the product is compared, not a rounded quotient.
        if flagged as f64 * 1000.0 > allowed {
            break;
        }
        threshold = Some(group[0]);
    }
    match threshold {
        Some(threshold) => Ok(threshold),
        None => {
            let max = sorted[0];
            if max == f64::INFINITY {
                bail!("the highest score is +inf and exceeds the budget: no threshold flags nothing");
            }
            Ok(max.next_up())
        }
    }
}

/// The lowest threshold whose precision is at least `target` (highest recall meeting the target);
/// None when no threshold reaches it.
///
/// # Panics
/// When `scores` and `labels` differ in length.
pub fn threshold_for_precision(scores: &[f64], labels: &[bool], target: f64) -> Option<f64> {
    let mut lowest = None;
    // Thresholds come in descending order: the last one that qualifies is the lowest.
    walk_curve(scores, labels, |point| {
        if point.precision >= target {
            lowest = Some(point.threshold);
        }
    });
    lowest
}

/// Counts at one threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Confusion {
    /// Positives flagged.
    pub true_positives: u64,
    /// Negatives flagged.
    pub false_positives: u64,
    /// Positives not flagged.
    pub false_negatives: u64,
    /// Negatives not flagged.
    pub true_negatives: u64,
}

impl Confusion {
    /// Counts with examples flagged when `score >= threshold` (a NaN score is never flagged).
    ///
    /// # Panics
    /// When `scores` and `labels` differ in length.
    pub fn at(scores: &[f64], labels: &[bool], threshold: f64) -> Confusion {
        assert_same_length(scores, labels);
        let mut counts = Confusion::default();
        for (&score, &positive) in scores.iter().zip(labels) {
            let count = match (score >= threshold, positive) {
                (true, true) => &mut counts.true_positives,
                (true, false) => &mut counts.false_positives,
                (false, true) => &mut counts.false_negatives,
                (false, false) => &mut counts.true_negatives,
            };
            *count += 1;
        }
        counts
    }

    /// True positives / flagged; NaN when nothing is flagged.
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    /// True positives / positives; NaN when there is no positive.
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    /// Examples flagged per 1,000 examples; NaN when there is no example.
    pub fn flagged_per_1000(&self) -> f64 {
        let total = self.true_positives + self.false_positives + self.false_negatives + self.true_negatives;
        1000.0 * ratio(self.true_positives + self.false_positives, total)
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        f64::NAN
    } else {
        numerator as f64 / denominator as f64
    }
}

fn assert_same_length(scores: &[f64], labels: &[bool]) {
    assert_eq!(scores.len(), labels.len(), "{} scores but {} labels", scores.len(), labels.len());
}

/// Calls `visit` with each point of the PR curve, by descending threshold, and returns the number
/// of positives (NaN-scored ones included).
fn walk_curve(scores: &[f64], labels: &[bool], mut visit: impl FnMut(PrPoint)) -> u64 {
    assert_same_length(scores, labels);
    let positives = labels.iter().filter(|&&positive| positive).count() as u64;
    // NaN scores are never flagged, so they are left out of the ranking rather than sorted last.
    let mut ranked: Vec<(f64, bool)> =
        scores.iter().copied().zip(labels.iter().copied()).filter(|(score, _)| !score.is_nan()).collect();
    ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut flagged, mut true_positives) = (0u64, 0u64);
    // 0.0 and -0.0 are one group: total_cmp puts them side by side, `==` joins them.
    for group in ranked.chunk_by(|a, b| a.0 == b.0) {
        flagged += group.len() as u64;
        true_positives += group.iter().filter(|(_, positive)| *positive).count() as u64;
        visit(PrPoint {
            threshold: group[0].0,
            precision: true_positives as f64 / flagged as f64,
            recall: ratio(true_positives, positives),
            flagged,
            true_positives,
        });
    }
    positives
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: bool = true;
    const F: bool = false;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn curve_and_average_precision_by_hand() {
        let scores = [0.9, 0.8, 0.7, 0.6];
        let labels = [T, F, T, F];
        let curve = pr_curve(&scores, &labels);
        let expected = [(0.9, 1.0, 0.5, 1, 1), (0.8, 0.5, 0.5, 2, 1), (0.7, 2.0 / 3.0, 1.0, 3, 2), (0.6, 0.5, 1.0, 4, 2)];
        assert_eq!(curve.len(), expected.len());
        for (point, &(threshold, precision, recall, flagged, true_positives)) in curve.iter().zip(&expected) {
            assert_eq!(point.threshold, threshold);
            assert!(close(point.precision, precision), "{point:?}");
            assert!(close(point.recall, recall), "{point:?}");
            assert_eq!((point.flagged, point.true_positives), (flagged, true_positives));
        }
        assert!(close(average_precision(&scores, &labels), 0.5 + 0.5 * 2.0 / 3.0));
        // Order of the input does not matter.
        assert!(close(average_precision(&[0.6, 0.7, 0.8, 0.9], &[F, T, F, T]), 0.5 + 0.5 * 2.0 / 3.0));
    }

    #[test]
    fn ties_are_flagged_together() {
        let scores = [0.9, 0.5, 0.5, 0.1];
        let labels = [T, F, T, F];
        let curve = pr_curve(&scores, &labels);
        assert_eq!(curve.len(), 3);
        assert_eq!((curve[1].threshold, curve[1].flagged, curve[1].true_positives), (0.5, 3, 2));
        assert!(close(average_precision(&scores, &labels), 0.5 + 0.5 * 2.0 / 3.0));
        // All tied: one point, AP is the base rate.
        assert!(close(average_precision(&[0.5; 4], &[T, F, F, F]), 0.25));
        // 0.0 and -0.0 are the same score.
        assert_eq!(pr_curve(&[0.0, -0.0], &[T, F]).len(), 1);
    }

    #[test]
    fn no_positive_and_nan_scores() {
        assert!(average_precision(&[0.3, 0.2], &[F, F]).is_nan());
        assert!(pr_curve(&[0.3, 0.2], &[F, F]).iter().all(|point| point.recall.is_nan()));
        assert!(pr_curve(&[], &[]).is_empty());
        // A NaN-scored positive is never flagged: recall stops at 1/2.
        let curve = pr_curve(&[f64::NAN, 0.4, 0.2], &[T, T, F]);
        assert_eq!(curve.len(), 2);
        assert!(close(curve[1].recall, 0.5));
        assert!(close(average_precision(&[f64::NAN, 0.4, 0.2], &[T, T, F]), 0.5));
    }

    #[test]
    fn budget_with_ties() {
        let scores = [0.9, 0.8, 0.8, 0.7, 0.1];
        let budget = |per_1000: f64| threshold_for_budget(&scores, per_1000).unwrap();
        assert_eq!(budget(1000.0), 0.1);
        assert_eq!(budget(800.0), 0.7);
        // 3.995 examples allowed: the tie at 0.8 fits (3), 0.7 would make 4.
        assert_eq!(budget(799.0), 0.8);
        assert_eq!(budget(600.0), 0.8);
        // 2 allowed: the tie at 0.8 would make 3, so only 0.9.
        assert_eq!(budget(400.0), 0.9);
        // Not even the top score fits: nothing is flagged.
        let none = budget(0.0);
        assert!(none > 0.9 && none == 0.9f64.next_up());
        let counts = Confusion::at(&scores, &[T, F, T, F, F], none);
        assert_eq!(counts.true_positives + counts.false_positives, 0);
        assert_eq!(threshold_for_budget(&[-2.0, -3.0], 0.0).unwrap(), (-2.0f64).next_up());
    }

    #[test]
    fn budget_errors() {
        assert!(threshold_for_budget(&[], 10.0).is_err());
        assert!(threshold_for_budget(&[0.5], -1.0).is_err());
        assert!(threshold_for_budget(&[0.5], f64::NAN).is_err());
        let error = threshold_for_budget(&[0.5, f64::NAN], 10.0).unwrap_err();
        assert!(error.to_string().contains("NaN"), "{error}");
        assert!(threshold_for_budget(&[f64::INFINITY, 0.5], 0.0).is_err());
    }

    #[test]
    fn precision_target() {
        let scores = [0.9, 0.8, 0.7, 0.6];
        let labels = [T, F, T, F];
        assert_eq!(threshold_for_precision(&scores, &labels, 0.6), Some(0.7));
        assert_eq!(threshold_for_precision(&scores, &labels, 0.9), Some(0.9));
        assert_eq!(threshold_for_precision(&scores, &labels, 0.5), Some(0.6));
        assert_eq!(threshold_for_precision(&scores, &labels, 1.01), None);
        assert_eq!(threshold_for_precision(&[0.3], &[F], 0.5), None);
    }

    #[test]
    fn confusion_counts() {
        let scores = [0.9, 0.8, 0.7, 0.6, f64::NAN];
        let labels = [T, F, T, F, T];
        let counts = Confusion::at(&scores, &labels, 0.7);
        assert_eq!(counts, Confusion { true_positives: 2, false_positives: 1, false_negatives: 1, true_negatives: 1 });
        assert!(close(counts.precision(), 2.0 / 3.0));
        assert!(close(counts.recall(), 2.0 / 3.0));
        assert!(close(counts.flagged_per_1000(), 600.0));
        let nothing = Confusion::at(&scores, &labels, 2.0);
        assert!(nothing.precision().is_nan());
        assert_eq!(nothing.flagged_per_1000(), 0.0);
        assert!(Confusion::default().recall().is_nan());
        assert!(Confusion::default().flagged_per_1000().is_nan());
    }

    /// The definition, quadratically: for each distinct score, count what it flags.
    fn brute_force_average_precision(scores: &[f64], labels: &[bool]) -> f64 {
        let positives = labels.iter().filter(|&&l| l).count();
        if positives == 0 {
            return f64::NAN;
        }
        let mut thresholds: Vec<f64> = scores.iter().copied().filter(|s| !s.is_nan()).collect();
        thresholds.sort_by(|a, b| b.partial_cmp(a).unwrap());
        thresholds.dedup();
        let (mut sum, mut previous_recall) = (0.0, 0.0);
        for threshold in thresholds {
            let flagged = scores.iter().filter(|&&s| s >= threshold).count();
            let true_positives = scores.iter().zip(labels).filter(|&(&s, &l)| s >= threshold && l).count();
            let recall = true_positives as f64 / positives as f64;
            sum += (recall - previous_recall) * (true_positives as f64 / flagged as f64);
            previous_recall = recall;
        }
        sum
    }

    /// Scores from a few values (so that ties are common), a few of them NaN, with labels.
    fn scored_examples() -> impl Strategy<Value = (Vec<f64>, Vec<bool>)> {
        proptest::collection::vec((0u8..8, any::<bool>(), prop::bool::weighted(0.05)), 0..60).prop_map(
            |examples| -> (Vec<f64>, Vec<bool>) {
                examples
                    .into_iter()
                    .map(|(value, label, nan)| (if nan { f64::NAN } else { f64::from(value) / 8.0 }, label))
                    .unzip()
            },
        )
    }

    proptest! {
        #[test]
        fn average_precision_matches_brute_force((scores, labels) in scored_examples()) {
            let fast = average_precision(&scores, &labels);
            let slow = brute_force_average_precision(&scores, &labels);
            prop_assert!(close(fast, slow), "{fast} vs {slow}");
        }

        #[test]
        fn budget_threshold_is_the_lowest_within_budget(
            values in proptest::collection::vec(0u8..8, 1..60),
            per_1000 in 0.0f64..1200.0
        ) {
            let scores: Vec<f64> = values.iter().map(|&v| f64::from(v) / 8.0).collect();
            let threshold = threshold_for_budget(&scores, per_1000).unwrap();
            let flags = |t: f64| scores.iter().filter(|&&s| s >= t).count() as f64;
            let allowed = per_1000 * scores.len() as f64;
            prop_assert!(flags(threshold) * 1000.0 <= allowed);
            // The next lower score would exceed the budget.
            if let Some(lower) = scores.iter().copied().filter(|&s| s < threshold).reduce(f64::max) {
                prop_assert!(flags(lower) * 1000.0 > allowed);
            }
        }
    }
}
