//! Two independent groups of sentences (e.g. `" her"` as a possessive against `" her"` as an
//! object): per layer, Welch's t-test between the groups' angles of one condition, Hedges' g
//! with its 95% confidence interval, and the same multiple-comparison corrections as the paired
//! tests ([`crate::analysis::stats`]).
//!
//! Each group of a layer is summarised by its exact moments `(n, Σx, Σx²)` ([`ExactMoments`]),
//! so groups stream and shard exactly: moments merged from any split equal the whole, and so do
//! the tests computed from them.
//!
//! # Formulas
//! * Welch's t-test, as `scipy.stats.ttest_ind(a, b, equal_var=False)`: `t = (x̄_a − x̄_b) / se`
//!   with `se² = s_a²/n_a + s_b²/n_b`, Welch–Satterthwaite degrees of freedom
//!   `df = se⁴ / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1))` and a two-sided p-value; the
//!   95% CI of the mean difference is `x̄_a − x̄_b ± t_{0.975, df}·se` (scipy's
//!   `TtestResult.confidence_interval`).
//! * Hedges' g, as statsmodels' `stats.meta_analysis.effectsize_smd` (Borenstein et al. 2009,
//!   *Introduction to Meta-Analysis*): Cohen's d on the pooled standard deviation
//!   `s_p² = ((n_a − 1)s_a² + (n_b − 1)s_b²) / (N − 2)`, `N = n_a + n_b`, times the small-sample
//!   correction `J = 1 − 3/(4N − 9)`; its variance by the usual normal approximation
//!   `Var(g) = N/(n_a·n_b) + g²/(2(N − 3.94))`, and the 95% CI `g ± z_{0.975}·√Var(g)`.
//!
//! # Degenerate layers
//! Answered with a [`GroupFlag`] instead of an error, never significant, and counted as p = 1 in
//! the correction (as the paired tests' [`crate::analysis::LayerFlag`]):
//! * a group with fewer than 2 sentences: t = p = NaN (scipy's answer), effect sizes NaN;
//! * both groups constant: `se = 0`, t = ±inf with p = 0, or t = p = NaN when the means are
//!   equal (scipy's answer). The moments are exact integers, so "constant" is exact here: the
//!   variance is 0 exactly when every value of the group is the same f64.
//!
//! In both cases the Welch df is undefined; scipy reports a placeholder of 1, we report NaN.

use ndarray::{ArrayView3, Axis};
use statrs::distribution::{ContinuousCDF, Normal};

use super::moments::{fixed_point, ExactMoments};
use super::stats::{check_family, decide_layers, direction, merge_layers, t_quantile, two_sided_p};
use super::{AnalysisError, Correction, Direction, SignificanceOptions, CI_LEVEL};

/// Why a layer's two-group test is degenerate (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum GroupFlag {
    /// An ordinary test.
    #[default]
    None,
    /// Both groups are constant (zero variance): t = ±inf and p = 0, or t = p = NaN.
    ZeroVariance,
    /// A group has fewer than 2 sentences: its variance, hence t and p, are undefined (NaN).
    TooFewSentences,
}

/// One layer's comparison of group A with group B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupLayerTest {
    /// Layer transition, 1-based.
    pub layer: usize,
    /// Number of sentences of group A.
    pub n_a: u64,
    /// Number of sentences of group B.
    pub n_b: u64,
    /// Mean angle of group A.
    pub mean_a: f64,
    /// Mean angle of group B.
    pub mean_b: f64,
    /// Sample standard deviation (`n − 1` denominator) of group A.
    pub sd_a: f64,
    /// Sample standard deviation of group B.
    pub sd_b: f64,
    /// `mean_a − mean_b`.
    pub mean_difference: f64,
    /// Welch's t statistic; positive when A > B.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom (NaN when flagged).
    pub df: f64,
    /// Two-sided p-value (uncorrected).
    pub p: f64,
    /// p-value adjusted by the chosen correction (NaN when flagged).
    pub p_adjusted: f64,
    /// Lower end of the 95% CI of the mean difference (Welch).
    pub ci_low: f64,
    /// Upper end of the 95% CI of the mean difference.
    pub ci_high: f64,
    /// Hedges' g (bias-corrected standardized mean difference), positive when A > B.
    pub hedges_g: f64,
    /// Lower end of the 95% CI of g (normal approximation).
    pub g_ci_low: f64,
    /// Upper end of the 95% CI of g.
    pub g_ci_high: f64,
    /// Whether the layer is significant after correction.
    pub significant: bool,
    /// `AGreater` when significant and group A rotates more.
    pub direction: Direction,
    /// Set when the test is degenerate.
    pub flag: GroupFlag,
}

