//! Per-layer paired t-tests between two conditions, with multiple-comparison correction.
//!
//! For each layer transition the angles of condition A (by default the target token) and
//! condition B (by default the non-target token) are paired by sentence, and
//! `scipy.stats.ttest_rel` is reproduced on the differences `d = a − b`: `t = mean(d) /
//! (sd(d)/√n)` with `n − 1` degrees of freedom and a two-sided p-value.
//!
//! The notebook declared a layer significant when `p < 0.05 / n_hiddens`, i.e. it divided by
//! 49 (the number of hidden states) although it ran 48 tests (one per layer transition). The
//! default here divides by the number of tested layers; the notebook's divisor can be
//! reproduced with [`SignificanceOptions::num_tests`]` = Some(49)`.

use ndarray::ArrayView3;

pub use super::moments::{fixed_point, ExactMoments, EXACT_SCALE_BITS, MAX_ABS_DIFFERENCE};
use super::{student_t, AnalysisError};

/// Confidence level of [`LayerTest::ci_low`]/[`LayerTest::ci_high`]: always 95%, independent
/// of the significance level `alpha` (which is about the corrected family of tests).
pub const CI_LEVEL: f64 = 0.95;

/// How p-values are corrected for testing many layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Correction {
    /// Bonferroni: significant when `p < alpha / m`; adjusted `p·m` (capped at 1).
    #[default]
    Bonferroni,
    /// Holm's step-down procedure (controls the family-wise error rate, uniformly more
    /// powerful than Bonferroni).
    Holm,
    /// Benjamini–Hochberg step-up procedure (controls the false discovery rate).
    BenjaminiHochberg,
    /// No correction: significant when `p < alpha`.
    None,
}

impl Correction {
    /// A short name: `"bonferroni"`, `"holm"`, `"benjamini_hochberg"` or `"none"`.
    pub fn label(self) -> &'static str {
        match self {
            Correction::Bonferroni => "bonferroni",
            Correction::Holm => "holm",
            Correction::BenjaminiHochberg => "benjamini_hochberg",
            Correction::None => "none",
        }
    }
}

/// Which way a layer's difference goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// Not significant after correction.
    NotSignificant,
    /// Significant, and condition A rotates more than condition B (mean difference > 0).
    AGreater,
    /// Significant, and condition B rotates more than condition A (mean difference < 0).
    BGreater,
}

/// Why a layer's test is degenerate. Such a layer keeps `t` and `p` as `scipy.stats.ttest_rel`
/// gives them, is never significant, and enters the correction as `p = 1` (so it does not change
/// the other layers' adjusted p-values); its `p_adjusted` is NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LayerFlag {
    /// An ordinary test.
    #[default]
    None,
    /// The paired differences are constant (their exact variance is 0): `sd = 0`,
    /// `t = ±inf` and `p = 0` when their mean is not 0, `t = p = NaN` when it is (scipy's values).
    ZeroVariance,
}

/// What to test and how to correct.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignificanceOptions {
    /// Condition index of the first sample (default 0, target).
    pub condition_a: usize,
    /// Condition index of the second sample (default 1, non-target).
    pub condition_b: usize,
    /// Family-wise significance level (or FDR level for Benjamini–Hochberg), in `(0, 1)`.
    pub alpha: f64,
    /// Multiple-comparison correction.
    pub correction: Correction,
    /// Size `m` of the family of tests; `None` means the number of tested layers. It must not
    /// be smaller than the number of tested layers. With a larger `m`, Holm and
    /// Benjamini–Hochberg behave as if the extra tests had p = 1; the notebook used 49.
    pub num_tests: Option<usize>,
}

impl Default for SignificanceOptions {
    fn default() -> Self {
        SignificanceOptions {
            condition_a: 0,
            condition_b: 1,
            alpha: 0.05,
            correction: Correction::Bonferroni,
            num_tests: None,
        }
    }
}

/// The paired statistics are the exact moments of the differences `d = a − b`.
pub type PairedStats = ExactMoments;

