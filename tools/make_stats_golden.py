#!/usr/bin/env python3
"""Generate tests/golden/ttest_scipy.json: reference per-layer paired t-tests for
`tests/analysis_scipy.rs`.

For several deterministic synthetic angle tensors `[num_layers, num_sentences, 3]` this runs,
per layer, `scipy.stats.ttest_rel` on conditions a and b, the mean / sd (ddof=1) of the
differences, Cohen's d_z = mean / sd, the 95% confidence interval of the mean difference
(`scipy.stats.t.ppf`, cross-checked against `TtestResult.confidence_interval`) and the
multiple-comparison corrections of `statsmodels.stats.multitest.multipletests`
(bonferroni, holm, fdr_bh). Each correction is given for the family size m = num_layers (the
service's default) and m = num_layers + 1 (the notebook's `0.05 / n_hiddens`, 49 for 48
tests); for Holm and BH with m > num_layers the extra tests are p = 1 padding.

The input data are written into the JSON too, so the Rust test needs no Python.

`degenerate_cases` hold layers whose paired differences are exactly constant (dyadic angles, so
`a - b` is exact): scipy gives t = +-inf with p = 0, or t = p = NaN when the differences are all
0, and a confidence interval of zero width. Non-finite numbers are written as the strings
"inf", "-inf" and "nan" (JSON has no such numbers). The service counts such a layer in the
correction as p = 1, so its references apply multipletests to p with those layers set to 1.

Usage (from the repository root):
    make golden-check                                             # creates .venv-stats/ and checks
    .venv-stats/bin/python tools/make_stats_golden.py            # writes the file
    .venv-stats/bin/python tools/make_stats_golden.py --check    # verifies it is up to date
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.stats as stats
import statsmodels
from statsmodels.stats.multitest import multipletests

from golden_io import number

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "ttest_scipy.json"
ALPHA = 0.05
CI_LEVEL = 0.95


def angle_like(rng, layers, sentences, effects, noise_sd, base, shuffled=(70.0, 10.0)):
    """Angles with a per-sentence random effect shared by the conditions (so pairing matters),
    a layer profile `base[l]`, and a per-layer target-minus-non-target effect `effects[l]`."""
    base = np.asarray(base, dtype=float)
    effects = np.asarray(effects, dtype=float)
    sentence_effect = rng.normal(0.0, 0.5 * noise_sd, size=(1, sentences))
    x = np.empty((layers, sentences, 3))
    x[:, :, 1] = base[:, None] + sentence_effect + rng.normal(0, noise_sd, (layers, sentences))
    x[:, :, 0] = (
        base[:, None]
        + effects[:, None]
        + sentence_effect
        + rng.normal(0, noise_sd, (layers, sentences))
    )
    x[:, :, 2] = rng.normal(shuffled[0], shuffled[1], (layers, sentences))
    return x


def make_cases():
    rng = np.random.default_rng(20250901)
    cases = []

    # 1. Notebook-like: GPT-2 XL has 48 layer transitions, 54 sentences; angles in degrees,
    #    large in the first layers and small later; a mix of null, positive and negative layers.
    L, S = 48, 54
    base = 5.0 + 35.0 * np.exp(-np.arange(L) / 6.0)
    effects = np.zeros(L)
    effects[2:10] = np.linspace(3.0, 0.5, 8)
    effects[20:26] = -np.linspace(0.2, 1.5, 6)
    effects[40:44] = 0.8
    x = angle_like(rng, L, S, effects, 2.0, base)
    # Layer 46 is constructed to have p = 0.00103, between 0.05/49 and 0.05/48: significant
    # with the corrected Bonferroni divisor (48 tests) but not with the notebook's 49.
    z = rng.normal(size=S)
    z = (z - z.mean()) / z.std(ddof=1)
    t_star = stats.t.isf(0.00103 / 2, S - 1)
    sd_star = 1.5
    x[45, :, 0] = x[45, :, 1] + t_star * sd_star / np.sqrt(S) + sd_star * z
    cases.append(("notebook_like", x, 0, 1))

    # 2. The smallest valid case: two sentences (df = 1).
    x = rng.uniform(1.0, 30.0, size=(3, 2, 3))
    cases.append(("two_sentences", x, 0, 1))

    # 3. Huge effects: p-values down to ~1e-30 and below (must keep relative precision).
    L, S = 5, 54
    sd = 1.0
    effects = np.array([3.0, 3.5, 4.0, 4.5, -4.2]) * sd
    cases.append(("tiny_p", angle_like(rng, L, S, effects, sd / np.sqrt(2.0), np.full(L, 20.0)), 0, 1))

    # 4. Negative effects, in radians (small numbers).
    L, S = 6, 20
    effects = -np.array([0.002, 0.004, 0.006, 0.0, 0.01, 0.003])
    base = np.full(L, 0.08)
    x = angle_like(rng, L, S, effects, 0.004, base, shuffled=(1.2, 0.2))
    cases.append(("negative_radians", x, 0, 1))

    # 5. Other conditions: shuffled (2) against target (0).
    L, S = 4, 30
    x = angle_like(rng, L, S, np.array([0.5, 1.0, -0.3, 2.0]), 3.0, np.full(L, 60.0))
    cases.append(("shuffled_vs_target", x, 2, 0))

    # 6. A tiny but real variance: d = 1 or 1 + 2^-30 (exact: dyadic angles), |t| ~ 1e9. An
    #    ordinary test, not "zero variance" (the service once flagged any |t| above ~1.7e7).
    L, S = 1, 54
    x = np.empty((L, S, 3))
    x[0, :, 1] = rng.integers(0, 400, size=S) / 8.0
    x[0, :, 0] = x[0, :, 1] + 1.0 + (np.arange(S) % 2) * 2.0**-30
    x[0, :, 2] = 60.0
    assert len(set(x[0, :, 0] - x[0, :, 1])) == 2
    cases.append(("tiny_variance", x, 0, 1))
    return cases


def analyse(name, x, a, b):
    L, S, C = x.shape
    out = {
        "name": name,
        "shape": [L, S, C],
        "angles": [float(v) for v in x.reshape(-1)],
        "condition_a": a,
        "condition_b": b,
        "alpha": ALPHA,
    }
    cols = {k: [] for k in ["t", "p", "df", "mean", "sd", "dz", "ci_low", "ci_high"]}
    for layer in range(L):
        xa, xb = x[layer, :, a], x[layer, :, b]
        res = stats.ttest_rel(xa, xb)
        d = xa - xb
        n = len(d)
        mean = d.mean()
        sd = d.std(ddof=1)
        df = n - 1
        half = stats.t.ppf(0.5 + CI_LEVEL / 2, df) * sd / np.sqrt(n)
        ci = res.confidence_interval(CI_LEVEL)
        assert np.isclose(ci.low, mean - half, rtol=1e-12, atol=0)
        assert np.isclose(ci.high, mean + half, rtol=1e-12, atol=0)
        assert np.isclose(res.statistic, mean / (sd / np.sqrt(n)), rtol=1e-12)
        for key, value in [
            ("t", res.statistic),
            ("p", res.pvalue),
            ("df", df),
            ("mean", mean),
            ("sd", sd),
            ("dz", mean / sd),
            ("ci_low", mean - half),
            ("ci_high", mean + half),
        ]:
            cols[key].append(float(value))
    out["layers"] = cols

    p = np.asarray(cols["p"])
    corrections = []
    for method in ["bonferroni", "holm", "fdr_bh"]:
        for m in [L, L + 1]:
            padded = np.concatenate([p, np.ones(m - L)])
            reject, p_adj, _, _ = multipletests(padded, alpha=ALPHA, method=method)
            reject, p_adj = reject[:L], p_adj[:L]
            if method == "bonferroni":
                # The notebook's rule: p < alpha / m.
                assert np.array_equal(reject, p < ALPHA / m)
                assert np.allclose(p_adj, np.minimum(1.0, p * m), rtol=1e-15, atol=0)
            corrections.append(
                {
                    "method": method,
                    "num_tests": m,
                    "p_adjusted": [float(v) for v in p_adj],
                    "reject": [bool(v) for v in reject],
                }
            )
    out["corrections"] = corrections
    if name == "notebook_like":
        assert ALPHA / (L + 1) < p[45] < ALPHA / L, p[45]
    return out


def degenerate_case():
    rng = np.random.default_rng(20251129)
    L, S = 5, 12
    b = rng.integers(0, 400, size=(L, S)) / 8.0
    a = b.copy()
    a[0] += 0.5  # constant positive difference: t = +inf, p = 0
    # a[1] == b[1]: all-zero differences: t = p = NaN
    a[2] -= 0.75  # constant negative difference: t = -inf, p = 0
    a[3] += rng.normal(0.8, 1.0, S)
    a[4] += rng.normal(-0.1, 1.0, S)
    x = np.stack([a, b, np.full((L, S), 60.0)], axis=2)
    cols = {k: [] for k in ["t", "p", "mean", "sd", "dz", "ci_low", "ci_high", "flagged"]}
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns about the constant layers
        for layer in range(L):
            res = stats.ttest_rel(x[layer, :, 0], x[layer, :, 1])
            d = x[layer, :, 0] - x[layer, :, 1]
            ci = res.confidence_interval(CI_LEVEL)
            sd = d.std(ddof=1)
            for key, value in [
                ("t", res.statistic),
                ("p", res.pvalue),
                ("mean", d.mean()),
                ("sd", sd),
                ("dz", d.mean() / sd),
                ("ci_low", ci.low),
                ("ci_high", ci.high),
            ]:
                cols[key].append(number(value))
            cols["flagged"].append(bool(sd == 0.0))
    assert cols["t"][:3] == ["inf", "nan", "-inf"], cols["t"]
    p = np.array([1.0 if f else v for f, v in zip(cols["flagged"], cols["p"])])
    corrections = []
    for method in ["bonferroni", "holm", "fdr_bh"]:
        reject, p_adj, _, _ = multipletests(p, alpha=ALPHA, method=method)
        corrections.append(
            {"method": method, "p_adjusted": [float(v) for v in p_adj], "reject": [bool(v) for v in reject]}
        )
    return {
        "name": "constant_differences",
        "shape": [L, S, 3],
        "angles": [float(v) for v in x.reshape(-1)],
        "alpha": ALPHA,
        "layers": cols,
        "corrections": corrections,
    }


def tied_p_values():
    """Holm and Benjamini-Hochberg on p-value vectors with ties (exact ties, ties at the
    threshold, all equal, ties at 1), as statsmodels' multipletests computes them."""
    vectors = [
        [0.01, 0.01, 0.02, 0.02, 0.02, 0.5],
        [0.04, 0.01, 0.04, 0.01, 0.04],
        [0.0125, 0.0125, 0.0125, 0.0125],
        [0.3, 0.3, 1.0, 1.0, 0.001, 0.001, 0.2],
        [1e-30, 1e-30, 0.05, 0.05, 0.049, 0.051],
    ]
    out = []
    for p in vectors:
        for method in ["holm", "fdr_bh"]:
            reject, p_adj, _, _ = multipletests(np.asarray(p), alpha=ALPHA, method=method)
            out.append({"p": p, "method": method, "p_adjusted": [float(v) for v in p_adj],
                        "reject": [bool(v) for v in reject]})
    return out


