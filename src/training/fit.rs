//! Fits an L2-regularised, class-weighted logistic regression by Newton–Raphson.
//!
//! Columns are standardised (mean 0, population standard deviation 1) for the optimisation, so that
//! one L2 penalty means the same on every column and the Newton system stays well conditioned; the
//! solution is then folded back onto the raw columns, so scoring needs no standardisation. Every pass
//! over the data standardises one row at a time into a small buffer, so memory stays O(d²) besides
//! `x` even with millions of rows.

use anyhow::{bail, Context, Result};
use ndarray::{Array1, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

/// A column whose population standard deviation is below this is constant: it carries no signal,
/// and dividing by its (rounding-noise) deviation would blow up, so it is left out of the fit.
const CONSTANT_STD: f64 = 1e-12;

/// Rows summed into a partial sum before it is added into the totals, so that the rounding error of
/// summing 10 million rows grows like the number of chunks rather than the number of rows.
const CHUNK_ROWS: usize = 4096;

/// Step halvings tried before the line search gives up: 2^-60 of a Newton step is below the
/// resolution of any parameter.
const MAX_HALVINGS: u32 = 60;

/// Ridge added to the Hessian's diagonal when the plain Cholesky decomposition fails.
const JITTER: f64 = 1e-10;

/// When the predicted decrease of a Newton step is below this share of the objective, the objective
/// can no longer tell the step from rounding noise, so the step is taken without the line search.
const LOSS_RESOLUTION: f64 = 1e-12;

/// How to fit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FitConfig {
    /// L2 penalty on the standardised weights (not on the bias): the objective is
    /// `Σ_i c_i · logloss_i / Σ_i c_i + l2/2 · |w|²` (`c_i` = class weight of example `i`).
    pub l2: f64,
    /// The weight of a positive example relative to a negative one; `None`: balanced, each class
    /// contributes half of the loss.
    pub positive_weight: Option<f64>,
    /// Newton iterations at most.
    pub max_iterations: usize,
    /// Stop when the largest absolute component of the objective's gradient (with respect to the
    /// standardised weights and the bias) is below this.
    pub tolerance: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig { l2: 1e-3, positive_weight: None, max_iterations: 50, tolerance: 1e-8 }
    }
}

/// A fitted model, on the unstandardised inputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fitted {
    /// One weight per input column, applied to the raw (unstandardised) column; exactly 0.0 for a
    /// constant column.
    pub weights: Vec<f64>,
    /// Bias on the raw scale.
    pub bias: f64,
    /// Column means used for the standardisation (already folded into `weights` and `bias`).
    pub means: Vec<f64>,
    /// Column population standard deviations used for the standardisation (already folded into
    /// `weights` and `bias`); 1.0 for a constant column.
    pub stds: Vec<f64>,
    /// Newton steps taken.
    pub iterations: usize,
    /// Whether the gradient fell below the tolerance (false when the iterations ran out or the line
    /// search found no decrease).
    pub converged: bool,
    /// Final objective value (with the L2 term on the standardised weights).
    pub loss: f64,
}

impl Fitted {
    /// `sigmoid(weights · x + bias)`.
    ///
    /// # Panics
    /// When `x` does not have one value per weight.
    pub fn score(&self, x: ArrayView1<f64>) -> f64 {
        assert_eq!(x.len(), self.weights.len(), "a row to score needs one value per weight");
        sigmoid(x.iter().zip(&self.weights).map(|(v, w)| v * w).sum::<f64>() + self.bias)
    }

    /// Scores of every row.
    ///
    /// # Panics
    /// When `x` does not have one column per weight.
    pub fn scores(&self, x: ArrayView2<f64>) -> Array1<f64> {
        assert_eq!(x.ncols(), self.weights.len(), "rows to score need one column per weight");
        Array1::from_iter(x.rows().into_iter().map(|row| self.score(row)))
    }
}

