# %% [markdown]
# # Two groups of sentences: " her" as a possessive against " her" as an object
#
# The first notebook (`notebook.py`) asks whether the target token rotates differently from the token
# before it, within one group of sentences. The next question a researcher asks is about the
# *design*: does the same word rotate differently in two grammatical roles? Here ` her` is a
# possessive determiner in one group ("She lost **her** keys") and an object pronoun in the other
# ("I saw **her** at the market"). Per layer, Welch's t-test compares the two groups' target angles
# (as `scipy.stats.ttest_ind(a, b, equal_var=False)`), with Hedges' g and a correction over layers.
#
# Start a server (`rotations serve --model-dir models/gpt2-xl`, or `make demo`'s bundled random
# model), then run this as a script or a notebook:
#
# ```sh
# python clients/python/examples/groups_notebook.py --server localhost:50051 --out figures/
# ```
#
# It writes `groups.png` into `--out`. `groups_notebook.ipynb` beside this file is this script as a
# notebook (regenerate it with `python py_to_ipynb.py groups_notebook.py`).

# %%
import argparse
import sys
from pathlib import Path

import matplotlib
import numpy as np

if "ipykernel" not in sys.modules:  # run as a script: write PNGs, open no window
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
from scipy import stats

from rotations_client import Client

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
REPO = HERE.parents[2]  # clients/python/examples -> the repository

parser = argparse.ArgumentParser(description="Two groups of sentences compared layer by layer, through the service.")
parser.add_argument("--server", default="localhost:50051", help="host:port of `rotations serve`")
parser.add_argument("--out", type=Path, default=Path("notebook-output"), help="folder for groups.png")
parser.add_argument("--group-a", type=Path, default=REPO / "examples" / "her_possessive.txt", help="one a line")
parser.add_argument("--group-b", type=Path, default=REPO / "examples" / "her_object.txt", help="one a line")
parser.add_argument("--target", default=" her", help="one token, with its leading space")
args, _ = parser.parse_known_args()  # known args only: Jupyter passes its own
args.out.mkdir(parents=True, exist_ok=True)
interactive = "ipykernel" in sys.modules


def read(path):
    return [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# %%
client = Client(args.server)
info = client.wait_ready(timeout=60)  # the model loads after the port opens
print(info)

# %% [markdown]
# # The two groups
#
# Each group is an ordinary list of sentences; the label names it in results and in errors (a
# sentence without the target is reported as `groups[1] ("object"): sentence 3 (...)`).

# %%
groups = {"possessive": read(args.group_a), "object": read(args.group_b)}
for label, sentences in groups.items():
    print(f"{label}: {len(sentences)} sentences, e.g. {sentences[0]!r}")

# %% [markdown]
# # One call: both groups' rotations and the Welch tests per layer

# %%
comparison = client.compare_groups(groups, target=args.target, correction="holm")
tests = comparison.tests
a, b = comparison.labels

print(f"{a} vs {b}: Welch's t-test on the {('target', 'non_target', 'shuffled')[tests.condition]} angles")
print(f"{tests.correction}, alpha {tests.alpha}, {tests.num_tests} tests")
for t in tests.layers:
    print(
        f"layer {t.layer:>3}  {a} {t.mean_a:7.3f}  {b} {t.mean_b:7.3f}  t = {t.t:7.3f}  df = {t.df:5.1f}  "
        f"p = {t.p:.3g}  p_adj = {t.p_adjusted:.3g}  g = {t.hedges_g:6.3f} [{t.g_ci_low:.2f}, {t.g_ci_high:.2f}]  "
        f"{t.direction}"
    )

# %% [markdown]
# # Checked against scipy
#
# The service computes the tests from exact sums of each group's angles; scipy on the angles it
# returned (float32) agrees to float32 precision.

# %%
angles_a = comparison[a].angles[:, :, 0].astype(np.float64)  # [layers, sentences of A]
angles_b = comparison[b].angles[:, :, 0].astype(np.float64)
scipy_t = np.array([stats.ttest_ind(x, y, equal_var=False).statistic for x, y in zip(angles_a, angles_b)])
print("largest |t - scipy's t|:", np.max(np.abs(tests.t - scipy_t)))
assert np.allclose(tests.t, scipy_t, rtol=1e-4)

# %% [markdown]
# # Both groups' mean angle per layer, with 95% confidence intervals

# %%
layers = tests.layer
plt.figure(figsize=(11, 4))
for label, colour, mean, sd, n in [
    (a, "#d55e00", tests.mean_a, tests.sd_a, tests.n_a),
    (b, "#0072b2", tests.mean_b, tests.sd_b, tests.n_b),
]:
    half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    plt.fill_between(layers, mean - half, mean + half, color=colour, alpha=0.2)
    plt.plot(layers, mean, "o-", color=colour, linewidth=3, label=f"{label} (n = {n[0]}): mean ± 95% CI")

# significant layers (after the correction) shaded and starred
significant = tests.significant
for layer in layers[significant]:
    plt.axvspan(layer - 0.4, layer + 0.4, color="#ffd666", alpha=0.35, linewidth=0)
if significant.any():
    top = np.maximum(tests.mean_a, tests.mean_b) + 0.05 * np.ptp(np.r_[tests.mean_a, tests.mean_b])
    plt.plot(layers[significant], top[significant], "k*", markersize=12, label="significant (Welch, Holm)")

plt.legend()
plt.gca().set(
    xlabel="Layer (hidden state l-1 → l)",
    ylabel=f"Angle to the previous layer ({comparison[a].rotations.unit})",
    title=f"Mean target angle per layer: {a} vs {b}",
)
path = args.out / "groups.png"
plt.savefig(path, dpi=120, bbox_inches="tight")
print(f"wrote {path}")
if interactive:
    plt.show()
else:
    plt.close()

# %%
client.close()