/// The two-group tests of all layers.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupResult {
    /// One test per layer, in layer order.
    pub layers: Vec<GroupLayerTest>,
    /// The significance level used.
    pub alpha: f64,
    /// The correction used.
    pub correction: Correction,
    /// The per-test threshold, as [`crate::analysis::SignificanceResult::threshold`].
    pub threshold: f64,
    /// The family size `m` used by the correction.
    pub num_tests: usize,
}

/// Per-layer exact moments of one group's angles of `condition`, from its angle tensor
/// `[num_layers, num_sentences, num_conditions]` (as [`crate::analysis::Rotations::angles`]).
///
/// # Errors
/// [`AnalysisError::ConditionOutOfRange`], [`AnalysisError::NonFinite`] (first non-finite angle,
/// by layer then sentence), [`AnalysisError::AngleOutOfRange`] (`|angle| ≥ 2^31`).
pub fn group_moments(angles: ArrayView3<f64>, condition: usize) -> Result<Vec<ExactMoments>, AnalysisError> {
    let num_conditions = angles.shape()[2];
    if condition >= num_conditions {
        return Err(AnalysisError::ConditionOutOfRange { condition, num_conditions });
    }
    let layer_moments = |(l, layer): (usize, ndarray::ArrayView2<f64>)| {
        let mut moments = ExactMoments::default();
        for (sentence, &angle) in layer.index_axis(Axis(1), condition).iter().enumerate() {
            if !angle.is_finite() {
                return Err(AnalysisError::NonFinite { layer: l + 1, sentence });
            }
            moments.push_fixed(fixed_point(angle).ok_or(AnalysisError::AngleOutOfRange { layer: l + 1, sentence })?);
        }
        Ok(moments)
    };
    angles.outer_iter().enumerate().map(layer_moments).collect()
}

/// Per condition, the per-layer exact moments of its angles ([`group_moments`] of each condition of
/// `angles`): what a stream or a shard reports so that two groups can be compared later, exactly.
///
/// # Errors
/// As [`group_moments`].
pub fn condition_moments(angles: ArrayView3<f64>) -> Result<Vec<Vec<ExactMoments>>, AnalysisError> {
    (0..angles.shape()[2]).map(|condition| group_moments(angles, condition)).collect()
}

/// Adds a shard's per-condition moments ([`condition_moments`]) to the totals (empty at first).
pub fn merge_conditions(totals: &mut Vec<Vec<ExactMoments>>, shard: &[Vec<ExactMoments>]) {
    if totals.is_empty() {
        totals.extend_from_slice(shard);
    } else {
        totals.iter_mut().zip(shard).for_each(|(total, s)| merge_layers(total, s));
    }
}

/// Checks a two-group test's options before any work: the compared `condition` exists, and the
/// family options (alpha, `num_tests`) fit `num_layers`; returns the family size.
///
/// # Errors
/// [`AnalysisError::ConditionOutOfRange`], [`AnalysisError::InvalidAlpha`],
/// [`AnalysisError::NoLayers`], [`AnalysisError::InvalidNumTests`].
pub fn check_group_options(
    condition: usize,
    opts: &SignificanceOptions,
    num_layers: usize,
    num_conditions: usize,
) -> Result<usize, AnalysisError> {
    if condition >= num_conditions {
        return Err(AnalysisError::ConditionOutOfRange { condition, num_conditions });
    }
    check_family(opts, num_layers)
}