/// One layer's paired t-test of condition A against condition B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerTest {
    /// Layer transition, 1-based: layer `l` compares hidden state `l − 1` with hidden state `l`.
    pub layer: usize,
    /// Number of pairs (sentences).
    pub n: u64,
    /// t statistic `mean_difference / (sd_difference / √n)`; positive when A > B.
    pub t: f64,
    /// Two-sided p-value from Student's t with `df` degrees of freedom (uncorrected).
    pub p: f64,
    /// p-value adjusted by the chosen correction (capped at 1; equal to `p` for `None`).
    pub p_adjusted: f64,
    /// Degrees of freedom, `n − 1`.
    pub df: f64,
    /// Mean of the differences `a − b` (in the angle unit of the input).
    pub mean_difference: f64,
    /// Sample standard deviation of the differences (`n − 1` denominator).
    pub sd_difference: f64,
    /// Effect size Cohen's d_z = `mean_difference / sd_difference`.
    pub cohens_dz: f64,
    /// Lower end of the 95% confidence interval of the mean difference ([`CI_LEVEL`]).
    pub ci_low: f64,
    /// Upper end of the 95% confidence interval of the mean difference.
    pub ci_high: f64,
    /// Whether the layer is significant after correction (see [`SignificanceResult`]).
    pub significant: bool,
    /// Sign of the mean difference when significant.
    pub direction: Direction,
    /// Set when the test is degenerate (see [`LayerFlag`]).
    pub flag: LayerFlag,
}

/// The t-tests of all layers.
#[derive(Clone, Debug, PartialEq)]
pub struct SignificanceResult {
    /// One test per layer, in layer order.
    pub layers: Vec<LayerTest>,
    /// The significance level used.
    pub alpha: f64,
    /// The correction used.
    pub correction: Correction,
    /// The per-test threshold: for Bonferroni `alpha / num_tests`, compared with the
    /// uncorrected `p` (`significant = p < threshold`, the notebook's rule); for the other
    /// corrections `alpha`, compared with `p_adjusted`.
    pub threshold: f64,
    /// The family size `m` used by the correction.
    pub num_tests: usize,
}

/// Adds one shard's per-layer statistics (a streamed chunk, a replica's piece of the corpus) to
/// the running per-layer totals; the first shard sets them. The one merge of per-layer statistics:
/// exact, so any split in any order gives the same totals. Shards of one model have the same layers.
pub fn merge_layers(totals: &mut Vec<PairedStats>, shard: &[PairedStats]) {
    if totals.is_empty() {
        totals.extend_from_slice(shard);
    } else {
        totals.iter_mut().zip(shard).for_each(|(total, s)| total.merge(s));
    }
}

/// Per-layer [`PairedStats`] of `angles[layer, sentence, a] − angles[layer, sentence, b]`
/// for an angle tensor `[num_layers, num_sentences, num_conditions]`.
///
/// # Errors
/// Condition index out of range, `a == b`, a non-finite angle (or difference), or a difference
/// of `2^31` or more ([`fixed_point`]).
pub fn paired_stats(angles: ArrayView3<f64>, a: usize, b: usize) -> Result<Vec<PairedStats>, AnalysisError> {
    check_conditions(angles.shape()[2], a, b)?;
    (0..angles.shape()[0]).map(|l| layer_stats(angles, l, a, b)).collect()
}

/// Paired t-tests per layer on a full angle tensor `[num_layers, num_sentences,
/// num_conditions]` (as produced by [`crate::analysis::rotations::Rotations::angles`]),
/// comparing conditions `opts.condition_a` and `opts.condition_b`.
///
/// The same computation as [`test_layers_from_stats`] on the exact [`PairedStats`] of the whole
/// tensor, so any split of the sentences merged gives identical results; they match
/// `scipy.stats.ttest_rel` and statsmodels' `multipletests`. A layer whose differences are
/// constant is returned with [`LayerFlag::ZeroVariance`] (never significant), like scipy.
///
/// # Errors
/// Those of [`check_options`], [`AnalysisError::NotEnoughSentences`] (fewer than 2),
/// [`AnalysisError::NonFinite`] (first non-finite angle, by layer then sentence) and
/// [`AnalysisError::DifferenceOutOfRange`] (`|a − b| ≥ 2^31`).
pub fn test_layers(angles: ArrayView3<f64>, opts: &SignificanceOptions) -> Result<SignificanceResult, AnalysisError> {
    let (num_layers, num_sentences, num_conditions) = angles.dim();
    check_options(opts, num_layers, num_conditions)?;
    if num_sentences < 2 {
        return Err(AnalysisError::NotEnoughSentences { n: num_sentences as u64 });
    }
    let stats = paired_stats(angles, opts.condition_a, opts.condition_b)?;
    test_layers_from_stats(&stats, opts)
}

/// Checks significance options against the shape they will be applied to, before any work:
/// conditions in range and distinct, `alpha` in `(0, 1)`, at least one layer, and a family size
/// `num_tests` not below the number of layers. Returns the family size.
///
/// # Errors
/// [`AnalysisError::ConditionOutOfRange`], [`AnalysisError::SameCondition`],
/// [`AnalysisError::InvalidAlpha`], [`AnalysisError::NoLayers`] and
/// [`AnalysisError::InvalidNumTests`].
pub fn check_options(
    opts: &SignificanceOptions,
    num_layers: usize,
    num_conditions: usize,
) -> Result<usize, AnalysisError> {
    check_conditions(num_conditions, opts.condition_a, opts.condition_b)?;
    check_family(opts, num_layers)
}

