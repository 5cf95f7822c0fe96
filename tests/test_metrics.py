"""harness.metrics (WR and LC against AlpacaEval's published numbers, the offline behaviour, LC row terms),
harness.annotations (the readers, score-annotations) and harness.difficulty (the estimated difficulty).

Run with ``-s`` to see the validation figures (WR max difference; LC mean/max absolute error and Spearman rank
correlation against the official length_controlled_winrate, for the estimated and the minimal source).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error, run_cli
from harness import metrics as M
from harness.annotations import load_annotations, score_annotations
from harness.difficulty import build_estimated_difficulty, rebuild_estimated_presets
from harness.errors import HarnessError

ANN = "alpacaeval2-annotations"
# Held-out LC (estimated source) vs the official LC, per split, as the README documents it: mean abs error
# 0.29-0.62 (upstream positional index), max 1.3-2.6, Spearman >= 0.995. The bounds sit just above the documented
# figures, so a 2x regression fails (on the mean over the splits, measured 0.41, at least).
MAX_HELD_OUT_MAE = 0.7
MAX_HELD_OUT_MEAN_MAE = 0.5  # over the 4 splits
MAX_HELD_OUT_MAX = 3.0
MIN_HELD_OUT_SPEARMAN = 0.99
# With the true index the 5 short files differ from their published LC by construction (up to ~3 points: AlpacaEval
# used the row position), so that comparison is looser: measured 0.52-0.87.
MAX_HELD_OUT_MAE_TRUE_INDEX = 1.0
MAX_IN_SAMPLE_MAE = 0.35  # the shipped difficulty, fitted on all models: measured 0.24


@pytest.fixture(scope="module")
def ann_dir(data_dir) -> Path:
    return data_dir / ANN


@pytest.fixture(scope="module")
def prefs(ann_dir) -> pd.DataFrame:
    return load_annotations(ann_dir / "preferences.csv.gz")


@pytest.fixture(scope="module")
def leaderboard(ann_dir) -> pd.DataFrame:
    return pd.read_csv(ann_dir / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv", index_col=0)


def _errors(est: pd.Series, official: pd.Series) -> dict:
    from scipy.stats import spearmanr

    err = (est - official.loc[est.index]).abs()
    return {"mae": float(err.mean()), "max": float(err.max()), "worst": str(err.idxmax()),
            "spearman": float(spearmanr(est, official.loc[est.index]).statistic), "n": int(len(err))}


def _line(name: str, e: dict) -> str:
    return (f"{name}: n={e['n']} mean abs err {e['mae']:.3f}, max abs err {e['max']:.3f} ({e['worst']}), "
            f"Spearman {e['spearman']:.4f}")


def _as_upstream_index(rows: pd.DataFrame) -> pd.DataFrame:
    """AlpacaEval computed the published LC with the row position as instruction index (its annotation files have
    no index column), which is off after the first gap in the 5 files with missing rows. To compare like with like,
    re-index those models by position; complete files are unchanged."""
    rows = rows.copy()
    rows["index"] = np.arange(len(rows))
    return rows


# -- win rate ------------------------------------------------------------------------------------------------------
def test_win_rate_matches_leaderboard(prefs, leaderboard):
    shared = sorted(set(prefs["results_dir"]) & set(leaderboard.index))
    assert len(shared) == 39
    diffs = {}
    for rd in shared:
        rows = prefs[prefs["results_dir"] == rd]
        wr = M.win_rate(rows["preference"])
        off = leaderboard.loc[rd]
        diffs[rd] = abs(wr["win_rate"] - off["win_rate"])
        assert diffs[rd] < 1e-6, rd
        for k in ("n_total", "n_wins", "n_wins_base", "n_draws"):
            assert wr[k] == off[k], (rd, k)
        assert abs(wr["discrete_win_rate"] - off["discrete_win_rate"]) < 1e-6
        assert abs(wr["standard_error"] - off["standard_error"]) < 1e-6
    print(f"\nWR vs leaderboard: {len(shared)} models, max abs diff {max(diffs.values()):.2e}")


def test_win_rate_rules():
    wr = M.win_rate([1.0, 2.0, 1.5, 0, float("nan"), 3.0])
    assert wr["n_total"] == 4 and wr["n_draws"] == 2 and wr["win_rate"] == pytest.approx(50.0)
    assert isinstance(wr["n_wins"], int)


def test_undefined_metrics_are_none_never_nan():
    """One row has no standard error; no valid row has no rate: None (JSON null), never NaN."""
    one = M.win_rate([1.7])
    assert one["win_rate"] == pytest.approx(70.0) and one["standard_error"] is None and one["n_total"] == 1
    none = M.win_rate([float("nan")])
    assert none["win_rate"] is None and none["standard_error"] is None and none["n_total"] == 0


def _rows(prefs, len_2=None):
    n = len(prefs)
    return pd.DataFrame({"index": range(n), "preference": prefs, "len_1": [100] * n,
                         "len_2": len_2 or [40 + 37 * (i % 5) for i in range(n)], "generator": "m",
                         "generator_1": "ref"})


@pytest.mark.parametrize("source, prefs, len_2, note", [
    ("estimated", [1.7], None, "at least 2 judged rows, has 1"),
    ("estimated", [1.7, float("nan")], None, "at least 2 judged rows, has 1"),
    ("minimal", [1.2, 1.8, 1.5, 1.9], None, "at least 5 judged rows (length_controlled_minimal cross-validates in 5 "
                                            "folds), has 4"),
    ("estimated", [1.2, 1.8, 1.5], [50, 50, 50], "length differences (reference - model) that vary"),
])
def test_lc_undefined_is_none_with_a_note(source, prefs, len_2, note):
    lc = M.length_controlled_winrate(_rows(prefs, len_2), M.lc_inputs(source))
    assert lc["length_controlled_winrate"] is None and lc["lc_standard_error"] is None
    assert lc["lc_source"] == source and note in lc["lc_note"]


def test_lc_defined_from_two_rows_and_ignores_invalid_preferences():
    """Two judged rows are enough with gamed rows (estimated); minimal needs 5. A preference outside AlpacaEval's
    encoding is left out of the LC fit exactly as it is left out of WR."""
    est = M.lc_inputs("estimated")
    two = M.length_controlled_winrate(_rows([1.9, 1.2]), est)
    assert 0 < two["length_controlled_winrate"] < 100 and two["lc_standard_error"] is not None
    assert two["lc_note"] is None
    rows = _rows([1.2, 1.8, 1.5, 1.9, 1.1, 1.6])
    minimal = M.length_controlled_winrate(rows, M.lc_inputs("minimal"))
    assert 0 < minimal["length_controlled_winrate"] < 100
    with_bad = pd.concat([rows, _rows([7.0]).assign(index=6, len_2=500)], ignore_index=True)
    unparsed = with_bad.assign(preference=with_bad["preference"].where(with_bad["preference"] <= 2))
    lc_bad = M.length_controlled_winrate(with_bad, est)["length_controlled_winrate"]
    assert lc_bad == pytest.approx(M.length_controlled_winrate(unparsed, est)["length_controlled_winrate"], abs=1e-12)
    assert M.win_rate(with_bad["preference"]) == M.win_rate(unparsed["preference"])


# -- length-controlled win rate ------------------------------------------------------------------------------------
def _held_out(prefs, halves, weights):
    """LC of each half with difficulty + gamed rows estimated from all other models (never the scored half)."""
    est_upstream, est_true = {}, {}
    for held_out in halves:
        pool = prefs[~prefs["results_dir"].isin(held_out)]
        inputs = M.lc_inputs("estimated", difficulty_from=pool, glm_weights=weights)
        assert set(held_out).isdisjoint(inputs.info["models"])
        for rd in held_out:
            rows = prefs[prefs["results_dir"] == rd]
            up = M.length_controlled_winrate(_as_upstream_index(rows), inputs)
            assert up["lc_source"] == "estimated"
            est_upstream[rd] = up["length_controlled_winrate"]
            complete = (rows["index"].to_numpy() == np.arange(len(rows))).all()
            est_true[rd] = est_upstream[rd] if complete else \
                M.length_controlled_winrate(rows, inputs)["length_controlled_winrate"]
    return pd.Series(est_upstream), pd.Series(est_true)


def test_lc_estimated_held_out(prefs, leaderboard, ann_dir):
    """Difficulty + gamed rows estimated on one half of the models, LC of the other half (and the reverse).

    Split 'alternate' (sorted names, every other one) is the reference figure; three seeded random splits show the
    spread. The threshold applies to every split."""
    official = leaderboard["length_controlled_winrate"]
    scored = sorted(m for m in set(prefs["results_dir"]) if m in official.index and m != "gpt4_1106_preview"
                    and np.isfinite(official.get(m, np.nan)))
    assert len(scored) == 38  # 39 shared, minus the reference itself
    weights = ann_dir / "glm_weights_baseline_gpt4_1106_preview.csv"
    rng = np.random.default_rng(20240501)
    splits = {"alternate": [scored[0::2], scored[1::2]]}
    for k in range(3):
        perm = list(rng.permutation(scored))
        splits[f"random{k}"] = [perm[:19], perm[19:]]
    print()
    maes = {}
    for name, halves in splits.items():
        up, true = _held_out(prefs, halves, weights)
        e_up, e_true = _errors(up, official), _errors(true, official)
        print(_line(f"LC estimated, held out, split {name} (upstream positional index)", e_up))
        print(_line(f"LC estimated, held out, split {name} (true index for the 5 short files)", e_true))
        maes[name] = (e_up["mae"], e_true["mae"])
        assert e_up["mae"] <= MAX_HELD_OUT_MAE and e_true["mae"] <= MAX_HELD_OUT_MAE_TRUE_INDEX, name
        assert e_up["max"] <= MAX_HELD_OUT_MAX and e_up["spearman"] >= MIN_HELD_OUT_SPEARMAN, name
    mean_up, mean_true = np.mean([m[0] for m in maes.values()]), np.mean([m[1] for m in maes.values()])
    print(f"LC estimated, held out: mean abs err over the {len(splits)} splits {mean_up:.3f} (upstream index), "
          f"{mean_true:.3f} (true index)")
    assert mean_up <= MAX_HELD_OUT_MEAN_MAE


def _alpaca_eval_records(rows: pd.DataFrame) -> list[dict]:
    """AlpacaEval annotation records for rows of the compact CSV (outputs of the recorded lengths; as in AlpacaEval's
    files, no index column)."""
    return [{"instruction": f"i{r.index}", "output_1": "x" * int(r.len_1), "output_2": "y" * int(r.len_2),
             "generator_1": r.generator_1, "generator_2": r.generator, "annotator": r.annotator,
             "preference": r.preference} for r in rows.itertuples()]


def test_lc_minimal_is_alpaca_evals_length_controlled_minimal(prefs, leaderboard, monkeypatch):
    """--lc-source minimal is AlpacaEval's own length_controlled_minimal GLM (no difficulty, no gamed rows): equal
    to get_length_controlled_winrate(glm_name="length_controlled_minimal") on models of every strength, including
    a file with missing rows; over the 38 leaderboard models it is far from the official LC (pinned)."""
    import alpaca_eval.metrics.glm_winrate as glm

    monkeypatch.setattr(glm, "hf_hub_download", lambda **kw: str(M.ESTIMATED_GAMED_CSV))  # read, then unused
    minimal = M.lc_inputs("minimal")
    assert minimal.difficulty is None and minimal.gamed is None
    for rd in ("NullModel", "alpaca-7b", "phi-2", "claude-2", "gpt4_gamed"):
        rows = prefs[prefs["results_dir"] == rd]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = glm.get_length_controlled_winrate(pd.DataFrame(_alpaca_eval_records(rows)),
                                                       glm_name="length_controlled_minimal", save_weights_dir=None,
                                                       is_warn_extreme_changes=False)
        ours = M.length_controlled_winrate(rows, minimal)
        assert ours["lc_source"] == "minimal" and set(ours["glm_weights"]) == {
            "np.tanh(std_delta_len)", "not_gamed_baseline.astype(float)"}, rd
        assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9), rd
        assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9), rd
    official = leaderboard["length_controlled_winrate"]
    scored = sorted(m for m in set(prefs["results_dir"]) if m != "gpt4_1106_preview"
                    and np.isfinite(official.get(m, np.nan)))
    e = _errors(pd.Series({rd: M.length_controlled_winrate(prefs[prefs.results_dir == rd], minimal)
                           ["length_controlled_winrate"] for rd in scored}), official)
    print("\n" + _line("LC minimal (no difficulty, no gamed rows)", e))
    # pinned (measured 6.418, 27.045 on gpt4_gamed, 0.9311) with room for another CPU's rounding, which could flip
    # one model's cross-validated C: a minimal LC that used a difficulty would land near the estimated 0.3-0.6
    assert e["n"] == 38 and e["worst"] == "gpt4_gamed"
    assert e["mae"] == pytest.approx(6.418, abs=0.1) and e["max"] == pytest.approx(27.045, abs=0.2)
    assert e["spearman"] == pytest.approx(0.9311, abs=0.005)


# lc_row_terms: the GLM's mean residual over the model's rows. not_gamed_baseline is 1 on exactly those rows (an
# intercept for them), so an unpenalised fit would make it 0; alpaca_eval's L1 penalty (C chosen by CV) leaves a
# little: measured |mean(y - p_fit)| <= 4.8e-4 over the models below, both sources.
MAX_ROW_TERMS_MEAN_RESIDUAL = 1e-3


@pytest.mark.parametrize("source", ["estimated", "minimal"])  # with gamed rows, and without
def test_lc_row_terms_add_up_to_lc(prefs, source):
    """lc_row_terms is the LC fit row by row: the model's own rows only (never the gamed rows), in order, whose
    mean length-neutral probability is LC, on complete files and on one with missing rows (phi-2)."""
    inputs = M.lc_inputs(source)
    print()
    for rd in ("NullModel", "alpaca-7b", "phi-2", "gpt4_gamed"):
        rows = prefs[prefs["results_dir"] == rd]
        lc = M.length_controlled_winrate(rows, inputs)
        terms = M.lc_row_terms(rows, inputs)
        assert list(terms.columns) == ["index", "y", "p_fit", "p_zero"]
        assert len(terms) == len(rows) and (terms["index"].to_numpy() == rows["index"].to_numpy()).all(), rd
        assert np.allclose(terms["y"], rows["preference"].replace({0.0: 1.5}).to_numpy() - 1, rtol=0, atol=1e-12)
        assert 100 * terms["p_zero"].mean() == pytest.approx(lc["length_controlled_winrate"], abs=1e-9), rd
        assert 100 * terms["p_zero"].sem() == pytest.approx(lc["lc_standard_error"], abs=1e-9), rd
        residual = float((terms["y"] - terms["p_fit"]).mean())
        print(f"lc_row_terms {source} {rd}: mean(y - p_fit) {residual:.2e}")
        assert abs(residual) < MAX_ROW_TERMS_MEAN_RESIDUAL, rd


def test_lc_row_terms_none_where_lc_is_not_fitted_and_skips_invalid_rows(prefs):
    est = M.lc_inputs("estimated")
    reference = prefs[prefs["results_dir"] == "gpt4_1106_preview"]
    assert M.length_controlled_winrate(reference, est)["length_controlled_winrate"] == 50.0
    assert M.lc_row_terms(reference, est) is None  # 50 by construction, no fit
    assert M.lc_row_terms(_rows([1.7]), est) is None
    assert M.lc_row_terms(_rows([1.2, 1.8, 1.5, 1.9]), M.lc_inputs("minimal")) is None
    rows = _rows([1.2, 1.8, float("nan"), 0.0, 7.0, 1.5, 1.9, 1.1])
    terms = M.lc_row_terms(rows, est)
    assert list(terms["index"]) == [0, 1, 3, 5, 6, 7]  # the NaN and the 7.0 are out, as they are out of the fit
    assert list(terms["y"]) == pytest.approx([0.2, 0.8, 0.5, 0.5, 0.9, 0.1], abs=1e-12)  # 0 is a draw


def test_lc_shipped_presets_in_sample(prefs, leaderboard):
    """The shipped difficulty (fitted on all models, so in-sample here) through score_frame."""
    official = leaderboard["length_controlled_winrate"]
    rows = prefs[prefs["results_dir"].isin(official.dropna().index)]
    rows = rows.groupby("results_dir", group_keys=False)[rows.columns].apply(_as_upstream_index)
    result = M.score_frame(rows, M.lc_inputs("estimated")).set_index("results_dir")
    assert (result["lc_source"] == "estimated").all()
    assert result.loc["gpt4_1106_preview", "length_controlled_winrate"] == 50.0
    e = _errors(result["length_controlled_winrate"].drop("gpt4_1106_preview"), official)
    print("\n" + _line("LC estimated, shipped presets (in-sample, upstream index)", e))
    assert e["mae"] < MAX_IN_SAMPLE_MAE


def test_official_code_path_matches_alpaca_eval(ann_dir, monkeypatch, tmp_path):
    """Our LC fit = alpaca_eval's get_length_controlled_winrate given the same df_gamed (a stand-in: the shipped
    estimated one), with its download patched out and nothing written to site-packages."""
    import alpaca_eval.metrics.glm_winrate as glm

    stand_in = M.ESTIMATED_GAMED_CSV
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kw: str(stand_in))
    with gzip.open(ann_dir / "full" / "alpaca-7b.json.gz", "rt", encoding="utf-8") as fh:
        records = json.load(fh)
    rows = load_annotations(ann_dir / "full" / "alpaca-7b.json.gz")
    for glm_name, source in (("length_controlled_v1", "official"), ("length_controlled_minimal", "minimal")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = glm.get_length_controlled_winrate(pd.DataFrame(records), glm_name=glm_name,
                                                       save_weights_dir=None, is_warn_extreme_changes=False)
        ours = M.length_controlled_winrate(rows, M.lc_inputs(source, df_gamed=stand_in))
        assert ours["lc_source"] == source
        assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)
        assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9)
    assert not (Path(glm.__file__).parent / "weights").exists()


def test_official_offline_gives_one_clear_error(monkeypatch, tmp_path, ann_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError) as e:
        M.lc_inputs("official", hf_cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "--df-gamed" in msg and "df_gamed.csv" in msg
    # the same through the command line (no download attempted: offline, empty cache)
    r = run_cli("score-annotations", str(ann_dir / "full" / "phi-2.json.gz"), "--lc-source", "official",
                env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert_one_line_error(r, "--df-gamed PATH", "df_gamed.csv")
    with pytest.raises(HarnessError, match="does not exist"):
        M.lc_inputs("official", df_gamed=tmp_path / "nope.csv")


def test_check_df_gamed_finds_local_cached_or_fails_fast(tmp_path, monkeypatch):
    """The planning-time check of lc_source official: a local copy, the Hugging Face cache, else a quick
    reachability test of the Hub (here refused at once), never a long wait."""
    import time

    from huggingface_hub import constants

    assert M.check_df_gamed(M.ESTIMATED_GAMED_CSV) == str(M.ESTIMATED_GAMED_CSV)
    with pytest.raises(HarnessError, match="not a df_gamed file"):
        M.check_df_gamed(M.ESTIMATED_DIFFICULTY_CSV)
    snapshot = tmp_path / "datasets--tatsu-lab--alpaca_eval" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "df_gamed.csv").write_text(M.ESTIMATED_GAMED_CSV.read_text())
    (tmp_path / "datasets--tatsu-lab--alpaca_eval" / "refs").mkdir()
    (tmp_path / "datasets--tatsu-lab--alpaca_eval" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert M.check_df_gamed(cache_dir=tmp_path) == str(snapshot / "df_gamed.csv")
    empty = tmp_path / "empty"
    with pytest.raises(HarnessError, match="HF_HUB_OFFLINE is set"):
        M.check_df_gamed(cache_dir=empty)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    t0 = time.time()
    with pytest.raises(HarnessError, match="unreachable") as e:
        M.check_df_gamed(cache_dir=empty, timeout=3.0)
    assert time.time() - t0 < 5 and "\n" not in str(e.value) and "--df-gamed" in str(e.value)


# -- readers -------------------------------------------------------------------------------------------------------
def _csv_rows(prefs, rd):
    return prefs[prefs["results_dir"] == rd].reset_index(drop=True)


def test_read_full_alpaca_7b(prefs, ann_dir):
    rows = load_annotations(ann_dir / "full" / "alpaca-7b.json.gz")
    ref = _csv_rows(prefs, "alpaca-7b")
    assert len(rows) == 805 and list(rows["index"]) == list(range(805))
    assert (rows["results_dir"] == "alpaca-7b").all() and (rows["generator"] == "alpaca-7b").all()
    for col in ("index", "preference", "len_1", "len_2"):
        assert (rows[col].to_numpy() == ref[col].to_numpy()).all(), col


def test_read_full_phi2_missing_rows(prefs, ann_dir, monkeypatch):
    path = ann_dir / "full" / "phi-2.json.gz"
    rows = load_annotations(path)  # index found by matching instructions (HARNESS_DATA is set by conftest)
    ref = _csv_rows(prefs, "phi-2")
    assert len(rows) == 803 and {131, 209}.isdisjoint(rows["index"])
    for col in ("index", "preference", "len_1", "len_2"):
        assert (rows[col].to_numpy() == ref[col].to_numpy()).all(), col
    monkeypatch.delenv("HARNESS_DATA")
    with pytest.raises(HarnessError, match="803 annotations .* no 'index'"):
        load_annotations(path)


def test_read_full_nullmodel_generator_differs(ann_dir, leaderboard):
    result = score_annotations([ann_dir / "full" / "NullModel.json.gz"], lc_source="minimal")
    assert len(result) == 1
    r = result.iloc[0]
    assert r["results_dir"] == "NullModel" and r["generator"] == "example" and r["lc_source"] == "minimal"
    assert r["win_rate"] == pytest.approx(leaderboard.loc["NullModel", "win_rate"], abs=1e-6)
    assert set(M.SCORE_COLUMNS) <= set(result.columns)


def test_read_index_column_and_lengths(tmp_path):
    recs = [{"instruction": f"q{i}", "output_1": "a" * (10 + i), "output_2": "b" * 5, "generator_1": "ref",
             "generator_2": "m", "preference": 1.25, "index": i * 2} for i in range(3)]
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(recs), encoding="utf-8")
    rows = load_annotations(p)
    assert list(rows["index"]) == [0, 2, 4] and list(rows["len_1"]) == [10, 11, 12] and list(rows["len_2"]) == [5] * 3


@pytest.mark.parametrize("text, match", [
    ('[{"preference": 1.5, "output_1": "a", "output_2": "b"},\n{"preference": ', "malformed JSON"),
    ('{"preference": 1}', "JSON list"),
    ('[{"output_1": "a", "output_2": "b", "preference": 1.2},\n{"output_1": "a", "output_2": "b"}]',
     "annotation 2 has no 'preference'"),
    ('[{"output_1": "a", "preference": 1.2}]', "output_2"),
    ('[{"output_1": "a", "output_2": "b", "preference": "x"}]', "not a number"),
])
def test_malformed_json_names_file_and_row(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(HarnessError, match=match) as e:
        load_annotations(p)
    assert str(p) in str(e.value)


def test_malformed_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("generator,index,len_1,len_2\nm,0,1,2\n", encoding="utf-8")
    with pytest.raises(HarnessError, match="missing column.*preference"):
        load_annotations(p)
    p.write_text("generator,index,preference,len_1,len_2\nm,0,1.5,1,2\nm,x,1.5,1,2\n", encoding="utf-8")
    with pytest.raises(HarnessError, match=r"p.csv:3: column 'index'"):
        load_annotations(p)
    p.write_text("generator,index,preference,len_1,len_2\nm,0,1.5,1,2\nm,805,1.5,1,2\n", encoding="utf-8")
    with pytest.raises(HarnessError, match=r"p.csv:3: instruction index 805"):
        load_annotations(p)
    p.write_text("generator,index,preference,len_1,len_2\nm,0,1.5,1,2\nm,0,1.5,1,2\n", encoding="utf-8")
    with pytest.raises(HarnessError, match="appears twice"):
        load_annotations(p)
    with pytest.raises(HarnessError, match="does not exist"):
        load_annotations(tmp_path / "missing.json")


# -- shipped files -------------------------------------------------------------------------------------------------
# Difficulties are identified only up to a shift (a common offset moves into the per-model biases), so the
# rebuilt and shipped values are compared after removing their means. The joint fit runs to its unique optimum: two
# different optimizer settings agree within 6e-6 there, while the default L-BFGS-B stopping point was 0.016 away
# (and moved with the CPU/BLAS by ~0.004). 1e-3 is far above cross-machine rounding and far below a fit that stopped
# early. What matters downstream is the LC a difficulty yields: within 0.01 points on models of every strength.
REBUILD_DIFFICULTY_TOL = 1e-3
REBUILD_LC_TOL = 0.01  # LC points
REBUILD_LC_MODELS = ["NullModel", "alpaca-7b", "phi-2", "claude-2", "gpt4_0613_concise", "gpt-3.5-turbo-1106_verbose"]


def test_shipped_difficulty_file(ann_dir, prefs, tmp_path):
    diff = M.read_difficulty_csv()
    assert len(diff) == 805 and np.isfinite(diff.to_numpy()).all() and list(diff.index) == list(range(805))
    gamed = M.read_gamed_csv(M.ESTIMATED_GAMED_CSV)
    assert len(gamed) == 2 * 805 and not gamed["not_gamed_baseline"].any()
    assert np.allclose(M.difficulty_from_gamed(gamed).to_numpy(), diff.to_numpy())
    meta = json.loads(M.ESTIMATED_PROVENANCE_JSON.read_text(encoding="utf-8"))
    from harness.io import file_hash

    assert meta["sources"][0]["sha256"] == file_hash(ann_dir / "preferences.csv.gz", 64)
    assert {"method", "models", "date", "rebuild"} <= set(meta)
    # the shipped files are what rebuild_estimated_presets makes from the shared data (up to a shift, see above)
    rebuild_estimated_presets(ann_dir.parent, out_dir=tmp_path)
    rebuilt = M.read_difficulty_csv(tmp_path / M.ESTIMATED_DIFFICULTY_CSV.name)
    delta = rebuilt.to_numpy() - diff.to_numpy()
    print(f"\nrebuilt vs shipped difficulty: mean shift {delta.mean():.2e}, "
          f"max |diff| after removing it {np.abs(delta - delta.mean()).max():.2e}")
    assert np.abs(delta - delta.mean()).max() < REBUILD_DIFFICULTY_TOL
    rg = M.read_gamed_csv(tmp_path / M.ESTIMATED_GAMED_CSV.name)
    assert (rg["index"].to_numpy() == gamed["index"].to_numpy()).all()
    # gamed preferences are sigmoid(s*t + d): a shift c of d moves them by at most c/4
    assert np.abs(rg["preference"].to_numpy() - gamed["preference"].to_numpy()).max() < \
        REBUILD_DIFFICULTY_TOL + abs(delta.mean()) / 4
    shipped_inputs = M.lc_inputs("estimated")
    rebuilt_inputs = M.LCInputs("estimated", "length_controlled_v1", rebuilt, rg)
    assert set(REBUILD_LC_MODELS) <= set(prefs["results_dir"])
    lc_diff = {}
    for rd in REBUILD_LC_MODELS:
        rows = prefs[prefs["results_dir"] == rd]
        lc_diff[rd] = abs(M.length_controlled_winrate(rows, rebuilt_inputs)["length_controlled_winrate"]
                          - M.length_controlled_winrate(rows, shipped_inputs)["length_controlled_winrate"])
    print(f"rebuilt vs shipped LC: max |diff| {max(lc_diff.values()):.2e} points over {len(lc_diff)} models")
    assert max(lc_diff.values()) < REBUILD_LC_TOL, lc_diff


def test_build_estimated_difficulty_models_subset(prefs):
    d = build_estimated_difficulty(prefs, models=["alpaca-7b", "claude-2", "NullModel"])
    assert len(d) == 805 and np.isfinite(d.to_numpy()).all()
    with pytest.raises(HarnessError, match="not in the annotations"):
        build_estimated_difficulty(prefs, models=["alpaca-7b", "no-such-model"])


def test_import_is_light():
    code = "import sys, harness.annotations, harness.difficulty, harness.metrics; " \
           "bad = [m for m in ('torch', 'alpaca_eval', 'sklearn', 'scipy') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- CLI (the real entry point, python -m harness, in a subprocess) ----------------------------------------------
def test_cli_score_annotations_writes_csv(ann_dir, tmp_path):
    out = tmp_path / "scores.csv"
    paths = [str(ann_dir / "full" / "alpaca-7b.json.gz"), str(ann_dir / "full" / "NullModel.json.gz")]
    r = run_cli("score-annotations", *paths, "--out", str(out), env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out)
    assert sorted(df["results_dir"]) == ["NullModel", "alpaca-7b"] and (df["lc_source"] == "estimated").all()
    assert df["length_controlled_winrate"].between(0, 100).all()
    api = score_annotations(paths).set_index("results_dir")
    for col in ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error", "n_total"):
        assert np.allclose(df.set_index("results_dir").loc[api.index, col], api[col], rtol=0, atol=1e-9), col
    text = " ".join(r.stderr.split())
    assert f"wrote {out} (2 rows)" in text and "LC: estimated" in text and "alpaca-7b" in text
    assert "Traceback" not in r.stderr and "INFO:" not in r.stderr + r.stdout


def test_cli_score_annotations_one_row_and_few_rows(tmp_path):
    """A one-row file (pandas duplicate-label error before) scores: WR, no standard error, LC n/a with the reason;
    minimal with fewer than 5 rows (sklearn error before) the same; a null preference ("drop 1 outputs") leaves no
    raw alpaca-eval log line."""
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"instruction": "q", "output_1": "aaaa", "output_2": "bb", "preference": 1.7,
                                "index": 3}]))
    out = tmp_path / "one.csv"
    r = run_cli("score-annotations", str(one), "--out", str(out), env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-2000:]
    text = " ".join(r.stderr.split())
    assert "70.00" in text and "LC n/a for one: LC needs at least 2 judged rows, has 1" in text
    row = pd.read_csv(out).iloc[0]
    assert row["win_rate"] == pytest.approx(70.0) and row["n_total"] == 1
    assert np.isnan(row["standard_error"]) and np.isnan(row["length_controlled_winrate"])  # empty cells
    assert "at least 2 judged rows" in row["lc_note"]
    few = tmp_path / "few.json"
    few.write_text(json.dumps([{"instruction": f"q{i}", "output_1": "a" * (9 + i), "output_2": "b" * (3 * i),
                                "preference": None if i == 1 else 1.2 + 0.2 * i, "index": i} for i in range(4)]))
    r = run_cli("score-annotations", str(few), "--lc-source", "minimal", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-2000:]
    text = " ".join(r.stderr.split())
    assert "LC n/a for few: LC needs at least 5 judged rows" in text and "has 3" in text
    assert "INFO" not in r.stderr + r.stdout and "drop 1 outputs" not in r.stderr + r.stdout
    r = run_cli("score-annotations", str(few), env={"COLUMNS": "200"})  # estimated: 3 judged rows are enough
    assert r.returncode == 0 and "LC n/a" not in r.stderr and "INFO" not in r.stderr + r.stdout
