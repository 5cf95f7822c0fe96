"""Leaderboard tables, comparability, AlpacaEval CSVs, and the paired comparison, on fixed evaluation folders."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from harness.leaderboard.simulate import JUDGE, simulate, write_eval, write_run
from harness.errors import HarnessError
from harness.leaderboard import compare as cmp
from harness.leaderboard.table import (average, build, find_models, published_models, ranks, split_sections)

LANGS = ["en", "es"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs with the same measurement (comparable) and one judged by another judge (not comparable)."""
    root = tmp_path_factory.mktemp("lb")
    n = 100
    a = write_run(root, "alpha", {
        "pi_ref": {lang: simulate(n, 0.30, 1 + i) for i, lang in enumerate(LANGS)},
        "pi_0": {lang: simulate(n, 0.40, 11 + i) for i, lang in enumerate(LANGS)},
        "pi_1": {lang: simulate(n, 0.55, 21 + i) for i, lang in enumerate(LANGS)}})
    b = write_run(root, "beta", {"pi_1": {lang: simulate(n, 0.45, 31 + i) for i, lang in enumerate(LANGS)}},
                  strategy="multilingual")
    c = write_run(root, "gamma", {"pi_1": {lang: simulate(n, 0.6, 41 + i) for i, lang in enumerate(LANGS)}},
                  judge={**JUDGE, "model": "another-judge"})
    return root, a, b, c


def test_table_math_from_metrics_files(runs, tmp_path):
    root, a, b, _ = runs
    built = build([str(a), str(b)], tmp_path, "t")
    assert [f.name for f in built.files] == ["t.csv", "t.md", "t.html", "history.jsonl"]
    (section,) = built.sections
    names = [m.name for m in section.models]
    assert names == ["alpha/pi_ref", "alpha/pi_0", "alpha/pi_1", "beta/pi_1"]
    rows = list(csv.DictReader(open(tmp_path / "t.csv", encoding="utf-8")))
    assert len(rows) == 4 * len(LANGS)
    for r in rows:  # each row is exactly what its metrics.json says
        m = json.loads(open(f"{r['path']}/metrics.json").read())
        assert float(r["win_rate"]) == pytest.approx(m["win_rate"])
        assert float(r["length_controlled_winrate"]) == pytest.approx(m["length_controlled_winrate"])
        assert int(r["n_total"]) == 100 and r["strategy"] in ("cross_lingual", "multilingual")
        assert len({r["key"] for r in rows if r["lang"] == "en"}) == 1
    pi1 = section.models[2]
    assert average(pi1, LANGS, "win_rate") == pytest.approx(np.mean([pi1.rows[lang]["win_rate"] for lang in LANGS]))
    # best and second best per column: the two highest values of the column
    rk = ranks(section)
    for header, lang in (("en WR", "en"), ("es LC", "es")):
        metric = "win_rate" if "WR" in header else "length_controlled_winrate"
        vals = sorted({round(m.rows[lang][metric], 9) for m in section.models}, reverse=True)
        best = [m.name for m in section.models if round(m.rows[lang][metric], 9) == vals[0]]
        assert [n for n in names if rk.get((n, header)) == 1] == best
        assert all(rk.get((m.name, header)) == 2 for m in section.models if round(m.rows[lang][metric], 9) == vals[1])
    md = (tmp_path / "t.md").read_text()
    wr = pi1.rows["en"]["win_rate"]
    assert re.search(rf"\| alpha \(cross_lingual\) \| pi_1 \| .*\*\*{wr:.2f} ± ", md) or f"{wr:.2f}" in md
    hist = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 8 and {h["model"] for h in hist} == set(names)
    build([str(a)], tmp_path, "t")  # a second build appends
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 8 + 6


def test_published_rows_match_the_papers_averages():
    models = published_models()
    assert len(models) == 18 and all(m.origin == "published" for m in models)
    langs = ["en", "es", "ru", "de", "fr"]
    paper_avg = {"Llama-3-8B-SFT-DPO (pi_0)": (12.27, 13.71), "Iteration 2 (pi_2)": (18.24, 26.43),
                 "Aya-23-8B": (13.86, 16.62), "gpt-4o-mini": (48.20, 45.19)}
    for m in models:
        if m.label in paper_avg:
            lc, wr = paper_avg[m.label]
            assert average(m, langs, "length_controlled_winrate") == pytest.approx(lc, abs=0.011)
            assert average(m, langs, "win_rate") == pytest.approx(wr, abs=0.011)


