//! The per-layer paired t-tests against scipy / statsmodels.
//!
//! `tests/golden/ttest_scipy.json` is produced by `tools/make_stats_golden.py` (scipy
//! `ttest_rel`, `t.ppf`, statsmodels `multipletests`) and holds its own input data.
//! Statistics must agree within 1e-9 relative and p-values within 1e-6 relative, both on the
//! full tensor and via sharded, merged `PairedStats`.

mod common;

use common::{correction_named, Num};
use ndarray::{s, Array3};
use rotations::analysis::{
    paired_stats, test_layers, test_layers_from_stats, AnalysisError, Correction, Direction, LayerFlag, PairedStats,
    SignificanceOptions, SignificanceResult,
};
use serde::Deserialize;

const STAT_RTOL: f64 = 1e-9;
const P_RTOL: f64 = 1e-6;

#[derive(Deserialize)]
struct Golden {
    ci_level: f64,
    cases: Vec<Case>,
    degenerate_cases: Vec<DegenerateCase>,
    tied_p_values: Vec<TiedCorrection>,
    student_t: StudentT,
}

/// scipy's `t.sf(t, df)` and `t.ppf(q, df)` on a grid of df from 1 to 1e12.
#[derive(Deserialize)]
struct StudentT {
    df: Vec<f64>,
    t: Vec<f64>,
    q: Vec<f64>,
    sf: Vec<Vec<f64>>,
    ppf: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct TiedCorrection {
    p: Vec<f64>,
    method: String,
    p_adjusted: Vec<f64>,
    reject: Vec<bool>,
}

#[derive(Deserialize)]
struct DegenerateCase {
    name: String,
    shape: [usize; 3],
    angles: Vec<f64>,
    alpha: f64,
    layers: DegenerateLayers,
    corrections: Vec<DegenerateCorrection>,
}

#[derive(Deserialize)]
struct DegenerateLayers {
    t: Vec<Num>,
    p: Vec<Num>,
    mean: Vec<Num>,
    sd: Vec<Num>,
    dz: Vec<Num>,
    ci_low: Vec<Num>,
    ci_high: Vec<Num>,
    flagged: Vec<bool>,
}

#[derive(Deserialize)]
struct DegenerateCorrection {
    method: String,
    p_adjusted: Vec<f64>,
    reject: Vec<bool>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    shape: [usize; 3],
    angles: Vec<f64>,
    condition_a: usize,
    condition_b: usize,
    alpha: f64,
    layers: Layers,
    corrections: Vec<CorrectionRef>,
}

#[derive(Deserialize)]
struct Layers {
    t: Vec<f64>,
    p: Vec<f64>,
    df: Vec<f64>,
    mean: Vec<f64>,
    sd: Vec<f64>,
    dz: Vec<f64>,
    ci_low: Vec<f64>,
    ci_high: Vec<f64>,
}

#[derive(Deserialize)]
struct CorrectionRef {
    method: String,
    num_tests: usize,
    p_adjusted: Vec<f64>,
    reject: Vec<bool>,
}

fn golden() -> Golden {
    common::golden("ttest_scipy.json")
}

impl Case {
    fn angles(&self) -> Array3<f64> {
        Array3::from_shape_vec(self.shape, self.angles.clone()).expect("shape")
    }

    fn options(&self, correction: Correction, num_tests: Option<usize>) -> SignificanceOptions {
        SignificanceOptions {
            condition_a: self.condition_a,
            condition_b: self.condition_b,
            alpha: self.alpha,
            correction,
            num_tests,
        }
    }

    /// Absolute floor for comparisons of values that may be ~0 (means, CI ends, t): a tiny
    /// fraction of the data's scale.
    fn abs_floor(&self) -> f64 {
        1e-12 * self.angles.iter().fold(0.0f64, |m, x| m.max(x.abs()))
    }
}

fn close(what: &str, got: f64, want: f64, rtol: f64, atol: f64) {
    let tol = rtol * want.abs().max(got.abs()) + atol;
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:e}, want {want:e} (diff {:e}, tol {tol:e})",
        (got - want).abs()
    );
}

