"""Did a model get better or worse? Paired comparison of two evaluated models, per language.

For each language both models were judged on, with the same comparability key (else refused, naming the field):

- **WR**: the change ``WR_B - WR_A`` over the instruction ids both have a valid preference for, with a 95%
  confidence interval from a paired bootstrap over those ids (seeded; ``n_boot`` >= 2,000 resamples; percentile
  interval of the resampled mean difference) and a two-sided bootstrap p-value (the share of centred resampled
  differences at least as far from 0 as the observed one, add-one corrected).
- **LC**: the change ``LC_B - LC_A`` (each model's own GLM, as in its metrics.json), with the interval and p-value of
  the same paired bootstrap applied to the *length-adjusted outcomes* ``y_i - p_fit_i + p_zero_i``
  (:func:`harness.metrics.lc_row_terms`: the GLM's prediction at the row's length difference and at zero), with
  the GLM fitted once per model on all its rows. This is an approximation, stated in every result: refitting the
  cross-validated GLM per resample (2 models x 5 languages x 2,000 fits of ``LogisticRegressionCV``) does not fit
  in the 30 s budget; the approximation keeps the per-instruction outcome noise, which dominates, and leaves out the
  GLM coefficients' own uncertainty, so its interval is a little narrow.

p-values are corrected across languages with Benjamini-Hochberg (separately for WR and LC); a change whose
corrected p-value is below ``alpha`` (0.05) is *improved* or *regressed*, anything else *within noise*. Below
:data:`MIN_N` shared instructions (the demo's 6) the interval is still shown but no verdict is given (*too few*): a
bootstrap over a handful of instructions gives intervals that are far too narrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.leaderboard.table import Model, key_difference, models_in

N_BOOT = 2000
ALPHA = 0.05
MIN_N = 30  # fewer shared instructions: no verdict
LC_METHOD = ("paired bootstrap of length-adjusted outcomes y - p_fit + p_zero, GLM fitted once per model "
             "(not refitted per resample)")


@dataclass
class Change:
    lang: str
    metric: str  # WR or LC
    a: float | None
    b: float | None
    delta: float | None
    low: float | None
    high: float | None
    p: float | None
    p_adjusted: float | None = None
    n: int = 0
    verdict: str = "n/a"  # improved | regressed | within noise | too few | n/a
    note: str = ""


def resolve(ref: str) -> Model:
    """``FOLDER`` (one model: a harness eval folder, an evaluation folder) or ``RUN:MODEL`` (``runs/demo:pi_1``)."""
    folder, _, label = ref.rpartition(":") if ":" in ref and not Path(ref).exists() else (ref, "", "")
    models = models_in(folder)
    if label:
        match = [m for m in models if m.label == label or m.iteration == label]
        if not match:
            raise HarnessError(f"no evaluated model '{label}' in {folder} (it has: "
                               f"{', '.join(m.label for m in models)})")
        return match[0]
    if len(models) != 1:
        raise HarnessError(f"{folder} has {len(models)} evaluated models ({', '.join(m.label for m in models)}): "
                           f"name one as {folder}:{models[-1].label}")
    return models[0]


def consecutive(run: str) -> list[tuple[Model, Model]]:
    """A run's consecutive evaluated models: (pi_ref, pi_0), (pi_0, pi_1), ..."""
    if ":" in run and not Path(run).exists():
        model = resolve(run)
        raise HarnessError(f"{run} is one model ({model.name}): give B, the model to compare it with")
    models = models_in(run)
    if len(models) < 2:
        raise HarnessError(f"{run} has {len(models)} evaluated model; compare needs two (or give A and B)")
    return list(zip(models, models[1:]))


def _frame(lang_dir: Path):
    """The language's annotations.json as harness.annotations reads every annotation file (checked, one line on
    bad input): index, preference (NaN when unparsed), len_1, len_2, generator, generator_1."""
    from harness.annotations import load_annotations

    return load_annotations(lang_dir / "annotations.json")


def _outcomes(frame) -> dict[int, float]:
    """Instruction index -> preference - 1 in [0, 1] (draws 0.5), valid rows only (as AlpacaEval's WR)."""
    out = {}
    for i, p in zip(frame["index"], frame["preference"]):
        if p == 0:
            p = 1.5
        if not math.isnan(p) and 1 <= p <= 2:
            out[int(i)] = p - 1
    return out


def paired_bootstrap(d: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                     estimate: float | None = None) -> tuple[float, float, float]:
    """95% interval and two-sided p-value (of "no change") for ``estimate`` (default mean(d)), from the
    distribution of mean(d) over resamples of the rows of ``d``: the percentile interval shifted by
    ``estimate - mean(d)``, and the add-one share of centred resampled means at least ``|estimate|`` from 0."""
    n = len(d)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # in blocks: bounded memory for long evaluations
        idx = rng.integers(0, n, size=(min(500, n_boot - start), n))
        means[start:start + len(idx)] = d[idx].mean(axis=1)
    obs = float(d.mean())
    est = obs if estimate is None else float(estimate)
    low, high = np.percentile(means, [2.5, 97.5]) + (est - obs)
    extreme = int(np.sum(np.abs(means - obs) >= abs(est) - 1e-12))
    return float(low), float(high), (extreme + 1) / (n_boot + 1)


