//! How well a model separates a labelled set: precision, recall, PR-AUC and alerts per 1,000
//! events, overall and per attack scenario, and the PR curve and score histogram as SVG images.
//!
//! Scores are the engine's own ([`Model::score`] on the features the serving dataflow computes),
//! so the figures are those of the model as served, without rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use super::dataset::{Extracted, Labels};
use super::metrics::{average_precision, pr_curve, threshold_for_budget, Confusion};
use super::SetMetrics;
use crate::detect::model::Model;

/// One scenario's malicious events against every benign event.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioMetrics {
    /// The scenario's malicious events.
    pub events: u64,
    /// Those flagged at the model's threshold.
    pub flagged: u64,
    /// `flagged / events`.
    pub recall: f64,
    /// Precision were this the only attack: `flagged / (flagged + benign events flagged)`.
    pub precision: f64,
    /// Average precision of this scenario's events against the benign ones.
    pub pr_auc: f64,
}

/// A model's quality on a labelled set.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// The model's version.
    pub model_version: String,
    /// Its threshold.
    pub threshold: f64,
    /// Overall.
    pub overall: SetMetrics,
    /// Per scenario (`unnamed` for malicious events whose label names none).
    pub scenarios: BTreeMap<String, ScenarioMetrics>,
    /// Every event's score, in the order of the examples.
    #[serde(skip)]
    pub scores: Vec<f64>,
    /// Every event's label, in the same order.
    #[serde(skip)]
    pub truth: Vec<bool>,
}

/// Scores every example with `model` and measures.
pub fn evaluate(data: &Extracted, labels: &Labels, model: &Model) -> Evaluation {
    let threshold = model.threshold.0;
    let scores: Vec<f64> = data.examples.iter().map(|e| model.score(&e.features)).collect();
    let truth: Vec<bool> = data.examples.iter().map(|e| labels.get(&e.id).is_some_and(|t| t.malicious)).collect();
    let benign_flagged = scores.iter().zip(&truth).filter(|(s, t)| !**t && model.is_threat(**s)).count() as u64;
    let mut by_scenario: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, example) in data.examples.iter().enumerate() {
        if let Some(t) = labels.get(&example.id).filter(|t| t.malicious) {
            by_scenario.entry(t.scenario.clone().unwrap_or_else(|| "unnamed".into())).or_default().push(i);
        }
    }
    let mut scenarios = BTreeMap::new();
    for (name, rows) in by_scenario {
        let flagged = rows.iter().filter(|i| model.is_threat(scores[**i])).count() as u64;
        // This scenario's events and the benign ones.
        let (s, l): (Vec<f64>, Vec<bool>) = scores
            .iter()
            .zip(&truth)
            .enumerate()
            .filter(|(i, (_, t))| !**t || rows.binary_search(i).is_ok())
            .map(|(_, (s, t))| (*s, *t))
            .unzip();
        let metrics = ScenarioMetrics {
            events: rows.len() as u64,
            flagged,
            recall: flagged as f64 / rows.len() as f64,
            precision: ratio(flagged, flagged + benign_flagged),
            pr_auc: average_precision(&s, &l),
        };
        scenarios.insert(name, metrics);
    }
    Evaluation {
        model_version: model.version.clone(),
        threshold,
        overall: SetMetrics::of(&scores, &truth, threshold),
        scenarios,
        scores,
        truth,
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

impl Evaluation {
    /// Recall when the threshold is set to flag at most `per_1000` events per 1,000 (to compare
    /// models at the same alert load).
    pub fn recall_at_budget(&self, per_1000: f64) -> Result<f64> {
        let threshold = threshold_for_budget(&self.scores, per_1000)?;
        Ok(Confusion::at(&self.scores, &self.truth, threshold).recall())
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let o = &self.overall;
        let _ = writeln!(out, "model {} at threshold {:.4}", self.model_version, self.threshold);
        let _ = writeln!(out, "{:<22} {:>9} {:>8} {:>8} {:>10} {:>8}", "scenario", "events", "flagged", "recall", "precision", "PR-AUC");
        for (name, m) in &self.scenarios {
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>8} {:>8.3} {:>10.3} {:>8.3}",
                name, m.events, m.flagged, m.recall, m.precision, m.pr_auc
            );
        }
        let _ = writeln!(
            out,
            "overall: {} events, {} malicious; precision {:.3}, recall {:.3}, PR-AUC {:.3}, {:.2} alerts per 1,000 events",
            o.events, o.malicious, o.precision, o.recall, o.pr_auc, o.alerts_per_1000
        );
        out
    }

    /// Writes `pr_curve.svg` and `score_histogram.svg` into `dir`; returns their paths.
    pub fn write_plots(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let curve = dir.join("pr_curve.svg");
        let histogram = dir.join("score_histogram.svg");
        self.pr_plot(&curve).with_context(|| format!("drawing {}", curve.display()))?;
        self.histogram_plot(&histogram).with_context(|| format!("drawing {}", histogram.display()))?;
        Ok(vec![curve, histogram])
    }

    fn pr_plot(&self, path: &Path) -> Result<()> {
        let root = SVGBackend::new(path, (640, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Precision-recall, model {}", self.model_version), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1.0, 0f64..1.02)?;
        chart.configure_mesh().x_desc("recall").y_desc("precision").draw()?;
        let points: Vec<(f64, f64)> = pr_curve(&self.scores, &self.truth).iter().map(|p| (p.recall, p.precision)).collect();
        let blue = RGBColor(31, 119, 180);
        chart
            .draw_series(LineSeries::new(points, blue.stroke_width(2)))?
            .label(format!("PR-AUC {:.3}", self.overall.pr_auc))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue.stroke_width(2)));
        let at = (self.overall.recall, self.overall.precision);
        if at.0.is_finite() && at.1.is_finite() {
            let red = RGBColor(214, 39, 40);
            chart
                .draw_series(std::iter::once(Circle::new(at, 5, red.filled())))?
                .label(format!("threshold {:.3}", self.threshold))
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, red.filled()));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).position(SeriesLabelPosition::LowerLeft).draw()?;
        root.present()?;
        Ok(())
    }

    fn histogram_plot(&self, path: &Path) -> Result<()> {
        const BINS: usize = 50;
        let mut counts = [[0u64; BINS]; 2];
        for (score, malicious) in self.scores.iter().zip(&self.truth) {
            let bin = ((score * BINS as f64) as usize).min(BINS - 1);
            counts[usize::from(*malicious)][bin] += 1;
        }
        let max = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
        let root = SVGBackend::new(path, (640, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Scores, model {}", self.model_version), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1.0, (0.5f64..max * 2.0).log_scale())?;
        chart.configure_mesh().x_desc("score").y_desc("events (log)").y_label_formatter(&|v| format!("{v:.0}")).draw()?;
        for (class, name, color) in [(0, "benign", RGBColor(31, 119, 180)), (1, "malicious", RGBColor(214, 39, 40))] {
            let bars = counts[class].iter().enumerate().filter(|(_, c)| **c > 0).map(move |(i, c)| {
                let x0 = i as f64 / BINS as f64;
                Rectangle::new([(x0, 0.5), (x0 + 1.0 / BINS as f64, *c as f64)], color.mix(0.5).filled())
            });
            chart.draw_series(bars)?.label(name).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.5).filled()));
        }
        let threshold = self.threshold;
        chart.draw_series(LineSeries::new([(threshold, 0.5), (threshold, max * 2.0)], BLACK.stroke_width(1)))?;
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    }
}
