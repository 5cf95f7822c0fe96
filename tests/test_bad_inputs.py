"""Bad input on the run side (`run`, `run --dry-run`, `ls`, `bench`), each through the real command line in a
subprocess: exit 2, exactly one line on stderr naming the offending file, key, override or row, no traceback, and no
earlier result changed. The eval and score-annotations side is tests/test_bad_inputs_eval.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli

# (id, argv, strings the error line must contain). {tmp} is a folder prepared by the `inputs` fixture.
CASES = [
    ("throughput-missing-key", ["run", "demo", "--dry-run", "--throughput", "{tmp}/tp-nokey.yaml"],
     ["{tmp}/tp-nokey.yaml: 'train' is missing"]),
    ("throughput-negative", ["run", "demo", "--dry-run", "--throughput", "{tmp}/tp-neg.yaml"],
     ["{tmp}/tp-neg.yaml: 'score' must be a positive number", "-3"]),
    ("throughput-unknown-key", ["run", "demo", "--dry-run", "--throughput", "{tmp}/tp-typo.yaml"],
     ["{tmp}/tp-typo.yaml: unknown key 'sampel'"]),
    ("throughput-missing-file", ["run", "demo", "--dry-run", "--throughput", "{tmp}/none.yaml"],
     ["{tmp}/none.yaml: cannot read the throughput file"]),
    ("bench-save-without-train", ["bench", "--save", "{tmp}/tp.yaml", "--no-train"],
     ["--save writes the train step's tokens/s too"]),
    ("throughput-without-dry-run", ["run", "demo", "--throughput", "{tmp}/tp-neg.yaml"],
     ["--throughput estimates a plan: use it with --dry-run"]),
    ("replicas-0", ["run", "demo", "--dry-run", "backend.replicas=0"], ["backend.replicas must be >= 1"]),
    ("accelerate-machines-uneven", ["run", "demo", "--dry-run", "train.accelerate.num_processes=3",
                                    "train.accelerate.num_machines=2"],
     ["train.accelerate.num_processes must be a multiple of accelerate.num_machines (2); got 3"]),
    ("accelerate-machines-no-slurm", ["run", "demo", "train.accelerate.num_processes=2",
                                      "train.accelerate.num_machines=2"],
     ["stage0.train: accelerate.num_machines = 2 runs the stage with srun", "srun is not on PATH"]),
    ("accelerate-config-unknown", ["run", "demo", "--dry-run", "train.accelerate.config_file=zero4"],
     ["train.accelerate.config_file", "ddp, fsdp, zero3", "zero4"]),
    ("grad-accum-0", ["run", "demo", "--dry-run", "train.grad_accum=0"],
     ["override train.grad_accum=0", "train.grad_accum must be >= 1"]),
    ("alpha-step-0", ["run", "demo", "pairs.alpha_step=0"], ["override pairs.alpha_step=0", "pairs.alpha_step"]),
    ("eval-chunk-0", ["run", "demo", "--dry-run", "eval.chunk=0"], ["override eval.chunk=0", "eval.chunk"]),
    ("per-iteration-a-list", ["run", "demo", "--dry-run", "per_iteration=[1, 2]"],
     ["override per_iteration=[1, 2]", "'per_iteration' must be a mapping"]),
    ("per-iteration-not-mapping", ["run", "demo", "--dry-run", "per_iteration={1: 5}"],
     ["override per_iteration={1: 5}", "per_iteration.1 must be a mapping"]),
    ("per-iteration-bad-unit", ["run", "demo", "--dry-run", "per_iteration={2: {pairs: {length_unit: bytes}}}"],
     ["per_iteration.2.pairs.length_unit must be one of chars, tokens", "'bytes'"]),
    ("per-iteration-out-of-range", ["run", "demo", "--dry-run", "per_iteration={7: {pairs: {upper_bound: 1}}}"],
     ["per_iteration key '7' is not an iteration in 1..2"]),
    ("per-iteration-unknown-key", ["run", "demo", "--dry-run", "per_iteration={2: {sample: {temprature: 1}}}"],
     ["unknown config key 'sample.temprature'", "did you mean 'sample.temperature'"]),
    ("per-iteration-not-per-iteration", ["run", "demo", "--dry-run", "per_iteration={2: {languages: [en]}}"],
     ["'per_iteration.2.languages' cannot change per iteration"]),
    ("config-is-directory", ["run", "{tmp}/adir", "--dry-run"], ["{tmp}/adir: config is a directory"]),
    ("config-not-utf8", ["run", "{tmp}/latin1.yaml", "--dry-run"], ["{tmp}/latin1.yaml: config is not UTF-8"]),
    ("config-malformed-yaml", ["run", "{tmp}/broken.yaml", "--dry-run"], ["{tmp}/broken.yaml:3: malformed YAML"]),
    ("config-run-name-boolean", ["run", "{tmp}/on.yaml", "--dry-run"],
     ["{tmp}/on.yaml: 'run_name' must be a string, got True (quote it)"]),
    ("config-not-mapping", ["run", "{tmp}/list.yaml", "--dry-run"], ["{tmp}/list.yaml: a config must be a YAML mapping"]),
    ("stage0-dataset-directory", ["run", "demo", "--dry-run", "stage0.dataset={tmp}/adir"],
     ["{tmp}/adir: stage0.dataset is a directory"]),
    ("stage0-dataset-missing-field", ["run", "demo", "--dry-run", "stage0.dataset={tmp}/prefs.jsonl"],
     ["{tmp}/prefs.jsonl:2: missing or empty field 'rejected'"]),
    ("stage0-dataset-not-gzip", ["run", "demo", "--dry-run", "stage0.dataset={tmp}/fake.jsonl.gz"],
     ["{tmp}/fake.jsonl.gz", "not a valid gzip file"]),
    ("force-missing-iteration", ["run", "demo", "--dry-run", "--force", "9:reward"],
     ["--force 9:reward: this run has no stage 9:reward"]),
    ("force-unknown-stage", ["run", "demo", "--dry-run", "--force", "rewards"], ["--force rewards: unknown stage"]),
    ("until-missing-iteration", ["run", "demo", "--dry-run", "--until", "3:pairs"],
     ["--until 3:pairs: this run has no stage 3:pairs (pairs runs at iterations 1, 2)"]),
    ("until-unknown-stage", ["run", "demo", "--dry-run", "--until", "pair"], ["--until pair: unknown stage 'pair'"]),
    ("languages-twice", ["run", "demo", "--dry-run", "languages=[en,en]"], ["languages: 'en' is listed twice"]),
    ("language-unknown", ["run", "demo", "--dry-run", "languages=[en,klingon]"], ["unknown language 'klingon'"]),
    ("temperature-negative", ["run", "demo", "--dry-run", "sample.temperature=-1"],
     ["override sample.temperature=-1", "sample.temperature must be >= 0"]),
    ("top-p-above-1", ["run", "demo", "--dry-run", "sample.top_p=1.5"], ["sample.top_p must be > 0 and <= 1"]),
    ("lr-scheduler-unknown", ["run", "demo", "--dry-run", "train.lr_scheduler=cosinus"],
     ["train.lr_scheduler must be one of", "'cosinus'"]),
    ("bf16-on-cpu", ["run", "demo", "train.precision=bf16"], ["precision bf16 needs a GPU"]),
    ("run-name-path", ["run", "demo", "--dry-run", "--run-name", "a/b"], ["run_name must be a plain folder name"]),
    ("unknown-key", ["run", "demo", "--dry-run", "train.bta=0.2"],
     ["override train.bta=0.2", "unknown config key 'train.bta'", "did you mean 'train.beta'"]),
    ("not-a-number", ["run", "demo", "--dry-run", "train.max_length=long"], ["'train.max_length' must be an integer"]),
    ("n-1", ["run", "demo", "--dry-run", "sample.n=1"], ["sample.n must be >= 2"]),
    ("chat-template-unknown", ["run", "demo", "--dry-run", "models.chat_template=llama4"],
     ["models.chat_template", "unknown chat_template 'llama4'"]),
    ("stop-empty", ["run", "demo", "--dry-run", "models.stop=[]"], ["models.stop", "non-empty list"]),
    ("reward-dtype", ["run", "demo", "--dry-run", "reward.dtype=fp8"], ["reward.dtype must be one of"]),
    ("prompts-limit-0", ["run", "demo", "--dry-run", "prompts.limit=0"], ["prompts.limit must be >= 1"]),
    ("iterations-negative", ["run", "demo", "--dry-run", "iterations=-1"], ["iterations must be >= 0"]),
    ("strategy-unknown", ["run", "demo", "--dry-run", "strategy=crosslingual"],
     ["unknown strategy 'crosslingual'", "did you mean 'cross_lingual'"]),
    ("backend-unknown", ["run", "demo", "--dry-run", "backend.sample=vllmm"], ["unknown backend 'vllmm'"]),
    ("lora-dropout", ["run", "demo", "--dry-run", "train.lora.dropout=1.5"], ["train.lora.dropout must be"]),
    ("stage0-train-override", ["run", "demo", "--dry-run", "stage0.train={beta: -1}"], ["stage0.train.beta must be > 0"]),
    ("data-dir-missing", ["run", "demo", "--dry-run", "--data-dir", "/nonexistent/data"],
     ["/nonexistent/data: data directory does not exist"]),
    ("override-without-value", ["run", "demo", "--dry-run", "train.beta"],
     ["override 'train.beta' is not of the form section.key=value"]),
    ("unknown-flag", ["run", "demo", "--dry-run", "--frce", "reward"], ["unrecognized arguments: --frce"]),
    ("prompt-file-malformed", ["run", "demo", "--dry-run", "prompts.source={tmp}/prompts", "languages=[en,es]"],
     ["{tmp}/prompts/en.jsonl:2: malformed JSON line"]),
    ("model-folder-missing", ["run", "demo", "--dry-run", "models.reference=/nonexistent/model"],
     ["model folder '/nonexistent/model' does not exist"]),
    ("ls-unknown-kind", ["ls", "modles"], ["invalid choice: 'modles'"]),
    ("bench-prompts-0", ["bench", "--prompts", "0"], ["--prompts must be >= 1"]),
    ("bench-repeats-0", ["bench", "--repeats", "0"], ["--repeats must be >= 1"]),
    ("bench-train-batch-0", ["bench", "--train-batch", "0"], ["--train-batch must be >= 1"]),
    ("bench-backend-unknown", ["bench", "--backends", "tensorrt"], ["--backends: unknown backend 'tensorrt'"]),
    ("eval-override-after-languages", ["eval", "smollm2-135m-instruct", "--languages", "de", "es", "eval.chunk=0"],
     ["override eval.chunk=0", "eval.chunk must be >= 1"]),
]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path):
    t = tmp_path / "in"
    t.mkdir()
    (t / "adir").mkdir()
    (t / "latin1.yaml").write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    (t / "broken.yaml").write_text("run_name: x\nsample: {n: [\n")
    (t / "on.yaml").write_text("run_name: on\n")
    (t / "list.yaml").write_text("- a\n- b\n")
    (t / "tp-nokey.yaml").write_text("sample: 10\nscore: 20\n")
    (t / "tp-neg.yaml").write_text("sample: 10\nscore: -3\ntrain: 5\n")
    (t / "tp-typo.yaml").write_text("sampel: 10\nscore: 20\ntrain: 5\n")
    (t / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                                   '{"prompt": "a", "chosen": "b"}\n')
    (t / "fake.jsonl.gz").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    d = t / "prompts"
    d.mkdir()
    (d / "en.jsonl").write_text('{"id": "a", "prompt": "A"}\n{"id": "b", "prompt": "B"\n')
    (d / "es.jsonl").write_text('{"id": "a", "prompt": "A", "prompt_en": "A"}\n')
    # an earlier result that no bad command may touch
    runs = tmp_path / "runs"
    (runs / "demo" / "iter_1" / "reward").mkdir(parents=True)
    (runs / "demo" / "iter_1" / "reward" / "rewards.jsonl").write_text('{"lang": "en"}\n')
    (runs / "demo" / "run.json").write_text("{}\n")
    return t, runs


def test_case_count():
    print(f"\nbad-input cases (run, dry-run, ls, bench): {len(CASES)}")
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv,must", [(a, m) for _, a, m in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2(argv, must, inputs):
    t, runs = inputs
    before = _tree(runs)
    fill = [x.replace("{tmp}", str(t)) for x in argv]
    r = run_cli(*fill, "--runs-dir", str(runs)) if argv[0] in ("run", "eval") else run_cli(*fill)
    assert_one_line_error(r, *[m.replace("{tmp}", str(t)) for m in must])
    assert _tree(runs) == before, "a failed command changed an earlier result"


def test_run_name_flag_is_a_literal_string(tmp_path):
    """`--run-name on` names the folder 'on' (it was YAML-parsed into True and wrote runs/True)."""
    r = run_cli("run", "demo", "--dry-run", "--run-name", "on", "--runs-dir", str(tmp_path), env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path}/on" in " ".join(r.stderr.split())