def benjamini_hochberg(p: list[float]) -> list[float]:
    """BH-adjusted p-values (step-up), in the input order."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        adj[i] = running
    return adj


def _lc_terms(frame, lc_source: str, cache: dict):
    from harness.metrics import lc_inputs, lc_row_terms

    if lc_source not in cache:
        cache[lc_source] = lc_inputs(lc_source)
    terms = lc_row_terms(frame, cache[lc_source])
    if terms is None:
        return None
    adjusted = terms["y"] - terms["p_fit"] + terms["p_zero"]
    return dict(zip(terms["index"].astype(int), adjusted.astype(float)))


def check_comparable(a: Model, b: Model) -> list[str]:
    """The languages both models have, all with equal comparability keys; HarnessError naming the field if not."""
    if "published" in (a.origin, b.origin):
        raise HarnessError("published numbers have no per-instruction preferences to compare")
    shared = [lang for lang in a.rows if lang in b.rows]
    if not shared:
        raise HarnessError(f"{a.name} ({' '.join(a.rows)}) and {b.name} ({' '.join(b.rows)}) share no language")
    for lang in shared:
        if a.rows[lang]["key"] != b.rows[lang]["key"]:
            raise HarnessError(f"not comparable: {lang}: {key_difference(a.rows[lang], b.rows[lang])}")
    return shared


def compare(a: Model, b: Model, n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA) -> list[Change]:
    """Per language, the WR and LC changes from ``a`` to ``b`` (see the module docstring)."""
    if n_boot < 100:
        raise HarnessError(f"n_boot must be at least 100 (got {n_boot}); 2,000 or more for a 95% interval")
    langs = check_comparable(a, b)
    changes: list[Change] = []
    lc_cache: dict = {}
    for lang in langs:
        fa, fb = _frame(Path(a.rows[lang]["path"])), _frame(Path(b.rows[lang]["path"]))
        ya, yb = _outcomes(fa), _outcomes(fb)
        ids = sorted(ya.keys() & yb.keys())
        wa, wb = a.rows[lang]["win_rate"], b.rows[lang]["win_rate"]
        if len(ids) < 2:
            changes.append(Change(lang, "WR", wa, wb, None, None, None, None, n=len(ids),
                                  note=f"{len(ids)} shared judged instruction(s): nothing to resample"))
        else:
            d = np.array([yb[i] - ya[i] for i in ids])
            low, high, p = paired_bootstrap(d, n_boot, seed)
            changes.append(Change(lang, "WR", 100 * np.mean([ya[i] for i in ids]), 100 * np.mean([yb[i] for i in ids]),
                                  100 * float(d.mean()), 100 * low, 100 * high, p, n=len(ids),
                                  note="" if len(ids) == len(ya) == len(yb) else
                                  f"on the {len(ids)} instructions both have (WR over shared ids)"))
        la, lb = a.rows[lang]["length_controlled_winrate"], b.rows[lang]["length_controlled_winrate"]
        src = a.rows[lang]["lc_source"]
        ta = _lc_terms(fa, src, lc_cache) if la is not None else None
        tb = _lc_terms(fb, src, lc_cache) if lb is not None else None
        lids = sorted(ta.keys() & tb.keys()) if ta is not None and tb is not None else []
        if len(lids) < 2:
            changes.append(Change(lang, "LC", la, lb, None, None, None, None, n=len(lids),
                                  note="LC undefined for a model" if la is None or lb is None else
                                  f"{len(lids)} shared instructions"))
        else:
            d = np.array([tb[i] - ta[i] for i in lids])
            delta = lb - la  # the reported LC change; the interval is centred on it
            low, high, p = paired_bootstrap(d, n_boot, seed + 1, estimate=delta / 100)
            changes.append(Change(lang, "LC", la, lb, delta, 100 * low, 100 * high, p, n=len(lids), note=LC_METHOD))
    for c in changes:
        if c.p is not None and c.n < MIN_N:
            c.verdict = "too few"
            c.note = f"{c.n} shared instructions (< {MIN_N}): no verdict; " + c.note
    for metric in ("WR", "LC"):
        tested = [c for c in changes if c.metric == metric and c.p is not None and c.n >= MIN_N]
        for c, q in zip(tested, benjamini_hochberg([c.p for c in tested])):
            c.p_adjusted = q
            c.verdict = "within noise" if q >= alpha else "improved" if c.delta > 0 else "regressed"
    return changes


def regressions(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.verdict == "regressed"]
