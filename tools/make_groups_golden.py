#!/usr/bin/env python3
"""Generate tests/golden/groups_scipy.json: reference two-group tests per layer for
`tests/analysis_groups.rs`.

For deterministic synthetic angles of two independent groups of sentences (group A
`[num_layers, n_a]`, group B `[num_layers, n_b]`) this computes, per layer:
* `scipy.stats.ttest_ind(a, b, equal_var=False)` (Welch): t, df, two-sided p and
  `confidence_interval(0.95)` of the mean difference;
* Hedges' g and its variance by statsmodels' `stats.meta_analysis.effectsize_smd`, and the 95%
  CI `g ± norm.ppf(0.975)·sqrt(var)`;
* means and sample standard deviations (numpy, ddof=1);
and the corrections of `statsmodels.stats.multitest.multipletests` (bonferroni, holm, fdr_bh).

Degenerate layers (dyadic values, so the groups are exactly constant, or a group of one
sentence) get scipy's t and p; the service counts them as p = 1 in the correction, so the
references apply multipletests with those layers set to 1. Non-finite numbers are written as
"inf", "-inf" and "nan". The input data are in the JSON, so the Rust test needs no Python.

Usage (from the repository root, with numpy, scipy and statsmodels from
tools/requirements-stats.txt):
    .venv-stats/bin/python tools/make_groups_golden.py            # writes the file
    .venv-stats/bin/python tools/make_groups_golden.py --check    # verifies it is up to date
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
import scipy.stats as stats
from statsmodels.stats.meta_analysis import effectsize_smd
from statsmodels.stats.multitest import multipletests

from golden_io import number, write_or_check

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "groups_scipy.json"
ALPHA = 0.05
CI_LEVEL = 0.95
METHODS = ["bonferroni", "holm", "fdr_bh"]
KEYS = ["t", "p", "df", "mean_a", "mean_b", "sd_a", "sd_b", "ci_low", "ci_high", "g", "g_ci_low", "g_ci_high"]


def groups(rng, layers, n_a, n_b, base, effects, sd_a, sd_b):
    """Angles of two groups: a layer profile, a per-layer effect of A over B, unequal spreads."""
    base = np.asarray(base, dtype=float)[:, None]
    a = base + np.asarray(effects, dtype=float)[:, None] + rng.normal(0.0, sd_a, (layers, n_a))
    b = base + rng.normal(0.0, sd_b, (layers, n_b))
    return a, b


def make_cases():
    rng = np.random.default_rng(20261129)
    cases = []
    # 1. Notebook-like: 48 layer transitions in degrees, 27 possessive against 30 object sentences.
    L = 48
    effects = np.zeros(L)
    effects[3:9] = np.linspace(4.0, 0.5, 6)
    effects[30:34] = -1.2
    base = 5.0 + 35.0 * np.exp(-np.arange(L) / 6.0)
    cases.append(("notebook_like", *groups(rng, L, 27, 30, base, effects, 2.0, 3.5)))
    # 2. The smallest groups: 2 and 3 sentences.
    cases.append(("smallest", *groups(rng, 3, 2, 3, [20.0, 10.0, 5.0], [1.0, 0.0, -2.0], 1.0, 2.0)))
    # 3. Huge effects: tiny p-values must keep their relative precision.
    cases.append(("tiny_p", *groups(rng, 4, 40, 35, np.full(4, 20.0), [8.0, -9.0, 10.0, 0.1], 1.0, 1.5)))
    # 4. Radians, very unequal sizes and spreads (Welch's df far from n_a + n_b − 2).
    cases.append(("radians_unequal", *groups(rng, 5, 5, 60, np.full(5, 0.08), [0.01, 0.0, -0.02, 0.005, 0.03], 0.02, 0.004)))
    return cases


def hedges(a, b):
    g, var_g = effectsize_smd(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))
    half = stats.norm.ppf(0.5 + CI_LEVEL / 2) * np.sqrt(var_g)
    return g, g - half, g + half


def layer_reference(a, b, degenerate):
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
        out = {
            "t": res.statistic,
            "p": res.pvalue,
            "mean_a": a.mean() if len(a) else np.nan,
            "mean_b": b.mean() if len(b) else np.nan,
            "sd_a": a.std(ddof=1) if len(a) > 1 else np.nan,
            "sd_b": b.std(ddof=1) if len(b) > 1 else np.nan,
        }
    if degenerate:
        return out
    ci = res.confidence_interval(CI_LEVEL)
    g, g_low, g_high = hedges(a, b)
    out.update(df=res.df, ci_low=ci.low, ci_high=ci.high, g=g, g_ci_low=g_low, g_ci_high=g_high)
    return out


def analyse(name, a, b, flags=None):
    L = a.shape[0]
    flags = flags or ["none"] * L
    layers = [layer_reference(a[l], b[l], flags[l] != "none") for l in range(L)]
    cols = {key: [number(layer.get(key, np.nan)) for layer in layers] for key in KEYS}
    p = np.array([1.0 if f != "none" else layer["p"] for f, layer in zip(flags, layers)])
    corrections = []
    for method in METHODS:
        reject, p_adj, _, _ = multipletests(p, alpha=ALPHA, method=method)
        p_adj = [number(np.nan) if f != "none" else float(v) for f, v in zip(flags, p_adj)]
        reject = [bool(r) and f == "none" for f, r in zip(flags, reject)]
        corrections.append({"method": method, "p_adjusted": p_adj, "reject": reject})
    return {
        "name": name,
        "num_layers": L,
        "n_a": a.shape[1],
        "n_b": b.shape[1],
        "a": [float(v) for v in a.reshape(-1)],
        "b": [float(v) for v in b.reshape(-1)],
        "alpha": ALPHA,
        "flags": flags,
        "layers": cols,
        "corrections": corrections,
    }


def degenerate_cases():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 400, size=(4, 6)) / 8.0
    b = rng.integers(0, 400, size=(4, 5)) / 8.0
    a[0], b[0] = 2.5, 1.25  # both constant, different means: t = inf, p = 0
    a[1], b[1] = 3.0, 3.0  # both constant, equal means: t = p = NaN
    a[2] = 0.75  # one constant group: an ordinary Welch test
    flags = ["zero_variance", "zero_variance", "none", "none"]
    cases = [analyse("constant_groups", a, b, flags)]
    one = rng.integers(0, 400, size=(2, 1)) / 8.0
    cases.append(analyse("one_sentence", one, b[:2], ["too_few_sentences"] * 2))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args()
    golden = {
        "ci_level": CI_LEVEL,
        "cases": [analyse(name, a, b) for name, a, b in make_cases()],
        "degenerate_cases": degenerate_cases(),
    }
    write_or_check(OUT, golden, __file__, args.check)


if __name__ == "__main__":
    main()