def test_incomparable_rows_are_split_and_named(runs, tmp_path):
    root, a, _, c = runs
    built = build([str(a), str(c), "published"], tmp_path, "mixed")
    assert [len(s.models) for s in built.sections] == [3, 1, 18]
    assert "judge differs" in built.sections[1].note and "another-judge" in built.sections[1].note
    md = (tmp_path / "mixed.md").read_text()
    assert md.count("## Section") == 3 and "published numbers, not re-measured" in md
    with pytest.raises(HarnessError, match="not comparable: en: judge differs"):
        cmp.compare(cmp.resolve(f"{a}:pi_1"), cmp.resolve(str(c)))


def test_comparability_key_covers_reference_ids_lc_and_decoding(tmp_path):
    n = 40
    base = write_run(tmp_path, "base", {"pi_1": {"en": simulate(n, 0.5, 1)}})
    variants = {
        "reference": dict(reference="another-reference"),
        "instructions": dict(ids=list(range(1, n + 1))),
        "decoding": dict(eval_cfg={"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 42}),
    }
    for field, kw in variants.items():
        other = write_run(tmp_path, f"v_{field}", {"pi_1": {"en": simulate(n, 0.5, 1)}}, **kw)
        sections = split_sections(find_models([str(base), str(other)]))
        assert len(sections) == 2 and f"{field} differs" in sections[1].note, field
    from harness.metrics import lc_inputs

    other = write_run(tmp_path, "v_lc", {"pi_1": {"en": simulate(n, 0.5, 1)}}, lc=lc_inputs("minimal"))
    assert "lc differs" in split_sections(find_models([str(base), str(other)]))[1].note


def test_alpaca_eval_reads_the_csvs_back(runs, tmp_path):
    from alpaca_eval.utils import get_precomputed_leaderboard, load_or_convert_to_dataframe

    _, a, b, _ = runs
    build([str(a), str(b)], tmp_path, "ae", alpaca_eval=True)
    for lang in LANGS:
        path = tmp_path / "ae.alpaca_eval" / f"{lang}.csv"
        df = load_or_convert_to_dataframe(path)
        assert list(df.index) == ["alpha/pi_ref", "alpha/pi_0", "alpha/pi_1", "beta/pi_1"]
        assert list(df.columns) == ["win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                                    "discrete_win_rate", "mode", "avg_length", "length_controlled_winrate",
                                    "lc_standard_error"]
        board, _ = get_precomputed_leaderboard(str(path), None, None)
        metrics = json.loads(open(a / "iter_1" / "eval" / lang / "metrics.json").read())
        assert board["alpha/pi_1"]["win_rate"] == pytest.approx(metrics["win_rate"])
        assert board["alpha/pi_1"]["length_controlled_winrate"] == pytest.approx(metrics["length_controlled_winrate"])
        assert board["alpha/pi_1"]["n_total"] == 100 and board["alpha/pi_1"]["mode"] == "community"


# -- compare ---------------------------------------------------------------------------------------------------------
def test_bootstrap_false_alarm_rate_is_nominal():
    """400 simulated pairs of models with no true difference on 805 instructions (per-instruction win
    probabilities shared by both, as paired data is): the share flagged at 5% stays within 2 points of 5%."""
    rng = np.random.default_rng(7)
    n, sims, alarms = 805, 400, 0
    for s in range(sims):
        p = rng.beta(1.2, 2.0, n)  # instruction difficulty: the same for both models
        ya, yb = rng.random(n) < p, rng.random(n) < p
        _, _, pval = cmp.paired_bootstrap((yb.astype(float) - ya), 2000, seed=s)
        alarms += pval < 0.05
    rate = alarms / sims
    print(f"false-alarm rate {rate:.3f} over {sims} null simulations")
    assert abs(rate - 0.05) <= 0.02


def test_a_five_point_difference_is_flagged(tmp_path):
    rng = np.random.default_rng(3)
    n = 805
    p = rng.beta(1.2, 2.0, n)
    langs = ["en", "es", "de", "fr", "ru"]
    old = {lang: simulate(n, p, 100 + i) for i, lang in enumerate(langs)}
    new = {lang: simulate(n, np.clip(p + 0.05, 0, 1), 100 + i) for i, lang in enumerate(langs)}
    run = write_run(tmp_path, "r", {"pi_0": old, "pi_1": new})
    changes = cmp.compare(cmp.resolve(f"{run}:pi_0"), cmp.resolve(f"{run}:pi_1"))
    wr = {c.lang: c for c in changes if c.metric == "WR"}
    assert all(c.verdict == "improved" and c.low > 0 for c in wr.values()), wr
    assert all(3 < c.delta < 7 for c in wr.values())
    back = cmp.compare(cmp.resolve(f"{run}:pi_1"), cmp.resolve(f"{run}:pi_0"))
    assert {c.lang for c in cmp.regressions(back) if c.metric == "WR"} == set(langs)
    lc = [c for c in changes if c.metric == "LC"]
    assert len(lc) == 5 and all(c.low is not None and c.low < c.delta < c.high for c in lc)


def test_benjamini_hochberg_matches_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    adj = cmp.benjamini_hochberg(p)
    # sorted: 0.005 0.01 0.03 0.04 0.2 -> *5/rank: .025 .025 .05 .05 .2, then running minimum from the top
    assert adj == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.2])