/// Fits on `x` (n rows × d columns; the caller already transformed the features, e.g. log1p) and
/// labels `y` (0.0 or 1.0).
///
/// Errors on no rows, a label count that differs from the row count, a label other than 0 or 1, a
/// single class, a non-finite input, an invalid `l2` or `tolerance`, or a Newton system that stays
/// singular. Not converging is no error: see [`Fitted::converged`].
pub fn fit(x: ArrayView2<f64>, y: ArrayView1<f64>, config: &FitConfig) -> Result<Fitted> {
    let (n, d) = x.dim();
    if n == 0 {
        bail!("cannot fit on no examples: x has 0 rows");
    }
    if y.len() != n {
        bail!("{} labels for {} rows of x", y.len(), n);
    }
    if !config.l2.is_finite() || config.l2 < 0.0 {
        bail!("l2 must be a finite number >= 0, got {}", config.l2);
    }
    if let Some(w) = config.positive_weight.filter(|w| !w.is_finite() || *w <= 0.0) {
        bail!("the positive weight must be a finite number > 0, got {w}");
    }
    if config.tolerance.is_nan() || config.tolerance < 0.0 {
        bail!("tolerance must be >= 0, got {}", config.tolerance);
    }
    let mut n_pos = 0usize;
    for (i, &label) in y.iter().enumerate() {
        if label == 1.0 {
            n_pos += 1;
        } else if label != 0.0 {
            bail!("label {label} at row {i} is neither 0 nor 1");
        }
    }
    let n_neg = n - n_pos;
    if n_pos == 0 {
        bail!("no positive example: all {n} labels are 0");
    }
    if n_neg == 0 {
        bail!("no negative example: all {n} labels are 1");
    }

    let (means, mut stds) = column_moments(x)?;
    let mut active = Vec::with_capacity(d);
    for (j, std) in stds.iter_mut().enumerate() {
        if *std < CONSTANT_STD {
            *std = 1.0;
        } else {
            active.push(j);
        }
    }

    let (c_pos, c_neg) =
        match config.positive_weight {
            None => (n as f64 / (2.0 * n_pos as f64), n as f64 / (2.0 * n_neg as f64)),
            Some(w) => (w, 1.0),
        };
    let problem = Problem {
        x: x.view(),
        y: y.view(),
        active,
        means: &means,
        stds: &stds,
        c_pos,
        c_neg,
        total_weight: c_pos * n_pos as f64 + c_neg * n_neg as f64,
        l2: config.l2,
    };

    // Start from w = 0 with the bias that is optimal there (the weighted log-odds), i.e. from the
    // best constant model: the first step then only has to find the slopes.
    let p = problem.active.len() + 1;
    let mut theta = vec![0.0; p];
    theta[p - 1] = (c_pos * n_pos as f64 / (c_neg * n_neg as f64)).ln();

    let mut eval = problem.evaluate(&theta);
    let mut iterations = 0;
    let converged = loop {
        if max_abs(&eval.gradient) < config.tolerance {
            break true;
        }
        if iterations >= config.max_iterations {
            break false;
        }
        let step = newton_step(&eval).with_context(|| format!("Newton iteration {}", iterations + 1))?;
        let decrement: f64 = eval.gradient.iter().zip(&step).map(|(g, s)| g * s).sum();
        theta = if 0.5 * decrement <= LOSS_RESOLUTION * eval.loss.abs().max(1.0) {
            // So close to the optimum that the quadratic model is exact to rounding, while the
            // objective cannot show the decrease: take the full step and let the gradient judge.
            theta.iter().zip(&step).map(|(t, s)| t - s).collect()
        } else {
            match problem.line_search(&theta, &step, eval.loss) {
                Some(next) => next,
                None => break false,
            }
        };
        iterations += 1;
        eval = problem.evaluate(&theta);
    };

    // Fold the standardisation: w·(x - mean)/std + b = (w/std)·x + (b - Σ w·mean/std). Constant
    // columns keep their weight of exactly 0.0 and add nothing to the bias.
    let mut weights = vec![0.0; d];
    let mut bias = theta[p - 1];
    for (&j, &w) in problem.active.iter().zip(&theta) {
        weights[j] = w / stds[j];
        bias -= w * means[j] / stds[j];
    }
    Ok(Fitted { weights, bias, means: means.clone(), stds: stds.clone(), iterations, converged, loss: eval.loss })
}