/// Paired t-tests per layer from merged [`PairedStats`] (one per layer, in layer order), for
/// streaming or sharded computation: identical to [`test_layers`] on the same data, however it
/// was split. `opts.condition_a/condition_b` are not used (the statistics already
/// describe one pair of conditions); layers may have different `n`. Only `n`, `mean()` and
/// `variance()` of the statistics are used.
///
/// # Errors
/// [`AnalysisError::InvalidAlpha`], [`AnalysisError::NoLayers`],
/// [`AnalysisError::InvalidNumTests`], [`AnalysisError::NotEnoughSentences`] and
/// [`AnalysisError::NonFiniteStats`].
pub fn test_layers_from_stats(
    stats: &[PairedStats],
    opts: &SignificanceOptions,
) -> Result<SignificanceResult, AnalysisError> {
    let num_tests = check_family(opts, stats.len())?;
    let mut raw = Vec::with_capacity(stats.len());
    for (l, s) in stats.iter().enumerate() {
        if s.n() < 2 {
            return Err(AnalysisError::NotEnoughSentences { n: s.n() });
        }
        let (mean, variance) = (s.mean(), s.variance());
        if !mean.is_finite() || !variance.is_finite() {
            return Err(AnalysisError::NonFiniteStats { layer: l + 1 });
        }
        raw.push(raw_test(l + 1, s.n(), mean, variance));
    }
    Ok(finish(raw, opts, num_tests))
}

/// Adjusts p-values for a family of `num_tests` tests (`num_tests ≥ p.len()`; missing tests
/// count as p = 1), in the input order: Bonferroni `min(1, p·m)`; Holm step-down
/// `max_{j≤i} min(1, (m − j + 1)·p_(j))`; Benjamini–Hochberg step-up
/// `min_{j≥i} min(1, p_(j)·m / j)`; `None` returns `p`. Same values as statsmodels'
/// `multipletests` (`bonferroni`, `holm`, `fdr_bh`) when `num_tests == p.len()`.
pub fn adjust_p_values(p: &[f64], correction: Correction, num_tests: usize) -> Vec<f64> {
    let m = num_tests.max(p.len()) as f64;
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut adjusted = vec![0.0; p.len()];
    match correction {
        Correction::None => adjusted.copy_from_slice(p),
        Correction::Bonferroni => {
            for (adj, &pi) in adjusted.iter_mut().zip(p) {
                *adj = (pi * m).min(1.0);
            }
        }
        Correction::Holm => {
            let mut running_max = 0.0f64;
            for (rank, &i) in order.iter().enumerate() {
                running_max = running_max.max(((m - rank as f64) * p[i]).min(1.0));
                adjusted[i] = running_max;
            }
        }
        Correction::BenjaminiHochberg => {
            let mut running_min = 1.0f64;
            for (rank, &i) in order.iter().enumerate().rev() {
                running_min = running_min.min(p[i] * m / (rank as f64 + 1.0));
                adjusted[i] = running_min;
            }
        }
    }
    adjusted
}

/// The two-sided p-value of a t statistic with `df` degrees of freedom:
/// `2·P(T > |t|)`, computed from the upper tail so that tiny p-values keep full relative
/// precision (never as `1 − cdf`); accurate and bounded for any df ([`super::student_t`]).
pub fn two_sided_p(t: f64, df: f64) -> f64 {
    (2.0 * student_t::sf(t.abs(), df)).min(1.0)
}

/// The quantile `q` of Student's t with `df` degrees of freedom, for `q` in `(0.5, 1)`:
/// [`student_t::quantile`] (bounded for any df; agrees with `scipy.stats.t.ppf` to ~10⁻¹¹).
pub fn t_quantile(q: f64, df: f64) -> f64 {
    student_t::quantile(q, df)
}

/// A layer's test before correction.
struct RawTest {
    layer: usize,
    n: u64,
    t: f64,
    p: f64,
    mean: f64,
    sd: f64,
    ci_half_width: f64,
    flag: LayerFlag,
}

