"""Bad input on the evaluation side (`eval`, `score-annotations`), each through the real command line in a
subprocess: exit 2, exactly one line on stderr naming the offending file, key or row, no traceback, and no earlier
result changed (an existing --out file, an earlier evaluation's files). The run side is tests/test_bad_inputs.py.

Every `eval` case fails before a model is loaded: MODEL is a folder with an empty config.json, which no backend
could load, so a case that got past the checks would crash with a traceback instead of quietly generating."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from harness.metrics import ESTIMATED_GAMED_CSV

M = "{tmp}/fakemodel"  # the MODEL of every eval case
EVAL = ["eval", M, "--limit", "3", "--languages", "de"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "{tmp}/hf-cache"}  # and an empty Hugging Face cache

# (id, argv, strings the error line must contain, extra environment). {tmp} is the folder the `inputs` fixture
# fills. score-annotations cases without their own --out get `--out <an existing scores.csv>`, which must survive.
CASES = [
    # -- score-annotations: the files
    ("sa-one-file-twice", ["score-annotations", "{tmp}/four.json", "{tmp}/four.json"],
     ["{tmp}/four.json: the same annotation file is given twice"], {}),
    ("sa-one-file-two-spellings", ["score-annotations", "{tmp}/four.json", "{tmp}/adir/../four.json"],
     ["{tmp}/adir/../four.json: the same annotation file is given twice"], {}),
    ("sa-preference-7-json", ["score-annotations", "{tmp}/seven.json"],
     ["{tmp}/seven.json:3: annotation 3: a preference must be in [1, 2]", "(got 7)"], {}),
    ("sa-preference-7-csv", ["score-annotations", "{tmp}/seven.csv"],
     ["{tmp}/seven.csv:3: column 'preference': a preference must be in [1, 2]", "(got 7)"], {}),
    ("sa-preference-negative", ["score-annotations", "{tmp}/negative.json"],
     ["{tmp}/negative.json:2:", "a preference must be in [1, 2]", "(got -1)"], {}),
    ("sa-preference-string", ["score-annotations", "{tmp}/prefstr.json"],
     ["{tmp}/prefstr.json:1: annotation 1: preference 'B' is not a number"], {}),
    ("sa-json-gz-not-gzip", ["score-annotations", "{tmp}/fake.json.gz"],
     ["{tmp}/fake.json.gz: not a valid gzip file"], {}),
    ("sa-json-gz-truncated", ["score-annotations", "{tmp}/truncated.json.gz"],
     ["{tmp}/truncated.json.gz: not a valid gzip file", "ended before the end-of-stream marker"], {}),
    ("sa-csv-gz-not-gzip", ["score-annotations", "{tmp}/fake.csv.gz"], ["{tmp}/fake.csv.gz: cannot read CSV"], {}),
    ("sa-not-utf8", ["score-annotations", "{tmp}/latin1.json"], ["{tmp}/latin1.json: not UTF-8 text"], {}),
    ("sa-malformed-json", ["score-annotations", "{tmp}/broken.json"], ["{tmp}/broken.json:2: malformed JSON"], {}),
    ("sa-path-is-directory", ["score-annotations", "{tmp}/adir"], ["{tmp}/adir: is a directory"], {}),
    ("sa-path-missing", ["score-annotations", "{tmp}/missing.json"],
     ["{tmp}/missing.json: annotation file does not exist"], {}),
    ("sa-unknown-format", ["score-annotations", "{tmp}/notes.txt"], ["{tmp}/notes.txt: unknown annotation format"], {}),
    ("sa-index-out-of-range", ["score-annotations", "{tmp}/index805.csv"],
     ["{tmp}/index805.csv:3: instruction index 805 is outside 0..804"], {}),
    ("sa-model-in-two-files", ["score-annotations", "{tmp}/four.json", "{tmp}/other/four.json"],
     ["model 'four' (four) appears in several files", "{tmp}/four.json", "{tmp}/other/four.json"], {}),
    # -- score-annotations: the options
    ("sa-out-is-directory", ["score-annotations", "{tmp}/four.json", "--out", "{tmp}/adir"],
     ["{tmp}/adir: --out is a directory"], {}),
    ("sa-out-under-a-file", ["score-annotations", "{tmp}/four.json", "--out", "{tmp}/four.json/scores.csv"],
     ["{tmp}/four.json/scores.csv: --out: {tmp}/four.json is not a folder"], {}),
    ("sa-official-offline", ["score-annotations", "{tmp}/four.json", "--lc-source", "official"],
     ["--lc-source official needs AlpacaEval's df_gamed.csv", "--df-gamed PATH"], OFFLINE),
    ("sa-df-gamed-missing", ["score-annotations", "{tmp}/four.json", "--lc-source", "official", "--df-gamed",
                             "{tmp}/nope.csv"], ["{tmp}/nope.csv: df_gamed file does not exist"], OFFLINE),
    ("sa-df-gamed-wrong-columns", ["score-annotations", "{tmp}/four.json", "--lc-source", "official",
                                   "--df-gamed", "{tmp}/seven.csv"],
     ["{tmp}/seven.csv: not a df_gamed file: missing column(s) std_delta_len"], OFFLINE),
    ("sa-df-gamed-not-official", ["score-annotations", "{tmp}/four.json", "--df-gamed", "{tmp}/nope.csv"],
     ["--df-gamed only applies to --lc-source official (not estimated)"], {}),
    ("sa-difficulty-from-one-model", ["score-annotations", "{tmp}/four.json", "--difficulty-from", "{tmp}/four.json"],
     ["needs annotations of at least 2 models"], {}),
    ("sa-difficulty-from-not-estimated", ["score-annotations", "{tmp}/four.json", "--lc-source", "minimal",
                                          "--difficulty-from", "{tmp}/four.json"],
     ["--difficulty-from only applies to --lc-source estimated (not minimal)"], {}),
    ("sa-glm-weights-alone", ["score-annotations", "{tmp}/four.json", "--glm-weights", "{tmp}/nope.csv"],
     ["--glm-weights only applies with --difficulty-from"], {}),
    ("sa-lc-source-unknown", ["score-annotations", "{tmp}/four.json", "--lc-source", "offical"],
     ["invalid choice: 'offical'"], {}),
    # -- eval: found before any model is loaded
    ("eval-api-key-missing", [*EVAL, "--judge", "weighted_alpaca_eval_gpt4_turbo",
                              "eval.judge_api_key_env=HARNESS_TEST_UNSET_KEY"],
     ["judge 'weighted_alpaca_eval_gpt4_turbo' needs an API key", "HARNESS_TEST_UNSET_KEY"], {}),
    ("eval-official-offline", [*EVAL, "--lc-source", "official"],
     ["--lc-source official needs AlpacaEval's df_gamed.csv", "HF_HUB_OFFLINE", "eval.df_gamed"], OFFLINE),
    ("eval-df-gamed-missing", [*EVAL, "--lc-source", "official", "--df-gamed", "{tmp}/nope.csv"],
     ["{tmp}/nope.csv: df_gamed file does not exist"], OFFLINE),
    ("eval-df-gamed-wrong-columns", [*EVAL, "--lc-source", "official", "--df-gamed", "{tmp}/seven.csv"],
     ["{tmp}/seven.csv: not a df_gamed file"], OFFLINE),
    ("eval-df-gamed-not-official", [*EVAL, "--lc-source", "minimal", "--df-gamed", "{tmp}/nope.csv"],
     ["--df-gamed only applies to --lc-source official (not minimal)"], {}),
    ("eval-language-without-reference", ["eval", M, "--languages", "de", "ko"],
     ["no 'gpt-4-turbo-2024-04-09' reference outputs for language 'ko'",
      "eval.references: {ko: MODEL or model_outputs.json}"], {}),
    ("eval-reference-model-unknown", ["eval", M, "eval.references={ar: smollm3}", "--languages", "ar"],
     ["eval.references.ar", "unknown model 'smollm3'"], {}),
    ("eval-reference-file-missing", [*EVAL, "--reference", "{tmp}/missing_outputs.json"],
     ["{tmp}/missing_outputs.json: eval.reference: reference outputs file does not exist"], {}),
    ("eval-reference-not-gzip", [*EVAL, "--reference", "{tmp}/fake_outputs.json.gz"],
     ["{tmp}/fake_outputs.json.gz: not a valid gzip file"], {}),
    ("eval-reference-id-not-numeric", [*EVAL, "--reference", "{tmp}/badid_outputs.json"],
     ["{tmp}/badid_outputs.json:2: 'id' 'abc' is not a whole number"], {}),
    ("eval-reference-id-twice", [*EVAL, "--reference", "{tmp}/dupid_outputs.json"],
     ["{tmp}/dupid_outputs.json:2: id 0 appears twice"], {}),
    ("eval-reference-no-output", [*EVAL, "--reference", "{tmp}/noout_outputs.json"],
     ["{tmp}/noout_outputs.json:1: missing 'output'"], {}),
    ("eval-reference-malformed", [*EVAL, "--reference", "{tmp}/broken.json"], ["{tmp}/broken.json:2: malformed JSON"],
     {}),
    ("eval-reference-lacks-an-id", [*EVAL, "--reference", "{tmp}/two_outputs.json"],
     ["{tmp}/two_outputs.json: reference outputs have no answer for X-AlpacaEval id 268 (2 missing)"], {}),
    # the local df_gamed.csv is taken offline (the error is the next one: the reference)
    ("eval-local-df-gamed-then-bad-reference", [*EVAL, "--lc-source", "official", "--df-gamed",
                                                str(ESTIMATED_GAMED_CSV), "--reference", "{tmp}/badid_outputs.json"],
     ["{tmp}/badid_outputs.json:2: 'id' 'abc'"], OFFLINE),
    ("eval-judge-unknown", [*EVAL, "--judge", "gpt5"], ["unknown judge 'gpt5'"], {}),
]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _annotations(prefs: list) -> list[dict]:
    return [{"instruction": f"q{i}", "output_1": "a" * (5 + i), "output_2": "b" * (2 + 3 * i), "preference": p,
             "index": i} for i, p in enumerate(prefs)]


@pytest.fixture
def inputs(tmp_path):
    t = tmp_path / "in"
    (t / "adir").mkdir(parents=True)
    (t / "fakemodel").mkdir()
    (t / "fakemodel" / "config.json").write_text("{}")  # resolves as a local model; no backend could load it
    (t / "four.json").write_text(json.dumps(_annotations([1.2, None, 1.9, 1.5])))
    (t / "other").mkdir()
    (t / "other" / "four.json").write_text(json.dumps(_annotations([1.0, 2.0])))
    (t / "seven.json").write_text(json.dumps(_annotations([1.5, 2.0, 7, 1.0])))
    (t / "negative.json").write_text(json.dumps(_annotations([1.5, -1])))
    (t / "prefstr.json").write_text(json.dumps(_annotations(["B"])))
    (t / "seven.csv").write_text("generator,index,preference,len_1,len_2\nm,0,1.5,10,12\nm,1,7,10,12\n")
    (t / "index805.csv").write_text("generator,index,preference,len_1,len_2\nm,0,1.5,10,12\nm,805,1.5,10,12\n")
    (t / "fake.json.gz").write_text(json.dumps(_annotations([1.5, 2.0])))
    (t / "fake.csv.gz").write_text("generator,index,preference,len_1,len_2\nm,0,1.5,10,12\n")
    (t / "truncated.json.gz").write_bytes(gzip.compress(json.dumps(_annotations([1.5] * 50)).encode())[:60])
    (t / "latin1.json").write_bytes('[{"instruction": "caf\xe9"}]'.encode("latin-1"))
    (t / "broken.json").write_text('[{"preference": 1.5, "output_1": "a", "output_2": "b"},\n{"preference": ')
    (t / "notes.txt").write_text("preference 1.5\n")
    outputs = [{"instruction": "q", "output": "o", "generator": "ref", "id": i} for i in (0, 268, 536)]
    (t / "fake_outputs.json.gz").write_text(json.dumps(outputs))
    (t / "badid_outputs.json").write_text(json.dumps([outputs[0], {**outputs[1], "id": "abc"}, outputs[2]]))
    (t / "dupid_outputs.json").write_text(json.dumps([outputs[0], outputs[0], outputs[2]]))
    (t / "noout_outputs.json").write_text(json.dumps([{"instruction": "q", "id": 0}]))
    (t / "two_outputs.json").write_text(json.dumps([{**outputs[0], "id": 0}, {**outputs[0], "id": 1}]))
    # earlier results that no failing command may touch
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "scores.csv").write_text("results_dir,win_rate\nearlier,42.0\n")
    runs = tmp_path / "runs"
    (runs / "eval-fakemodel" / "eval" / "de").mkdir(parents=True)
    (runs / "eval-fakemodel" / "eval" / "de" / "metrics.json").write_text('{"win_rate": 42.0}\n')
    (runs / "eval-fakemodel" / "run.json").write_text("{}\n")
    return t, prev / "scores.csv", runs


def test_case_count():
    print(f"\nbad-input cases (eval side: eval, score-annotations): {len(CASES)}")
    assert len(CASES) >= 15
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,must,env", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2(argv, must, env, inputs, tmp_path):
    t, earlier_out, runs = inputs
    before = _tree(tmp_path)
    argv = [x.replace("{tmp}", str(t)) for x in argv]
    if argv[0] == "score-annotations" and "--out" not in argv:
        argv += ["--out", str(earlier_out)]
    if argv[0] == "eval":
        argv += ["--runs-dir", str(runs)]
    r = run_cli(*argv, env={k: v.replace("{tmp}", str(t)) for k, v in env.items()}, timeout=300)
    assert_one_line_error(r, *[m.replace("{tmp}", str(t)) for m in must])
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a failed command changed an earlier result"
    new = [k for k in after if k not in before]
    assert all(Path(k).name == "log.txt" for k in new), f"a failed command wrote {new}"