/// Column means and population standard deviations (two passes, so the deviations are taken from
/// the exact mean rather than by the cancellation-prone `E[x²] - E[x]²`); errors on a non-finite value.
fn column_moments(x: ArrayView2<f64>) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, d) = x.dim();
    let mut sums = vec![0.0; d];
    for (i, row) in x.rows().into_iter().enumerate() {
        for (j, (&v, sum)) in row.iter().zip(&mut sums).enumerate() {
            if !v.is_finite() {
                bail!("x[{i}, {j}] = {v} is not finite");
            }
            *sum += v;
        }
    }
    let means: Vec<f64> = sums.iter().map(|s| s / n as f64).collect();
    let mut squares = vec![0.0; d];
    for row in x.rows() {
        for ((&v, &mean), square) in row.iter().zip(&means).zip(&mut squares) {
            let dev = v - mean;
            *square += dev * dev;
        }
    }
    let mut stds = Vec::with_capacity(d);
    for (j, (&square, &mean)) in squares.iter().zip(&means).enumerate() {
        let std = (square / n as f64).sqrt();
        if !mean.is_finite() || !std.is_finite() {
            bail!("column {j} overflows when standardised (values too large)");
        }
        stds.push(std);
    }
    Ok((means, stds))
}

/// The optimisation problem on the standardised active columns; parameters are the active
/// columns' standardised weights followed by the bias.
struct Problem<'a> {
    x: ArrayView2<'a, f64>,
    y: ArrayView1<'a, f64>,
    /// Non-constant columns, in order: the optimised weights belong to these.
    active: Vec<usize>,
    means: &'a [f64],
    stds: &'a [f64],
    c_pos: f64,
    c_neg: f64,
    /// Σ_i c_i.
    total_weight: f64,
    l2: f64,
}

/// Objective, gradient and Hessian (row-major, p × p) at one point.
struct Evaluation {
    loss: f64,
    gradient: Vec<f64>,
    hessian: Vec<f64>,
}

/// Weighted sums of losses, gradients and the upper triangle of the Hessian.
struct Sums {
    loss: f64,
    gradient: Vec<f64>,
    hessian: Vec<f64>,
}

impl Sums {
    fn new(p: usize) -> Sums {
        Sums { loss: 0.0, gradient: vec![0.0; p], hessian: vec![0.0; p * p] }
    }

    /// Adds `chunk` into `self` and clears it.
    fn absorb(&mut self, chunk: &mut Sums) {
        self.loss += chunk.loss;
        chunk.loss = 0.0;
        for (total, part) in self.gradient.iter_mut().zip(chunk.gradient.iter_mut()) {
            *total += *part;
            *part = 0.0;
        }
        for (total, part) in self.hessian.iter_mut().zip(chunk.hessian.iter_mut()) {
            *total += *part;
            *part = 0.0;
        }
    }
}