# Degrees of freedom from a pair of sentences to corpora far larger than any yet (the service's
# quantile once never returned for df >= ~1.45e7), fractional ones as Welch's test gives them.
STUDENT_T_DF = [1.0, 1.5, 2.0, 3.0, 4.7, 10.0, 30.0, 100.0, 1e3, 9999.0, 1e4, 3e4, 1e5, 1e6, 1.45e7,
                2e7 - 1, 1e9, 1e12]
STUDENT_T_AT = [0.01, 0.5, 1.0, 1.959963984540054, 3.0, 5.0, 10.0, 20.0, 37.0]
STUDENT_T_Q = [0.6, 0.975, 0.995, 0.9999995]


def student_t():
    """scipy's upper tail `t.sf(t, df)` and quantile `t.ppf(q, df)` over STUDENT_T_DF."""
    return {
        "df": STUDENT_T_DF,
        "t": STUDENT_T_AT,
        "q": STUDENT_T_Q,
        "sf": [[float(stats.t.sf(t, df)) for t in STUDENT_T_AT] for df in STUDENT_T_DF],
        "ppf": [[float(stats.t.ppf(q, df)) for q in STUDENT_T_Q] for df in STUDENT_T_DF],
    }


def build():
    return {
        "generator": "tools/make_stats_golden.py",
        "versions": {
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "statsmodels": statsmodels.__version__,
        },
        "ci_level": CI_LEVEL,
        "cases": [analyse(*c) for c in make_cases()],
        "degenerate_cases": [degenerate_case()],
        "tied_p_values": tied_p_values(),
        "student_t": student_t(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args()
    text = json.dumps(build(), indent=1) + "\n"
    if args.check:
        old = json.loads(OUT.read_text())
        new = json.loads(text)
        old.pop("versions", None)
        new.pop("versions", None)
        if old != new:
            sys.exit(f"{OUT} is out of date; rerun tools/make_stats_golden.py")
        print(f"{OUT} is up to date")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    for case in json.loads(text)["cases"]:
        p = case["layers"]["p"]
        print(f"{case['name']}: shape {case['shape']}, p in [{min(p):.3g}, {max(p):.3g}]")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