/// The t statistic, p-value and CI half width from a layer's mean and variance.
///
/// The variance comes from exact integer sums, so it is 0 exactly when the differences are
/// constant: only then is the layer flagged [`LayerFlag::ZeroVariance`], with scipy's answer for
/// constant differences (`sd = 0`, `t = mean / 0`: ±inf with p = 0, or NaN with p = NaN when the
/// mean is 0). A tiny but real variance is an ordinary test, however large its t.
fn raw_test(layer: usize, n: u64, mean: f64, variance: f64) -> RawTest {
    let nf = n as f64;
    let df = nf - 1.0;
    if variance == 0.0 {
        let t = mean / 0.0;
        let p = if t.is_nan() { f64::NAN } else { 0.0 };
        return RawTest { layer, n, t, p, mean, sd: 0.0, ci_half_width: 0.0, flag: LayerFlag::ZeroVariance };
    }
    let sd = variance.sqrt();
    let se = sd / nf.sqrt();
    let t = mean / se;
    let p = two_sided_p(t, df);
    let ci_half_width = t_quantile(0.5 + CI_LEVEL / 2.0, df) * se;
    RawTest { layer, n, t, p, mean, sd, ci_half_width, flag: LayerFlag::None }
}

/// Applies the correction and decides significance. Degenerate layers count in the family as
/// p = 1 (they leave the other layers' adjusted p-values as they are) and are never significant.
fn finish(raw: Vec<RawTest>, opts: &SignificanceOptions, num_tests: usize) -> SignificanceResult {
    let tests: Vec<(f64, bool)> = raw.iter().map(|r| (r.p, r.flag == LayerFlag::None)).collect();
    let (threshold, decisions) = decide_layers(&tests, opts, num_tests);
    let layers = raw
        .into_iter()
        .zip(decisions)
        .map(|(r, (p_adjusted, significant))| LayerTest {
            layer: r.layer,
            n: r.n,
            t: r.t,
            p: r.p,
            p_adjusted,
            df: r.n as f64 - 1.0,
            mean_difference: r.mean,
            sd_difference: r.sd,
            cohens_dz: r.mean / r.sd,
            ci_low: r.mean - r.ci_half_width,
            ci_high: r.mean + r.ci_half_width,
            significant,
            direction: direction(significant, r.mean),
            flag: r.flag,
        })
        .collect();
    SignificanceResult { layers, alpha: opts.alpha, correction: opts.correction, threshold, num_tests }
}

/// The correction of a family of layer tests `(p, ordinary)`: the per-test threshold (see
/// [`SignificanceResult::threshold`]) and per layer `(p_adjusted, significant)`. A degenerate
/// (not ordinary) layer enters the correction as p = 1, is never significant and gets a NaN
/// `p_adjusted`. Shared by the paired and the two-group tests.
pub(crate) fn decide_layers(
    tests: &[(f64, bool)],
    opts: &SignificanceOptions,
    num_tests: usize,
) -> (f64, Vec<(f64, bool)>) {
    let p: Vec<f64> = tests.iter().map(|&(p, ordinary)| if ordinary { p } else { 1.0 }).collect();
    let adjusted = adjust_p_values(&p, opts.correction, num_tests);
    let threshold = match opts.correction {
        Correction::Bonferroni => opts.alpha / num_tests as f64,
        _ => opts.alpha,
    };
    let decisions = tests
        .iter()
        .zip(adjusted)
        .map(|(&(p, ordinary), p_adjusted)| {
            let significant = ordinary
                && match opts.correction {
                    Correction::Bonferroni => p < threshold,
                    _ => p_adjusted < opts.alpha,
                };
            (if ordinary { p_adjusted } else { f64::NAN }, significant)
        })
        .collect();
    (threshold, decisions)
}

/// The direction of a layer: the sign of its mean difference when significant.
pub(crate) fn direction(significant: bool, mean_difference: f64) -> Direction {
    if !significant {
        Direction::NotSignificant
    } else if mean_difference > 0.0 {
        Direction::AGreater
    } else {
        Direction::BGreater
    }
}

fn check_conditions(num_conditions: usize, a: usize, b: usize) -> Result<(), AnalysisError> {
    for condition in [a, b] {
        if condition >= num_conditions {
            return Err(AnalysisError::ConditionOutOfRange { condition, num_conditions });
        }
    }
    if a == b {
        return Err(AnalysisError::SameCondition { condition: a });
    }
    Ok(())
}

fn check_alpha(alpha: f64) -> Result<(), AnalysisError> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(AnalysisError::InvalidAlpha { alpha })
    }
}

/// `alpha`, at least one layer, and the family size (returned).
pub(crate) fn check_family(opts: &SignificanceOptions, num_layers: usize) -> Result<usize, AnalysisError> {
    check_alpha(opts.alpha)?;
    if num_layers == 0 {
        return Err(AnalysisError::NoLayers);
    }
    let m = opts.num_tests.unwrap_or(num_layers);
    if m == 0 || m < num_layers {
        return Err(AnalysisError::InvalidNumTests { num_tests: m, num_layers });
    }
    Ok(m)
}