/// Welch's t-test and Hedges' g per layer between group A and group B, from their merged
/// moments (one per layer each, in layer order); `opts.condition_a/condition_b` are not used.
///
/// # Errors
/// [`AnalysisError::GroupLayerMismatch`] (different numbers of layers), those of the family
/// options ([`AnalysisError::InvalidAlpha`], [`AnalysisError::NoLayers`],
/// [`AnalysisError::InvalidNumTests`]) and [`AnalysisError::NonFiniteStats`].
pub fn welch_layers(
    a: &[ExactMoments],
    b: &[ExactMoments],
    opts: &SignificanceOptions,
) -> Result<GroupResult, AnalysisError> {
    if a.len() != b.len() {
        return Err(AnalysisError::GroupLayerMismatch { layers_a: a.len(), layers_b: b.len() });
    }
    let num_tests = check_family(opts, a.len())?;
    let raw: Vec<GroupLayerTest> =
        a.iter().zip(b).enumerate().map(|(l, (a, b))| welch_layer(l + 1, a, b)).collect::<Result<_, _>>()?;
    let tests: Vec<(f64, bool)> = raw.iter().map(|r| (r.p, r.flag == GroupFlag::None)).collect();
    let (threshold, decisions) = decide_layers(&tests, opts, num_tests);
    let layers = raw
        .into_iter()
        .zip(decisions)
        .map(|(r, (p_adjusted, significant))| GroupLayerTest {
            p_adjusted,
            significant,
            direction: direction(significant, r.mean_difference),
            ..r
        })
        .collect();
    Ok(GroupResult { layers, alpha: opts.alpha, correction: opts.correction, threshold, num_tests })
}

/// One layer's test before the correction (`p_adjusted` NaN, not significant).
fn welch_layer(layer: usize, a: &ExactMoments, b: &ExactMoments) -> Result<GroupLayerTest, AnalysisError> {
    let (mean_a, mean_b, var_a, var_b) = (a.mean(), b.mean(), a.variance(), b.variance());
    let mut test = GroupLayerTest {
        layer,
        n_a: a.n(),
        n_b: b.n(),
        mean_a,
        mean_b,
        sd_a: var_a.sqrt(),
        sd_b: var_b.sqrt(),
        mean_difference: mean_a - mean_b,
        t: f64::NAN,
        df: f64::NAN,
        p: f64::NAN,
        p_adjusted: f64::NAN,
        ci_low: f64::NAN,
        ci_high: f64::NAN,
        hedges_g: f64::NAN,
        g_ci_low: f64::NAN,
        g_ci_high: f64::NAN,
        significant: false,
        direction: Direction::NotSignificant,
        flag: GroupFlag::TooFewSentences,
    };
    if a.n() < 2 || b.n() < 2 {
        return Ok(test);
    }
    if ![mean_a, mean_b, var_a, var_b].iter().all(|x| x.is_finite()) {
        return Err(AnalysisError::NonFiniteStats { layer });
    }
    if var_a == 0.0 && var_b == 0.0 {
        return Ok(constant_groups(test));
    }
    welch(&mut test, var_a, var_b);
    hedges(&mut test, var_a, var_b);
    test.flag = GroupFlag::None;
    Ok(test)
}

/// Both groups constant: scipy's `t = difference / 0` (p = 0, or NaN with t), a zero-width CI of
/// the difference and an infinite (or NaN) g without a CI.
fn constant_groups(test: GroupLayerTest) -> GroupLayerTest {
    let t = test.mean_difference / 0.0;
    let p = if t.is_nan() { f64::NAN } else { 0.0 };
    let (ci_low, ci_high) = (test.mean_difference, test.mean_difference);
    GroupLayerTest { t, p, ci_low, ci_high, hedges_g: t, flag: GroupFlag::ZeroVariance, ..test }
}

/// Welch's t, df, p and the CI of the mean difference.
fn welch(test: &mut GroupLayerTest, var_a: f64, var_b: f64) {
    let (n_a, n_b) = (test.n_a as f64, test.n_b as f64);
    let (vn_a, vn_b) = (var_a / n_a, var_b / n_b);
    let se2 = vn_a + vn_b;
    let se = se2.sqrt();
    test.t = test.mean_difference / se;
    test.df = se2 * se2 / (vn_a * vn_a / (n_a - 1.0) + vn_b * vn_b / (n_b - 1.0));
    test.p = two_sided_p(test.t, test.df);
    let half = t_quantile(0.5 + CI_LEVEL / 2.0, test.df) * se;
    (test.ci_low, test.ci_high) = (test.mean_difference - half, test.mean_difference + half);
}