impl Problem<'_> {
    /// Writes the standardised active values of `row` into `buf`, then the 1 that multiplies the bias.
    fn standardise(&self, row: ArrayView1<f64>, buf: &mut [f64]) {
        for (slot, &j) in buf.iter_mut().zip(&self.active) {
            *slot = (row[j] - self.means[j]) / self.stds[j];
        }
        buf[self.active.len()] = 1.0;
    }

    fn class_weight(&self, positive: bool) -> f64 {
        if positive {
            self.c_pos
        } else {
            self.c_neg
        }
    }

    /// `l2/2 · |w|²`, the bias excluded.
    fn penalty(&self, theta: &[f64]) -> f64 {
        let weights = &theta[..theta.len() - 1];
        0.5 * self.l2 * weights.iter().map(|w| w * w).sum::<f64>()
    }

    /// The objective alone: one pass, O(n·d).
    fn objective(&self, theta: &[f64]) -> f64 {
        let mut buf = vec![0.0; theta.len()];
        let (mut total, mut chunk) = (0.0, 0.0);
        for (i, (row, &label)) in self.x.rows().into_iter().zip(self.y.iter()).enumerate() {
            self.standardise(row, &mut buf);
            let z = dot(&buf, theta);
            let positive = label == 1.0;
            chunk += self.class_weight(positive) * log_loss(z, positive);
            if (i + 1) % CHUNK_ROWS == 0 {
                total += chunk;
                chunk = 0.0;
            }
        }
        (total + chunk) / self.total_weight + self.penalty(theta)
    }

    /// Objective, gradient and Hessian in one pass, O(n·d²) time and O(d²) memory.
    fn evaluate(&self, theta: &[f64]) -> Evaluation {
        let p = theta.len();
        let mut buf = vec![0.0; p];
        let mut total = Sums::new(p);
        let mut chunk = Sums::new(p);
        for (i, (row, &label)) in self.x.rows().into_iter().zip(self.y.iter()).enumerate() {
            self.standardise(row, &mut buf);
            let z = dot(&buf, theta);
            let positive = label == 1.0;
            let c = self.class_weight(positive);
            let prob = sigmoid(z);
            chunk.loss += c * log_loss(z, positive);
            let residual = c * (prob - if positive { 1.0 } else { 0.0 });
            // p(1 - p) with 1 - p computed as sigmoid(-z): no cancellation when p is near 1.
            let curvature = c * prob * sigmoid(-z);
            for (a, &xa) in buf.iter().enumerate() {
                chunk.gradient[a] += residual * xa;
                // Upper triangle only: the Hessian is symmetric, mirrored once after the pass.
                let scaled = curvature * xa;
                for (h, &xb) in chunk.hessian[a * p + a..(a + 1) * p].iter_mut().zip(&buf[a..]) {
                    *h += scaled * xb;
                }
            }
            if (i + 1) % CHUNK_ROWS == 0 {
                total.absorb(&mut chunk);
            }
        }
        total.absorb(&mut chunk);

        let scale = 1.0 / self.total_weight;
        let mut gradient: Vec<f64> = total.gradient.iter().map(|g| g * scale).collect();
        let mut hessian = vec![0.0; p * p];
        for a in 0..p {
            for b in a..p {
                let h = total.hessian[a * p + b] * scale;
                hessian[a * p + b] = h;
                hessian[b * p + a] = h;
            }
        }
        // The L2 term, on the weights only: the bias is the last parameter.
        for (a, (g, &t)) in gradient.iter_mut().zip(theta).take(p - 1).enumerate() {
            *g += self.l2 * t;
            hessian[a * p + a] += self.l2;
        }
        Evaluation { loss: total.loss * scale + self.penalty(theta), gradient, hessian }
    }

    /// `theta - s·step` for the largest `s` in 1, 1/2, 1/4, … that does not increase the objective
    /// above `loss`; None when none of them does.
    fn line_search(&self, theta: &[f64], step: &[f64], loss: f64) -> Option<Vec<f64>> {
        let mut scale = 1.0;
        let mut candidate = vec![0.0; theta.len()];
        for _ in 0..MAX_HALVINGS {
            for ((c, t), s) in candidate.iter_mut().zip(theta).zip(step) {
                *c = t - scale * s;
            }
            if self.objective(&candidate) <= loss {
                return Some(candidate);
            }
            scale *= 0.5;
        }
        None
    }
}

/// The Newton step `H⁻¹ g` (to be subtracted from the parameters).
fn newton_step(eval: &Evaluation) -> Result<Vec<f64>> {
    let p = eval.gradient.len();
    if let Some(step) = cholesky_solve(&eval.hessian, &eval.gradient, p, 0.0) {
        return Ok(step);
    }
    // Saturated probabilities (near-separable data with l2 = 0) can leave the Hessian numerically
    // singular; a tiny ridge restores a usable descent direction.
    cholesky_solve(&eval.hessian, &eval.gradient, p, JITTER).with_context(|| {
        format!("the {p}×{p} Newton system is singular even with a {:e} ridge (separable data with l2 = 0?)", JITTER)
    })
}