/// Compares one result with the golden statistics and one golden correction.
fn check(case: &Case, result: &SignificanceResult, reference: &CorrectionRef, path: &str) {
    let g = &case.layers;
    let atol = case.abs_floor();
    assert_eq!(result.layers.len(), g.t.len(), "{}", case.name);
    assert_eq!(result.num_tests, reference.num_tests);
    for (i, l) in result.layers.iter().enumerate() {
        let at = |f: &str| format!("{} [{path}] layer {} {f}", case.name, i + 1);
        assert_eq!(l.layer, i + 1);
        assert_eq!(l.n as usize, case.shape[1]);
        assert_eq!(l.df, g.df[i], "{}", at("df"));
        close(&at("t"), l.t, g.t[i], STAT_RTOL, 1e-12);
        close(&at("mean"), l.mean_difference, g.mean[i], STAT_RTOL, atol);
        close(&at("sd"), l.sd_difference, g.sd[i], STAT_RTOL, 0.0);
        close(&at("dz"), l.cohens_dz, g.dz[i], STAT_RTOL, 1e-12);
        close(&at("ci_low"), l.ci_low, g.ci_low[i], STAT_RTOL, atol);
        close(&at("ci_high"), l.ci_high, g.ci_high[i], STAT_RTOL, atol);
        close(&at("p"), l.p, g.p[i], P_RTOL, 0.0);
        close(&at("p_adjusted"), l.p_adjusted, reference.p_adjusted[i], P_RTOL, 0.0);
        // Decisions agree unless the adjusted p is within rounding of alpha.
        if (reference.p_adjusted[i] - case.alpha).abs() > 1e-9 {
            assert_eq!(l.significant, reference.reject[i], "{}", at("significant"));
        }
        let expected_direction = match (l.significant, g.mean[i] > 0.0) {
            (false, _) => Direction::NotSignificant,
            (true, true) => Direction::AGreater,
            (true, false) => Direction::BGreater,
        };
        assert_eq!(l.direction, expected_direction, "{}", at("direction"));
    }
}

/// Per-layer stats of the case computed in uneven shards, then merged.
fn merged_stats(case: &Case, bounds: &[usize]) -> Vec<PairedStats> {
    let angles = case.angles();
    let mut merged = vec![PairedStats::default(); case.shape[0]];
    for w in bounds.windows(2) {
        let shard = angles.slice(s![.., w[0]..w[1], ..]);
        let stats = paired_stats(shard, case.condition_a, case.condition_b).unwrap();
        for (m, s) in merged.iter_mut().zip(&stats) {
            m.merge(s);
        }
    }
    merged
}

#[test]
fn golden_file_is_sane() {
    let g = golden();
    assert_eq!(g.ci_level, rotations::analysis::CI_LEVEL);
    assert!(g.cases.len() >= 5);
    let smallest = g.cases.iter().flat_map(|c| c.layers.p.iter().copied()).fold(1.0f64, f64::min);
    assert!(smallest < 1e-30, "the golden data should exercise tiny p-values");
    assert!(g.cases.iter().any(|c| c.shape[1] == 2));
    assert!(g.cases.iter().any(|c| c.layers.mean.iter().all(|&m| m < 0.0)));
}

/// The upper tail and the quantile of Student's t agree with scipy to 1e-10 relative for every df
/// from 1 to 1e12 (statrs' quantile never returned from df ~1.45e7 on; its tail drifted by 2e-3
/// at 1e12), and each call is bounded.
#[test]
fn student_t_matches_scipy_for_any_df() {
    use rotations::analysis::student_t;
    let g = golden().student_t;
    assert!(g.df.iter().any(|&df| df >= 1e12) && g.df.contains(&1.0));
    for (i, &df) in g.df.iter().enumerate() {
        for (j, &t) in g.t.iter().enumerate() {
            let want = g.sf[i][j];
            if want > 1e-300 {
                close(&format!("sf({t}, df {df})"), student_t::sf(t, df), want, 1e-10, 0.0);
                close(&format!("p({t}, df {df})"), rotations::analysis::two_sided_p(-t, df), 2.0 * want, 1e-10, 0.0);
            }
        }
        for (j, &q) in g.q.iter().enumerate() {
            close(&format!("ppf({q}, df {df})"), student_t::quantile(q, df), g.ppf[i][j], 1e-10, 0.0);
        }
    }
}

#[test]
fn full_tensor_matches_scipy_and_statsmodels() {
    for case in golden().cases {
        let angles = case.angles();
        for reference in &case.corrections {
            let correction = correction_named(&reference.method);
            let result = test_layers(angles.view(), &case.options(correction, Some(reference.num_tests))).unwrap();
            assert_eq!(result.correction, correction);
            check(&case, &result, reference, "full");
        }
    }
}

