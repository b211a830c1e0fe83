//! The two-group tests against scipy / statsmodels.
//!
//! `tests/golden/groups_scipy.json` is produced by `tools/make_groups_golden.py` (scipy
//! `ttest_ind(equal_var=False)` with its confidence interval, statsmodels `effectsize_smd` for
//! Hedges' g and `multipletests`) and holds its own input data. Statistics must agree within 1e-9
//! relative (the exact moments round once; scipy's two-pass sums differ in the last bits) and
//! p-values within 1e-6 relative (statrs' and scipy's t distributions), on the whole groups and
//! on moments merged from shards.

mod common;

use common::{correction_named, Num};
use ndarray::{Array2, Array3, Axis};
use rotations::analysis::{
    group_moments, welch_layers, Direction, ExactMoments, GroupFlag, GroupLayerTest, GroupResult, SignificanceOptions,
};
use serde::Deserialize;

const STAT_RTOL: f64 = 1e-9;
const P_RTOL: f64 = 1e-6;

#[derive(Deserialize)]
struct Golden {
    ci_level: f64,
    cases: Vec<Case>,
    degenerate_cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    num_layers: usize,
    n_a: usize,
    n_b: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    alpha: f64,
    flags: Vec<String>,
    layers: Columns,
    corrections: Vec<CorrectionRef>,
}

#[derive(Deserialize)]
struct Columns {
    t: Vec<Num>,
    p: Vec<Num>,
    df: Vec<Num>,
    mean_a: Vec<Num>,
    mean_b: Vec<Num>,
    sd_a: Vec<Num>,
    sd_b: Vec<Num>,
    ci_low: Vec<Num>,
    ci_high: Vec<Num>,
    g: Vec<Num>,
    g_ci_low: Vec<Num>,
    g_ci_high: Vec<Num>,
}

#[derive(Deserialize)]
struct CorrectionRef {
    method: String,
    p_adjusted: Vec<Num>,
    reject: Vec<bool>,
}

fn golden() -> Golden {
    common::golden("groups_scipy.json")
}

/// A group's angles as the `[num_layers, n, 1]` tensor [`group_moments`] takes (condition 0).
fn tensor(values: &[f64], num_layers: usize, n: usize) -> Array3<f64> {
    Array2::from_shape_vec((num_layers, n), values.to_vec()).unwrap().insert_axis(Axis(2))
}

fn assert_close(what: &str, got: f64, want: Num, rtol: f64) {
    let want = want.value();
    let ok = if want.is_finite() {
        (got - want).abs() <= rtol * want.abs().max(1e-300)
    } else {
        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
    };
    assert!(ok, "{what}: got {got:e}, want {want:e}");
}

fn flag(name: &str) -> GroupFlag {
    match name {
        "none" => GroupFlag::None,
        "zero_variance" => GroupFlag::ZeroVariance,
        "too_few_sentences" => GroupFlag::TooFewSentences,
        other => panic!("unknown flag {other}"),
    }
}

fn check_layer(case: &Case, l: usize, got: &GroupLayerTest) {
    let c = &case.layers;
    let at = |name: &str| format!("{} layer {} {name}", case.name, l + 1);
    assert_eq!(got.flag, flag(&case.flags[l]), "{}", at("flag"));
    assert_eq!((got.layer, got.n_a, got.n_b), (l + 1, case.n_a as u64, case.n_b as u64));
    assert_close(&at("t"), got.t, c.t[l], STAT_RTOL);
    assert_close(&at("p"), got.p, c.p[l], P_RTOL);
    for (name, value, want) in [
        ("mean_a", got.mean_a, c.mean_a[l]),
        ("mean_b", got.mean_b, c.mean_b[l]),
        ("sd_a", got.sd_a, c.sd_a[l]),
        ("sd_b", got.sd_b, c.sd_b[l]),
    ] {
        assert_close(&at(name), value, want, STAT_RTOL);
    }
    if got.flag != GroupFlag::None {
        return;
    }
    for (name, value, want) in [
        ("df", got.df, c.df[l]),
        ("ci_low", got.ci_low, c.ci_low[l]),
        ("ci_high", got.ci_high, c.ci_high[l]),
        ("g", got.hedges_g, c.g[l]),
        ("g_ci_low", got.g_ci_low, c.g_ci_low[l]),
        ("g_ci_high", got.g_ci_high, c.g_ci_high[l]),
    ] {
        assert_close(&at(name), value, want, STAT_RTOL);
    }
}

fn check_corrections(case: &Case, run: impl Fn(&SignificanceOptions) -> GroupResult) {
    for reference in &case.corrections {
        let opts = SignificanceOptions {
            alpha: case.alpha,
            correction: correction_named(&reference.method),
            ..Default::default()
        };
        let r = run(&opts);
        for (l, got) in r.layers.iter().enumerate() {
            check_layer(case, l, got);
            let at = format!("{} {} layer {}", case.name, reference.method, l + 1);
            assert_close(&format!("{at} p_adjusted"), got.p_adjusted, reference.p_adjusted[l], P_RTOL);
            assert_eq!(got.significant, reference.reject[l], "{at} significant");
            assert_eq!(got.direction != Direction::NotSignificant, got.significant, "{at}");
        }
    }
}

#[test]
fn welch_and_hedges_match_scipy_and_statsmodels() {
    let g = golden();
    assert_eq!(g.ci_level, rotations::analysis::CI_LEVEL);
    for case in g.cases.iter().chain(&g.degenerate_cases) {
        let a = group_moments(tensor(&case.a, case.num_layers, case.n_a).view(), 0).unwrap();
        let b = group_moments(tensor(&case.b, case.num_layers, case.n_b).view(), 0).unwrap();
        check_corrections(case, |opts| welch_layers(&a, &b, opts).unwrap());
    }
}

/// Moments merged from uneven shards, in reverse order, give the same tests bit for bit.
#[test]
fn sharded_groups_equal_whole() {
    for case in golden().cases {
        let a = tensor(&case.a, case.num_layers, case.n_a);
        let b = tensor(&case.b, case.num_layers, case.n_b);
        let whole = group_moments(a.view(), 0).unwrap();
        let mut merged = vec![ExactMoments::default(); case.num_layers];
        let cuts = [0, case.n_a / 3, case.n_a / 3 + 1, case.n_a];
        for w in cuts.windows(2).rev() {
            let part = group_moments(a.slice(ndarray::s![.., w[0]..w[1], ..]), 0).unwrap();
            merged.iter_mut().zip(&part).for_each(|(m, p)| m.merge(p));
        }
        assert_eq!(merged, whole, "{}", case.name);
        let b = group_moments(b.view(), 0).unwrap();
        let opts = SignificanceOptions::default();
        assert_eq!(welch_layers(&merged, &b, &opts), welch_layers(&whole, &b, &opts), "{}", case.name);
    }
}