/// Solves `(a + jitter·I) x = b` for a symmetric positive-definite row-major `p × p` matrix `a`
/// by Cholesky decomposition; None when the matrix is not (numerically) positive definite.
#[allow(clippy::needless_range_loop)] // Index loops read closest to the textbook algorithm.
fn cholesky_solve(a: &[f64], b: &[f64], p: usize, jitter: f64) -> Option<Vec<f64>> {
    // a = l·lᵀ with l lower triangular, row-major.
    let mut l = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..=i {
            let mut sum = a[i * p + j];
            if i == j {
                sum += jitter;
            }
            for k in 0..j {
                sum -= l[i * p + k] * l[j * p + k];
            }
            if i == j {
                if !sum.is_finite() || sum <= 0.0 {
                    return None;
                }
                l[i * p + i] = sum.sqrt();
            } else {
                l[i * p + j] = sum / l[j * p + j];
            }
        }
    }
    // Forward substitution l·u = b, then back substitution lᵀ·x = u.
    let mut u = vec![0.0; p];
    for i in 0..p {
        let mut sum = b[i];
        for k in 0..i {
            sum -= l[i * p + k] * u[k];
        }
        u[i] = sum / l[i * p + i];
    }
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        let mut sum = u[i];
        for k in i + 1..p {
            sum -= l[k * p + i] * x[k];
        }
        x[i] = sum / l[i * p + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Largest absolute value; NaN when any value is NaN, so a broken gradient never looks converged.
fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |max: f64, v| if v.is_nan() || max.is_nan() { f64::NAN } else { max.max(v.abs()) })
}

/// `1 / (1 + e^-z)` without overflow for either sign of `z`.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^t)` without overflow or loss of precision for large `|t|`.
fn softplus(t: f64) -> f64 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