#[test]
fn uncorrected_matches_scipy() {
    for case in golden().cases {
        let result = test_layers(case.angles().view(), &case.options(Correction::None, None)).unwrap();
        let none = CorrectionRef {
            method: "none".into(),
            num_tests: case.shape[0],
            p_adjusted: case.layers.p.clone(),
            reject: case.layers.p.iter().map(|&p| p < case.alpha).collect(),
        };
        check(&case, &result, &none, "none");
        assert_eq!(result.threshold, case.alpha);
    }
}

#[test]
fn sharded_merged_stats_match_scipy() {
    for case in golden().cases {
        let n = case.shape[1];
        // Uneven shards, including single-sentence ones, and the whole as one shard.
        let splits: Vec<Vec<usize>> = if n >= 4 {
            vec![vec![0, n], vec![0, 1, n / 3, n / 2 + 1, n - 1, n]]
        } else {
            vec![vec![0, n], vec![0, 1, n]]
        };
        for bounds in splits {
            let merged = merged_stats(&case, &bounds);
            for reference in &case.corrections {
                let opts = case.options(correction_named(&reference.method), Some(reference.num_tests));
                let result = test_layers_from_stats(&merged, &opts).unwrap();
                check(&case, &result, reference, &format!("shards {bounds:?}"));
            }
        }
    }
}

#[test]
fn streaming_push_matches_scipy() {
    // One difference at a time, as a streaming client would.
    for case in golden().cases {
        let angles = case.angles();
        let stats: Vec<PairedStats> = (0..case.shape[0])
            .map(|l| {
                let mut s = PairedStats::default();
                for j in 0..case.shape[1] {
                    let d = angles[[l, j, case.condition_a]] - angles[[l, j, case.condition_b]];
                    s.push_fixed(rotations::analysis::fixed_point(d).unwrap());
                }
                s
            })
            .collect();
        let reference = &case.corrections[0];
        let opts = case.options(correction_named(&reference.method), Some(reference.num_tests));
        check(&case, &test_layers_from_stats(&stats, &opts).unwrap(), reference, "push");
    }
}

/// The notebook tested 48 layer transitions but divided alpha by `n_hiddens` = 49. The
/// default family size is the number of tested layers; 49 is available explicitly.
#[test]
fn bonferroni_default_divisor_is_number_of_layers() {
    let g = golden();
    let case = g.cases.iter().find(|c| c.name == "notebook_like").unwrap();
    let angles = case.angles();
    let layers = case.shape[0];
    assert_eq!(layers, 48);

    let default =
        SignificanceOptions { condition_a: case.condition_a, condition_b: case.condition_b, ..Default::default() };
    assert_eq!(default.correction, Correction::Bonferroni);
    assert_eq!(default.alpha, 0.05);
    assert_eq!(default.num_tests, None);
    let ours = test_layers(angles.view(), &default).unwrap();
    assert_eq!(ours.num_tests, 48);
    assert_eq!(ours.threshold, 0.05 / 48.0);
    let reference = case.corrections.iter().find(|c| c.method == "bonferroni" && c.num_tests == 48).unwrap();
    check(case, &ours, reference, "default");

    let notebook = test_layers(angles.view(), &SignificanceOptions { num_tests: Some(49), ..default }).unwrap();
    assert_eq!(notebook.threshold, 0.05 / 49.0);
    // Layer 46 was built with p = 0.00103, between 0.05/49 and 0.05/48: it is significant
    // with the correct divisor and was missed by the notebook's.
    let l46 = &ours.layers[45];
    assert!(0.05 / 49.0 < l46.p && l46.p < 0.05 / 48.0, "p = {}", l46.p);
    assert!(l46.significant);
    assert!(!notebook.layers[45].significant);
    // Everything else is unchanged.
    for (a, b) in ours.layers.iter().zip(&notebook.layers) {
        if a.layer != 46 {
            assert_eq!(a.significant, b.significant, "layer {}", a.layer);
        }
    }
}