def test_compare_command_gates_on_regression(tmp_path):
    n = 805
    rng = np.random.default_rng(5)
    p = rng.beta(1.2, 2.0, n)
    run = write_run(tmp_path, "gate", {
        "pi_0": {"en": simulate(n, p, 1), "de": simulate(n, p, 2)},
        "pi_1": {"en": simulate(n, p, 1), "de": simulate(n, np.clip(p - 0.08, 0, 1), 2)}})
    r = run_cli("compare", str(run), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    r = run_cli("compare", f"{run}:pi_0", f"{run}:pi_1", "--fail-on-regression")
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("harness: regression: de ")
    res = json.loads((tmp_path / "c.json").read_text())
    verdicts = {(c["lang"], c["metric"]): c["verdict"] for c in res["comparisons"][0]["changes"]}
    assert verdicts[("de", "WR")] == "regressed" and verdicts[("en", "WR")] == "within noise"


def test_leaderboard_command(runs, tmp_path):
    _, a, b, _ = runs
    r = run_cli("leaderboard", str(a), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "alpha.html").is_file() and "wrote:" in r.stderr
    r = run_cli("leaderboard", "--history", "alpha/pi_1", "--out", str(tmp_path), "--plot", str(tmp_path / "h.png"))
    assert r.returncode == 0 and "alpha/pi_1" in r.stderr
    assert (tmp_path / "h.png").stat().st_size > 5000


@pytest.mark.parametrize("args, message", [
    (["leaderboard", "/nonexistent/run"], "no such run or evaluation folder"),
    (["leaderboard", "/nonexistent/*/x"], "no folder matches"),
    (["leaderboard"], "give at least one run folder"),
    (["compare", "/nonexistent"], "no such run or evaluation folder"),
    (["compare", "RUN:pi_9"], "no evaluated model 'pi_9'"),
    (["compare", "RUN"], "name one as"),
    (["compare", "RUN:pi_0", "RUN:pi_1", "--n-boot", "10"], "n_boot must be at least 100"),
    (["report", "/nonexistent"], "no such run folder"),
])
def test_bad_leaderboard_inputs_one_line(runs, args, message):
    _, a, _, _ = runs
    args = [x.replace("RUN", str(a)) for x in args]
    if args == ["compare", str(a)]:
        args = ["compare", str(a), str(a)]
    r = run_cli(*args)
    assert_one_line_error(r, message)


def test_no_verdict_on_a_handful_of_instructions(tmp_path):
    run = write_run(tmp_path, "few", {"pi_0": {"en": [1.0] * 6}, "pi_1": {"en": [2.0] * 6}})
    (wr,) = [c for c in cmp.compare(cmp.resolve(f"{run}:pi_0"), cmp.resolve(f"{run}:pi_1")) if c.metric == "WR"]
    assert wr.delta == pytest.approx(100) and wr.verdict == "too few" and wr.p_adjusted is None