/// The log-loss of score `z` on an example of the given class: `-ln σ(z)` or `-ln(1 - σ(z))`.
fn log_loss(z: f64, positive: bool) -> f64 {
    if positive {
        softplus(-z)
    } else {
        softplus(z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use proptest::prelude::*;

    /// A 64-bit linear congruential generator (Knuth's MMIX constants): deterministic test data
    /// without a random-number dependency.
    struct Lcg(u64);

    impl Lcg {
        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Logistic data with raw weights [2, -0.4, 0.02] and bias 2.5 on columns of different
    /// centres and scales, so that the standardisation and its folding matter.
    fn logistic_data(n: usize, seed: u64) -> (Array2<f64>, Array1<f64>) {
        let mut rng = Lcg(seed);
        let mut x = Array2::zeros((n, 3));
        let mut y = Array1::zeros(n);
        for i in 0..n {
            let x0 = 2.0 * rng.uniform() - 1.0;
            let x1 = 10.0 + 5.0 * (2.0 * rng.uniform() - 1.0);
            let x2 = 100.0 * rng.uniform();
            let z = 2.0 * x0 - 0.4 * x1 + 0.02 * x2 + 2.5;
            x[[i, 0]] = x0;
            x[[i, 1]] = x1;
            x[[i, 2]] = x2;
            y[i] = if rng.uniform() < sigmoid(z) { 1.0 } else { 0.0 };
        }
        (x, y)
    }

    /// Population standard deviations, 1 for a constant column: computed here independently of
    /// the module.
    fn population_stds(x: ArrayView2<f64>) -> Vec<f64> {
        x.columns()
            .into_iter()
            .map(|column| {
                let n = column.len() as f64;
                let mean = column.sum() / n;
                let std = (column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
                if std < 1e-12 {
                    1.0
                } else {
                    std
                }
            })
            .collect()
    }

    /// The objective written out naively on the raw-scale parameters: the L2 term on the raw
    /// weights times the column deviations is the L2 term on the standardised weights.
    fn raw_objective(x: ArrayView2<f64>, y: ArrayView1<f64>, config: &FitConfig, weights: &[f64], bias: f64) -> f64 {
        let n = y.len() as f64;
        let n_pos = y.iter().filter(|&&v| v == 1.0).count() as f64;
        let (c_pos, c_neg) = match config.positive_weight {
            None => (n / (2.0 * n_pos), n / (2.0 * (n - n_pos))),
            Some(w) => (w, 1.0),
        };
        let (mut sum, mut total) = (0.0, 0.0);
        for (row, &label) in x.rows().into_iter().zip(y.iter()) {
            let z = row.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() + bias;
            let (c, loss) = if label == 1.0 { (c_pos, (-z).exp().ln_1p()) } else { (c_neg, z.exp().ln_1p()) };
            sum += c * loss;
            total += c;
        }
        let penalty: f64 = weights.iter().zip(population_stds(x)).map(|(w, s)| (w * s).powi(2)).sum();
        sum / total + 0.5 * config.l2 * penalty
    }

    fn params(fitted: &Fitted) -> Vec<f64> {
        let mut params = fitted.weights.clone();
        params.push(fitted.bias);
        params
    }

    fn objective_at(x: ArrayView2<f64>, y: ArrayView1<f64>, config: &FitConfig, params: &[f64]) -> f64 {
        let (weights, bias) = params.split_at(params.len() - 1);
        raw_objective(x, y, config, weights, bias[0])
    }

    #[test]
    fn recovers_the_true_weights() {
        let (x, y) = logistic_data(20_000, 42);
        let config = FitConfig { l2: 1e-6, positive_weight: Some(1.0), ..FitConfig::default() };
        let fitted = fit(x.view(), y.view(), &config).unwrap();
        assert!(fitted.converged, "{fitted:?}");
        let truth = [2.0, -0.4, 0.02];
        for (j, (&w, &t)) in fitted.weights.iter().zip(truth.iter()).enumerate() {
            let (w, t): (f64, f64) = (w, t);
            assert_eq!(w.signum(), t.signum(), "weight {j}: {w} vs {t}");
            // Ratios to the first weight: the relative sizes the model learned.
            let (ratio, true_ratio) = (w / fitted.weights[0], t / truth[0]);
            assert!((ratio / true_ratio - 1.0).abs() < 0.15, "weight {j}: ratio {ratio} vs {true_ratio}");
        }
        assert!((fitted.bias - 2.5).abs() < 0.5, "bias {}", fitted.bias);
        let scores = fitted.scores(x.view());
        for (i, row) in x.rows().into_iter().enumerate().take(10) {
            assert_eq!(scores[i], fitted.score(row));
        }
    }

    #[test]
    fn gradient_vanishes_at_the_solution() {
        let (x, y) = logistic_data(500, 7);
        let stds = population_stds(x.view());
        let means: Vec<f64> = x.columns().into_iter().map(|column| column.sum() / column.len() as f64).collect();
        // Central differences along the standardised coordinates, mapped onto the raw parameters
        // (a standardised weight w'_j is w_j = w'_j / std_j with the bias moved by -w'_j·mean_j/std_j):
        // there the third derivatives are O(1), so the differences are accurate to about 1e-10.
        let mut directions: Vec<Vec<f64>> = (0..3)
            .map(|j| {
                let mut direction = vec![0.0; 4];
                direction[j] = 1.0 / stds[j];
                direction[3] = -means[j] / stds[j];
                direction
            })
            .collect();
        directions.push(vec![0.0, 0.0, 0.0, 1.0]);
        for positive_weight in [None, Some(1.0), Some(7.5)] {
            let config = FitConfig { l2: 1e-2, positive_weight, ..FitConfig::default() };
            let fitted = fit(x.view(), y.view(), &config).unwrap();
            assert!(fitted.converged);
            let best = params(&fitted);
            assert!((objective_at(x.view(), y.view(), &config, &best) - fitted.loss).abs() < 1e-12);
            let h = 1e-5;
            for (k, direction) in directions.iter().enumerate() {
                let moved = |sign: f64| -> Vec<f64> { best.iter().zip(direction).map(|(p, e)| p + sign * h * e).collect() };
                let derivative = (objective_at(x.view(), y.view(), &config, &moved(1.0))
                    - objective_at(x.view(), y.view(), &config, &moved(-1.0)))
                    / (2.0 * h);
                assert!(derivative.abs() < 1e-7, "positive weight {positive_weight:?}, coordinate {k}: derivative {derivative}");
            }
        }
    }

    #[test]
    fn balancing_raises_the_scores_of_a_rare_class() {
        let mut rng = Lcg(3);
        let n = 4_000;
        let mut x = Array2::zeros((n, 1));
        let mut y = Array1::zeros(n);
        for i in 0..n {
            let v = 2.0 * rng.uniform() - 1.0;
            x[[i, 0]] = v;
            y[i] = if rng.uniform() < sigmoid(-4.0 + 2.0 * v) { 1.0 } else { 0.0 };
        }
        let positives = y.iter().filter(|&&v| v == 1.0).count();
        assert!(positives > 20 && positives < n / 10, "{positives} positives");
        let mean_positive_score = |balanced: bool| {
            let positive_weight = if balanced { None } else { Some(1.0) };
            let fitted = fit(x.view(), y.view(), &FitConfig { positive_weight, ..FitConfig::default() }).unwrap();
            let scores = fitted.scores(x.view());
            scores.iter().zip(y.iter()).filter(|&(_, &l)| l == 1.0).map(|(s, _)| s).sum::<f64>() / positives as f64
        };
        let (balanced, unbalanced) = (mean_positive_score(true), mean_positive_score(false));
        assert!(balanced > unbalanced + 0.2, "balanced {balanced}, unbalanced {unbalanced}");
    }

    #[test]
    fn constant_column_gets_weight_zero() {
        let (x, y) = logistic_data(300, 11);
        let mut with_constant = Array2::zeros((300, 4));
        for i in 0..300 {
            with_constant[[i, 0]] = x[[i, 0]];
            with_constant[[i, 1]] = 7.0;
            with_constant[[i, 2]] = x[[i, 1]];
            with_constant[[i, 3]] = x[[i, 2]];
        }
        let config = FitConfig::default();
        let fitted = fit(with_constant.view(), y.view(), &config).unwrap();
        assert_eq!(fitted.weights[1], 0.0);
        assert_eq!(fitted.stds[1], 1.0);
        assert_eq!(fitted.means[1], 7.0);
        // The constant column changes nothing else: same fit as without it.
        let without = fit(x.view(), y.view(), &config).unwrap();
        for (a, b) in [0, 2, 3].iter().map(|&j| fitted.weights[j]).zip(&without.weights) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!((fitted.bias - without.bias).abs() < 1e-9);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let config = FitConfig::default();
        let x = Array2::from_shape_vec((4, 1), vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        let message =
            |y: Vec<f64>, config: &FitConfig| fit(x.view(), Array1::from_vec(y).view(), config).unwrap_err().to_string();
        assert!(message(vec![0.0; 4], &config).contains("no positive"));
        assert!(message(vec![1.0; 4], &config).contains("no negative"));
        assert!(message(vec![0.0, 1.0, 0.5, 1.0], &config).contains("neither 0 nor 1"));
        assert!(message(vec![0.0, 1.0, 1.0], &config).contains("3 labels for 4 rows"));
        let negative_l2 = FitConfig { l2: -1.0, ..FitConfig::default() };
        assert!(message(vec![0.0, 1.0, 0.0, 1.0], &negative_l2).contains("l2"));

        let empty = Array2::<f64>::zeros((0, 2));
        let error = fit(empty.view(), Array1::<f64>::zeros(0).view(), &config).unwrap_err();
        assert!(error.to_string().contains("no examples"), "{error}");

        let nan = Array2::from_shape_vec((2, 1), vec![0.0, f64::NAN]).unwrap();
        let error = fit(nan.view(), Array1::from_vec(vec![0.0, 1.0]).view(), &config).unwrap_err();
        assert!(error.to_string().contains("not finite"), "{error}");
    }

    /// Random small data sets with both classes: (x, y).
    fn small_dataset() -> impl Strategy<Value = (Array2<f64>, Array1<f64>)> {
        (10usize..60, 1usize..4).prop_flat_map(|(n, d)| {
            (proptest::collection::vec(-3.0f64..3.0, n * d), proptest::collection::vec(any::<bool>(), n)).prop_map(
                move |(values, labels)| {
                    let x = Array2::from_shape_vec((n, d), values).unwrap();
                    let mut y = Array1::from_iter(labels.iter().map(|&l| if l { 1.0 } else { 0.0 }));
                    y[0] = 1.0;
                    y[1] = 0.0;
                    (x, y)
                },
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn fitted_point_is_a_minimum((x, y) in small_dataset()) {
            let config = FitConfig::default();
            let fitted = fit(x.view(), y.view(), &config).unwrap();
            prop_assert!(fitted.converged);
            let best = params(&fitted);
            let at_best = objective_at(x.view(), y.view(), &config, &best);
            for k in 0..best.len() {
                for delta in [-1e-3, 1e-3] {
                    let mut moved = best.clone();
                    moved[k] += delta;
                    let at_moved = objective_at(x.view(), y.view(), &config, &moved);
                    prop_assert!(at_moved >= at_best, "parameter {k} moved by {delta}: {at_moved} < {at_best}");
                }
            }
        }
    }
}