#[test]
fn family_smaller_than_layers_is_rejected() {
    let g = golden();
    let case = &g.cases[0];
    let err = test_layers(case.angles().view(), &SignificanceOptions { num_tests: Some(47), ..Default::default() })
        .unwrap_err();
    assert_eq!(err, AnalysisError::InvalidNumTests { num_tests: 47, num_layers: 48 });
}

/// Same value, non-finite ones by kind (±inf, NaN), finite ones within `rtol`.
fn same(what: &str, got: f64, want: Num, rtol: f64) {
    let want = want.value();
    if want.is_finite() {
        close(what, got, want, rtol, 1e-12);
    } else {
        assert!(got == want || (got.is_nan() && want.is_nan()), "{what}: got {got}, want {want}");
    }
}

/// Layers with exactly constant differences: t, p, sd, d_z and the CI as scipy gives them, the
/// layer flagged and never significant, and the other layers' corrections as statsmodels gives
/// them with the flagged layers counted as p = 1; on the full tensor and from merged statistics.
#[test]
fn constant_difference_layers_match_scipy() {
    for case in golden().degenerate_cases {
        let angles = Array3::from_shape_vec(case.shape, case.angles.clone()).unwrap();
        let n = case.shape[1];
        for reference in &case.corrections {
            let opts = SignificanceOptions {
                alpha: case.alpha,
                correction: correction_named(&reference.method),
                ..Default::default()
            };
            let mut merged = vec![PairedStats::default(); case.shape[0]];
            for (lo, hi) in [(0, 1), (1, n / 2), (n / 2, n)] {
                let stats = paired_stats(angles.slice(s![.., lo..hi, ..]), 0, 1).unwrap();
                merged.iter_mut().zip(&stats).for_each(|(m, s)| m.merge(s));
            }
            let results = [
                ("full", test_layers(angles.view(), &opts).unwrap()),
                ("merged", test_layers_from_stats(&merged, &opts).unwrap()),
            ];
            for (path, result) in results {
                let g = &case.layers;
                for (i, l) in result.layers.iter().enumerate() {
                    let at = |f: &str| format!("{} [{path} {}] layer {} {f}", case.name, reference.method, i + 1);
                    assert_eq!(l.flag == LayerFlag::ZeroVariance, g.flagged[i], "{}", at("flag"));
                    same(&at("t"), l.t, g.t[i], STAT_RTOL);
                    same(&at("p"), l.p, g.p[i], P_RTOL);
                    same(&at("mean"), l.mean_difference, g.mean[i], STAT_RTOL);
                    same(&at("sd"), l.sd_difference, g.sd[i], STAT_RTOL);
                    same(&at("dz"), l.cohens_dz, g.dz[i], STAT_RTOL);
                    same(&at("ci_low"), l.ci_low, g.ci_low[i], STAT_RTOL);
                    same(&at("ci_high"), l.ci_high, g.ci_high[i], STAT_RTOL);
                    if g.flagged[i] {
                        assert!(!l.significant && l.p_adjusted.is_nan(), "{}", at("significant"));
                    } else {
                        close(&at("p_adjusted"), l.p_adjusted, reference.p_adjusted[i], P_RTOL, 0.0);
                        assert_eq!(l.significant, reference.reject[i], "{}", at("significant"));
                    }
                }
            }
        }
    }
}

/// Holm and Benjamini–Hochberg with tied p-values (ties among themselves, at alpha, at 1) give
/// statsmodels' adjusted p-values, whatever order the ties come in.
#[test]
fn tied_p_values_match_statsmodels() {
    for case in golden().tied_p_values {
        let correction = correction_named(&case.method);
        let adjusted = rotations::analysis::adjust_p_values(&case.p, correction, case.p.len());
        for (i, (got, want)) in adjusted.iter().zip(&case.p_adjusted).enumerate() {
            close(&format!("{} {:?} [{i}]", case.method, case.p), *got, *want, 1e-12, 0.0);
            // statsmodels rejects at p_adjusted <= alpha, the service below it (as check() allows).
            if (want - 0.05).abs() > 1e-12 {
                assert_eq!(*got < 0.05, case.reject[i], "{} {:?} [{i}] reject", case.method, case.p);
            }
        }
        let mut reversed = case.p.clone();
        reversed.reverse();
        let mut back = rotations::analysis::adjust_p_values(&reversed, correction, case.p.len());
        back.reverse();
        assert_eq!(back, adjusted, "{} {:?}: the order of ties matters", case.method, case.p);
    }
}