/// Hedges' g and its CI (statsmodels' `effectsize_smd`; see the module documentation).
fn hedges(test: &mut GroupLayerTest, var_a: f64, var_b: f64) {
    let (n_a, n_b) = (test.n_a as f64, test.n_b as f64);
    let n = n_a + n_b;
    let pooled_sd = (((n_a - 1.0) * var_a + (n_b - 1.0) * var_b) / (n - 2.0)).sqrt();
    let g = (1.0 - 3.0 / (4.0 * n - 9.0)) * test.mean_difference / pooled_sd;
    let var_g = n / (n_a * n_b) + g * g / (2.0 * (n - 3.94));
    let half = normal_quantile(0.5 + CI_LEVEL / 2.0) * var_g.sqrt();
    (test.hedges_g, test.g_ci_low, test.g_ci_high) = (g, g - half, g + half);
}

/// The standard normal quantile `q`.
fn normal_quantile(q: f64) -> f64 {
    Normal::standard().inverse_cdf(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::{s, Array3};

    fn group(values: &[f64]) -> ExactMoments {
        ExactMoments::from_values(values).unwrap()
    }

    #[test]
    fn normal_quantile_matches_scipy() {
        // scipy.stats.norm.ppf(0.975)
        assert_relative_eq!(normal_quantile(0.975), 1.959_963_984_540_054, max_relative = 1e-14);
    }

    #[test]
    fn hand_example() {
        // a = [1, 2, 3, 4] (mean 2.5, var 5/3), b = [2, 4, 6] (mean 4, var 4):
        // se² = 5/12 + 4/3 = 1.75, t = −1.5/√1.75, df = 1.75² / ((5/12)²/3 + (4/3)²/2).
        let r = welch_layers(&[group(&[1.0, 2.0, 3.0, 4.0])], &[group(&[2.0, 4.0, 6.0])], &Default::default());
        let l = r.unwrap().layers[0];
        assert_eq!((l.layer, l.n_a, l.n_b, l.flag), (1, 4, 3, GroupFlag::None));
        assert_relative_eq!(l.t, -1.5 / 1.75f64.sqrt(), max_relative = 1e-14);
        let df = 1.75f64.powi(2) / ((5.0f64 / 12.0).powi(2) / 3.0 + (4.0f64 / 3.0).powi(2) / 2.0);
        assert_relative_eq!(l.df, df, max_relative = 1e-14);
        assert!(l.ci_low < l.mean_difference && l.mean_difference < l.ci_high);
        // Pooled sd = sqrt((3·5/3 + 2·4)/5) = sqrt(13/5); J = 1 − 3/19.
        assert_relative_eq!(l.hedges_g, (16.0 / 19.0) * -1.5 / 2.6f64.sqrt(), max_relative = 1e-14);
    }

    #[test]
    fn merged_from_any_split_equals_whole() {
        let angles = Array3::from_shape_fn((4, 40, 3), |(l, s, c)| {
            ((l * 977 + s * 7919 + c * 31) % 1000) as f64 * 1e-3 + if s % 3 == 0 { 1e4 } else { 1e-9 }
        });
        let whole = group_moments(angles.view(), 0).unwrap();
        let mut merged = vec![ExactMoments::default(); 4];
        for (lo, hi) in [(30, 40), (0, 1), (17, 30), (1, 17)] {
            let part = group_moments(angles.slice(s![.., lo..hi, ..]), 0).unwrap();
            merged.iter_mut().zip(&part).for_each(|(m, p)| m.merge(p));
        }
        assert_eq!(merged, whole);
        let b = group_moments(angles.view(), 1).unwrap();
        let opts = SignificanceOptions { correction: Correction::Holm, ..Default::default() };
        assert_eq!(welch_layers(&merged, &b, &opts), welch_layers(&whole, &b, &opts));
    }

    #[test]
    fn every_conditions_moments_merge_from_any_split() {
        let angles = Array3::from_shape_fn((3, 12, 3), |(l, s, c)| (l * 7 + s * 3 + c) as f64 * 0.37);
        let whole = condition_moments(angles.view()).unwrap();
        assert_eq!(whole.len(), 3);
        for (c, layers) in whole.iter().enumerate() {
            assert_eq!(layers, &group_moments(angles.view(), c).unwrap());
        }
        let mut merged = Vec::new();
        for (lo, hi) in [(5, 12), (0, 5)] {
            merge_conditions(&mut merged, &condition_moments(angles.slice(s![.., lo..hi, ..])).unwrap());
        }
        assert_eq!(merged, whole);
    }

    #[test]
    fn group_options_are_checked_before_any_work() {
        let d = SignificanceOptions::default();
        assert_eq!(check_group_options(2, &d, 6, 3), Ok(6));
        assert_eq!(
            check_group_options(3, &d, 6, 3),
            Err(AnalysisError::ConditionOutOfRange { condition: 3, num_conditions: 3 })
        );
        let few = SignificanceOptions { num_tests: Some(5), ..d };
        assert_eq!(
            check_group_options(0, &few, 6, 3),
            Err(AnalysisError::InvalidNumTests { num_tests: 5, num_layers: 6 })
        );
    }

    #[test]
    fn degenerate_layers_are_flagged_not_errors() {
        let opts = SignificanceOptions { correction: Correction::Holm, ..Default::default() };
        let a = [group(&[1.0]), group(&[0.5; 3]), group(&[0.5; 3]), group(&[1.0, 2.0, 4.0]), ExactMoments::default()];
        let b = [group(&[1.0, 2.0]), group(&[0.25; 4]), group(&[0.5; 2]), group(&[0.5; 4]), group(&[1.0, 2.0])];
        let r = welch_layers(&a, &b, &opts).unwrap();
        let flags: Vec<GroupFlag> = r.layers.iter().map(|l| l.flag).collect();
        use GroupFlag::*;
        assert_eq!(flags, [TooFewSentences, ZeroVariance, ZeroVariance, None, TooFewSentences]);
        assert!(r.layers[0].t.is_nan() && r.layers[0].p.is_nan());
        assert_eq!((r.layers[1].t, r.layers[1].p), (f64::INFINITY, 0.0));
        assert!(r.layers[2].t.is_nan() && r.layers[2].p.is_nan());
        // One constant group is an ordinary Welch test: df = n_other − 1.
        assert_relative_eq!(r.layers[3].df, 2.0, max_relative = 1e-12);
        assert!(r.layers.iter().all(|l| l.flag == None || (!l.significant && l.p_adjusted.is_nan())));
        // The flagged layers count as p = 1: Holm over 5 tests of the one ordinary layer.
        assert_relative_eq!(r.layers[3].p_adjusted, (5.0 * r.layers[3].p).min(1.0), max_relative = 1e-14);
    }

    #[test]
    fn errors() {
        let d = SignificanceOptions::default();
        let g = group(&[1.0, 2.0]);
        assert_eq!(welch_layers(&[g], &[], &d), Err(AnalysisError::GroupLayerMismatch { layers_a: 1, layers_b: 0 }));
        assert_eq!(welch_layers(&[], &[], &d), Err(AnalysisError::NoLayers));
        let bad = SignificanceOptions { alpha: 1.0, ..d };
        assert_eq!(welch_layers(&[g], &[g], &bad), Err(AnalysisError::InvalidAlpha { alpha: 1.0 }));
        let mut angles = Array3::<f64>::ones((2, 3, 3));
        assert_eq!(
            group_moments(angles.view(), 3),
            Err(AnalysisError::ConditionOutOfRange { condition: 3, num_conditions: 3 })
        );
        angles[[1, 2, 0]] = f64::NAN;
        assert_eq!(group_moments(angles.view(), 0), Err(AnalysisError::NonFinite { layer: 2, sentence: 2 }));
        assert!(group_moments(angles.view(), 1).is_ok());
        angles[[0, 1, 1]] = 3e9;
        assert_eq!(group_moments(angles.view(), 1), Err(AnalysisError::AngleOutOfRange { layer: 1, sentence: 1 }));
    }
}