/// The exact statistics of `a − b` over the sentences of layer index `l` (0-based).
fn layer_stats(angles: ArrayView3<f64>, l: usize, a: usize, b: usize) -> Result<PairedStats, AnalysisError> {
    let mut stats = PairedStats::default();
    for (sentence, row) in angles.index_axis(ndarray::Axis(0), l).outer_iter().enumerate() {
        let d = row[a] - row[b];
        if !d.is_finite() {
            return Err(AnalysisError::NonFinite { layer: l + 1, sentence });
        }
        let fixed = fixed_point(d).ok_or(AnalysisError::DifferenceOutOfRange { layer: l + 1, sentence })?;
        stats.push_fixed(fixed);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ethnum::I256;
    use ndarray::Array3;

    /// Deterministic pseudo-random angles (a simple LCG; no RNG crate needed here).
    fn fake_angles(layers: usize, sentences: usize, seed: u64) -> Array3<f64> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        Array3::from_shape_fn((layers, sentences, 3), |(l, _, c)| {
            let base = 5.0 + l as f64 * 0.3 + if c == 0 { 0.4 } else { 0.0 };
            base + 2.0 * next()
        })
    }

    #[test]
    fn holm_and_bh_hand_examples() {
        let p = [0.01, 0.04, 0.03, 0.005];
        let holm = adjust_p_values(&p, Correction::Holm, 4);
        for (got, want) in holm.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert_relative_eq!(*got, want, max_relative = 1e-12);
        }
        let bh = adjust_p_values(&p, Correction::BenjaminiHochberg, 4);
        for (got, want) in bh.iter().zip([0.02, 0.04, 0.04, 0.02]) {
            assert_relative_eq!(*got, want, max_relative = 1e-12);
        }
        let bonf = adjust_p_values(&p, Correction::Bonferroni, 4);
        for (got, want) in bonf.iter().zip([0.04, 0.16, 0.12, 0.02]) {
            assert_relative_eq!(*got, want, max_relative = 1e-12);
        }
        assert_eq!(adjust_p_values(&p, Correction::None, 4), p.to_vec());
        // Caps at 1.
        let big = [0.5, 0.9];
        assert_eq!(adjust_p_values(&big, Correction::Bonferroni, 2), vec![1.0, 1.0]);
        assert_eq!(adjust_p_values(&big, Correction::Holm, 2), vec![1.0, 1.0]);
        assert_eq!(adjust_p_values(&big, Correction::BenjaminiHochberg, 2), vec![0.9, 0.9]);
        // A larger family behaves like extra tests with p = 1.
        let padded: Vec<f64> = p.iter().copied().chain([1.0]).collect();
        for c in [Correction::Holm, Correction::BenjaminiHochberg, Correction::Bonferroni] {
            let with_pad = adjust_p_values(&padded, c, 5);
            assert_eq!(adjust_p_values(&p, c, 5), with_pad[..4].to_vec(), "{c:?}");
        }
    }

    #[test]
    fn p_values_and_quantiles() {
        // t = 2.0, df = 10: scipy 2*t.sf(2, 10) = 0.07338803477074...
        assert_relative_eq!(two_sided_p(2.0, 10.0), 0.073_388_034_770_740_37, max_relative = 1e-10);
        assert_eq!(two_sided_p(2.0, 10.0), two_sided_p(-2.0, 10.0));
        assert_eq!(two_sided_p(0.0, 10.0), 1.0);
        // Tiny p keeps relative precision (1 − cdf would give 0): scipy 2*t.sf(40, 53).
        let tiny = two_sided_p(40.0, 53.0);
        assert_relative_eq!(tiny, 2.842_162_218_870_368_3e-41, max_relative = 1e-8);
        // t quantiles: scipy t.ppf(0.975, df).
        assert_relative_eq!(t_quantile(0.975, 1.0), 12.706_204_736_174_694, max_relative = 1e-12);
        assert_relative_eq!(t_quantile(0.975, 53.0), 2.005_745_995_317_868_7, max_relative = 1e-12);
        assert_relative_eq!(t_quantile(0.975, 1e6), 1.959_966_356_814_107, max_relative = 1e-9);
    }

    #[test]
    fn hand_example_t_test() {
        // d = [1, 2, 3, 4]: mean 2.5, sd sqrt(5/3), t = 2.5 / (sd / 2) = 3.872983346207417.
        let mut angles = Array3::<f64>::zeros((1, 4, 2));
        for (s, d) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
            angles[[0, s, 0]] = 10.0 + d;
            angles[[0, s, 1]] = 10.0;
        }
        let r = test_layers(angles.view(), &SignificanceOptions::default()).unwrap();
        let l = r.layers[0];
        assert_eq!(l.layer, 1);
        assert_eq!(l.n, 4);
        assert_eq!(l.df, 3.0);
        assert_relative_eq!(l.mean_difference, 2.5, max_relative = 1e-14);
        assert_relative_eq!(l.sd_difference, (5.0f64 / 3.0).sqrt(), max_relative = 1e-14);
        assert_relative_eq!(l.t, 3.872_983_346_207_417, max_relative = 1e-13);
        assert_relative_eq!(l.cohens_dz, l.t / 2.0, max_relative = 1e-13);
        // scipy: ttest_rel -> p = 0.030466291662170977
        assert_relative_eq!(l.p, 0.030_466_291_662_170_977, max_relative = 1e-9);
        assert!(l.significant);
        assert_eq!(l.direction, Direction::AGreater);
        assert_eq!(r.threshold, 0.05);
        // Swapping the conditions flips t and the direction, not p.
        let opts = SignificanceOptions { condition_a: 1, condition_b: 0, ..Default::default() };
        let s = test_layers(angles.view(), &opts).unwrap().layers[0];
        assert_eq!(s.t, -l.t);
        assert_eq!(s.p, l.p);
        assert_eq!(s.direction, Direction::BGreater);
        assert_relative_eq!(s.ci_low, -l.ci_high, max_relative = 1e-14);
    }

    #[test]
    fn default_bonferroni_divides_by_number_of_layers() {
        let angles = fake_angles(48, 54, 1);
        let r = test_layers(angles.view(), &SignificanceOptions::default()).unwrap();
        assert_eq!(r.num_tests, 48);
        assert_eq!(r.threshold, 0.05 / 48.0);
        assert_eq!(r.layers.len(), 48);
        for (i, l) in r.layers.iter().enumerate() {
            assert_eq!(l.layer, i + 1);
            assert_eq!(l.significant, l.p < 0.05 / 48.0);
            assert_eq!(l.p_adjusted, (l.p * 48.0).min(1.0));
        }
        // The notebook's divisor is available explicitly.
        let nb = SignificanceOptions { num_tests: Some(49), ..Default::default() };
        let r49 = test_layers(angles.view(), &nb).unwrap();
        assert_eq!(r49.threshold, 0.05 / 49.0);
        assert_eq!(r49.num_tests, 49);
    }

    #[test]
    fn merged_shards_equal_whole() {
        let angles = fake_angles(12, 54, 2);
        let opts = SignificanceOptions { correction: Correction::Holm, ..Default::default() };
        let whole = test_layers(angles.view(), &opts).unwrap();
        let mut merged = vec![PairedStats::default(); 12];
        for (lo, hi) in [(0, 5), (5, 6), (6, 30), (30, 54)] {
            let shard = angles.slice(ndarray::s![.., lo..hi, ..]);
            for (m, s) in merged.iter_mut().zip(paired_stats(shard, 0, 1).unwrap()) {
                m.merge(&s);
            }
        }
        // Integer sums: the merge is exact, so everything is identical bit for bit.
        assert_eq!(merged, paired_stats(angles.view(), 0, 1).unwrap());
        assert_eq!(test_layers_from_stats(&merged, &opts).unwrap(), whole);
    }

    #[test]
    fn paired_stats_basics() {
        let s = PairedStats::from_differences(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let unit = 1i128 << EXACT_SCALE_BITS;
        assert_eq!(
            (s.n(), s.sum_exact(), s.sum_sq_exact()),
            (4, 10 * unit, I256::from(30) * I256::from(unit) * I256::from(unit))
        );
        assert_eq!((s.sum(), s.sum_sq()), (10.0, 30.0));
        assert_eq!(s.mean(), 2.5);
        assert_eq!(s.variance(), 5.0 / 3.0);
        let mut a = PairedStats::from_differences(&[1.0, 2.0]).unwrap();
        a.merge(&PairedStats::from_differences(&[3.0, 4.0]).unwrap());
        assert_eq!(a, s);
        assert!(PairedStats::default().mean().is_nan());
        assert!(PairedStats::from_differences(&[1.0]).unwrap().variance().is_nan());
        // Serialisable (streaming/sharding across processes).
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<PairedStats>(&json).unwrap(), s);
        // Out of range differences are refused, not wrapped.
        for bad in [f64::NAN, f64::INFINITY, MAX_ABS_DIFFERENCE, -MAX_ABS_DIFFERENCE] {
            assert_eq!(fixed_point(bad), None, "{bad}");
        }
        assert_eq!(fixed_point(0.5), Some(1i128 << 63));
        assert_eq!(fixed_point(-0.5), Some(-(1i128 << 63)));
        // Rounds ties to even at the last fixed-point digit.
        assert_eq!(fixed_point(1.5 * 2f64.powi(-64)), Some(2));
        assert_eq!(fixed_point(2.5 * 2f64.powi(-64)), Some(2));
    }

    #[test]
    fn any_split_in_any_order_gives_identical_statistics() {
        // Values whose f64 sums depend on the order of addition.
        let d: Vec<f64> =
            (0..1000).map(|i| ((i * 7919) % 1000) as f64 * 1e-3 + if i % 3 == 0 { 1e8 } else { 1e-9 }).collect();
        let whole = PairedStats::from_differences(&d).unwrap();
        let mut backwards = PairedStats::default();
        for part in d.chunks(7).rev() {
            backwards.merge(&PairedStats::from_differences(part).unwrap());
        }
        assert_eq!(backwards, whole);
        assert_eq!(backwards.variance().to_bits(), whole.variance().to_bits());
    }

    #[test]
    fn from_exact_refuses_impossible_statistics() {
        let s = PairedStats::from_differences(&[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(PairedStats::from_exact(s.n(), s.sum_exact(), s.sum_sq_exact()), Some(s));
        assert_eq!(PairedStats::from_exact(0, 0, I256::ZERO), Some(PairedStats::default()));
        assert_eq!(PairedStats::from_exact(0, 1, I256::ZERO), None);
        assert_eq!(PairedStats::from_exact(3, 0, I256::from(-1)), None);
        // (ΣD)² > n·ΣD²: a negative variance.
        assert_eq!(PairedStats::from_exact(2, 10, I256::from(49)), None);
        assert!(PairedStats::from_exact(2, 10, I256::from(50)).is_some());
        // Constant differences: variance exactly 0.
        let c = PairedStats::from_differences(&[0.1; 5]).unwrap();
        assert_eq!(c.variance(), 0.0);
    }

    #[test]
    fn errors() {
        let angles = fake_angles(3, 5, 3);
        let d = SignificanceOptions::default();
        let run = |o: SignificanceOptions| test_layers(angles.view(), &o).unwrap_err();
        assert_eq!(
            run(SignificanceOptions { condition_a: 3, ..d }),
            AnalysisError::ConditionOutOfRange { condition: 3, num_conditions: 3 }
        );
        assert_eq!(run(SignificanceOptions { condition_b: 0, ..d }), AnalysisError::SameCondition { condition: 0 });
        for alpha in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(run(SignificanceOptions { alpha, ..d }), AnalysisError::InvalidAlpha { .. }));
        }
        assert_eq!(
            run(SignificanceOptions { num_tests: Some(0), ..d }),
            AnalysisError::InvalidNumTests { num_tests: 0, num_layers: 3 }
        );
        assert_eq!(
            run(SignificanceOptions { num_tests: Some(2), ..d }),
            AnalysisError::InvalidNumTests { num_tests: 2, num_layers: 3 }
        );
        let one = fake_angles(3, 1, 3);
        assert_eq!(test_layers(one.view(), &d).unwrap_err(), AnalysisError::NotEnoughSentences { n: 1 });
        let none = Array3::<f64>::zeros((0, 5, 3));
        assert_eq!(test_layers(none.view(), &d).unwrap_err(), AnalysisError::NoLayers);
        let mut nan = angles.clone();
        nan[[1, 4, 1]] = f64::NAN;
        nan[[2, 0, 0]] = f64::INFINITY;
        assert_eq!(test_layers(nan.view(), &d).unwrap_err(), AnalysisError::NonFinite { layer: 2, sentence: 4 });
        // NaN in an untested condition is irrelevant.
        let mut other = angles.clone();
        other[[0, 0, 2]] = f64::NAN;
        assert!(test_layers(other.view(), &d).is_ok());
        // From stats.
        assert_eq!(test_layers_from_stats(&[], &d).unwrap_err(), AnalysisError::NoLayers);
        assert_eq!(PairedStats::from_differences(&[1.0, f64::NAN, 2.0]), None);
        let small = PairedStats::from_differences(&[1.0]).unwrap();
        assert_eq!(test_layers_from_stats(&[small], &d).unwrap_err(), AnalysisError::NotEnoughSentences { n: 1 });
    }

    /// Constant differences (all zero, or another constant: every difference the same f64) flag
    /// their layer, with t and p as scipy gives them; the other layers are untouched.
    #[test]
    fn constant_differences_flag_their_layer_only() {
        let angles = fake_angles(3, 5, 3);
        let d = SignificanceOptions { correction: Correction::Holm, ..Default::default() };
        let reference = test_layers(angles.view(), &d).unwrap();
        for c in [0.0, 0.125, -0.75, 1e6 + 0.5] {
            let mut flat = angles.clone();
            for s in 0..5 {
                // Dyadic angles: `a − b` is exactly `c` for every sentence.
                flat[[1, s, 1]] = 5.0 + s as f64 * 0.25;
                flat[[1, s, 0]] = flat[[1, s, 1]] + c;
            }
            let stats = paired_stats(flat.view(), 0, 1).unwrap();
            for r in [test_layers(flat.view(), &d).unwrap(), test_layers_from_stats(&stats, &d).unwrap()] {
                let l = r.layers[1];
                assert_eq!(l.flag, LayerFlag::ZeroVariance, "c={c}");
                assert!(!l.significant && l.direction == Direction::NotSignificant);
                assert_eq!(l.sd_difference, 0.0);
                assert!(l.p_adjusted.is_nan());
                if c == 0.0 {
                    assert!(l.t.is_nan() && l.p.is_nan(), "c=0: t {} p {}", l.t, l.p);
                } else {
                    assert_eq!(l.t, f64::INFINITY.copysign(c), "c={c}");
                    assert_eq!(l.p, 0.0);
                    assert_relative_eq!(l.mean_difference, c, max_relative = 1e-9);
                }
                // A flagged layer counts as p = 1: the others keep their adjusted p-values when
                // their own p is unchanged, here layers 1 and 3 (Holm over 3 tests).
                for k in [0, 2] {
                    assert_eq!(r.layers[k].flag, LayerFlag::None);
                    assert_relative_eq!(r.layers[k].t, reference.layers[k].t, max_relative = 1e-9);
                }
            }
        }
        for n in [2usize, 3, 54, 1000] {
            let stats = PairedStats::from_differences(&vec![0.1; n]).unwrap();
            let r = test_layers_from_stats(&[stats], &SignificanceOptions::default()).unwrap();
            assert_eq!(r.layers[0].flag, LayerFlag::ZeroVariance, "n={n}");
            let angles = Array3::from_shape_fn((1, n, 2), |(_, _, c)| if c == 0 { 0.1 } else { 0.0 });
            let r = test_layers(angles.view(), &SignificanceOptions::default()).unwrap();
            assert_eq!((r.layers[0].flag, r.layers[0].t), (LayerFlag::ZeroVariance, f64::INFINITY), "n={n}");
        }
    }

    /// A tiny but real variance is an ordinary test, however large its t (the old rule flagged any
    /// |t| above ~1.7e7 as "zero variance"): d = 1, 1 + e, 1, 1 + e with e = 2^-30 has mean
    /// 1 + e/2, sd e/√3 and t = (1 + e/2)·2√3/e ≈ 3.7e9.
    #[test]
    fn only_an_exactly_zero_variance_is_flagged() {
        let e = 2f64.powi(-30);
        let stats = PairedStats::from_differences(&[1.0, 1.0 + e, 1.0, 1.0 + e]).unwrap();
        let l = test_layers_from_stats(&[stats], &SignificanceOptions::default()).unwrap().layers[0];
        assert_eq!(l.flag, LayerFlag::None);
        assert_relative_eq!(l.sd_difference, e / 3f64.sqrt(), max_relative = 1e-12);
        assert_relative_eq!(l.t, (1.0 + e / 2.0) * 2.0 * 3f64.sqrt() / e, max_relative = 1e-12);
        assert!(l.significant && l.p > 0.0 && l.p < 1e-25, "p {}", l.p);
    }

    #[test]
    fn corrections_decide_significance() {
        let angles = fake_angles(48, 54, 4);
        for correction in [Correction::Bonferroni, Correction::Holm, Correction::BenjaminiHochberg, Correction::None] {
            let opts = SignificanceOptions { correction, ..Default::default() };
            let r = test_layers(angles.view(), &opts).unwrap();
            assert_eq!(r.correction, correction);
            for l in &r.layers {
                assert!(l.p_adjusted >= l.p && l.p_adjusted <= 1.0);
                if correction != Correction::Bonferroni {
                    assert_eq!(l.significant, l.p_adjusted < 0.05);
                }
                assert_eq!(l.significant, l.direction != Direction::NotSignificant);
                if l.significant {
                    assert_eq!(l.direction == Direction::AGreater, l.t > 0.0);
                }
                assert!(l.ci_low < l.mean_difference && l.mean_difference < l.ci_high);
                // The 95% CI excludes 0 exactly when the uncorrected p < 0.05.
                assert_eq!(l.ci_low > 0.0 || l.ci_high < 0.0, l.p < 0.05);
            }
        }
        assert_eq!(Correction::default(), Correction::Bonferroni);
        assert_eq!(Correction::BenjaminiHochberg.label(), "benjamini_hochberg");
    }
}
