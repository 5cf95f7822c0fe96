"""Data-parallel generation: a stage's chunks spread over N engine processes (``backend.replicas``), on this machine
or, with ``backend.replicas_on: ray``, as actors across the nodes of a Ray cluster.

Each replica is a spawned process with its own backend (transformers or vLLM) and its share of the cores; the stage
process hands out chunks and appends every finished chunk itself, so the stage's files have one writer and stay
resumable per chunk. A chunk's samples depend only on its prompts and seeds, so the responses are the same whatever
the number of replicas (tests/test_replicas.py). A replica that dies ends the stage with one error line; the chunks
already appended are kept and the rerun redoes only the rest.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from harness.errors import HarnessError

_BACKEND = None


def local_gpus(replicas: int, options: dict) -> list[list[str]]:
    """The GPUs of each local replica: consecutive groups of ``tensor_parallel_size`` of the GPUs this process
    sees ([] each without GPUs). More replicas than groups is one line: they would share a GPU and run out of
    memory."""
    import torch

    if not torch.cuda.is_available():
        return [[] for _ in range(replicas)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    per = int(options.get("tensor_parallel_size", 1))
    if replicas * per > len(ids):
        raise HarnessError(f"backend.replicas = {replicas} replicas of {per} GPU(s) each need {replicas * per} "
                           f"GPUs; this machine shows {len(ids)}")
    return [ids[i * per:(i + 1) * per] for i in range(replicas)]


def _start(name: str, spec, options: dict, threads: int, gpus: list[list[str]], counter) -> None:
    """Replica initializer: its own cores (vLLM binds its threads to them), its own GPUs, and its own backend."""
    global _BACKEND
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    from harness.backends import bind_list, load_backend

    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind_list(threads, first=index * threads)  # its share of our cores
    if gpus[index]:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[index])

    _BACKEND = load_backend(name, spec, threads=threads, **options)


def _generate(instructions: Sequence[str], kwargs: dict) -> list:
    be = _BACKEND
    return be.generate([be.format_prompt(x) for x in instructions], **kwargs)


def _score(instructions: Sequence[str], responses: Sequence[str]) -> list:
    be = _BACKEND
    return be.score([be.format_prompt(x) for x in instructions], responses)


def generate_chunks(name: str, spec, options: dict, replicas: int, threads: int | None,
                    jobs: Sequence[tuple[Sequence[str], dict]], on: str = "local") -> Iterator[tuple[int, Any]]:
    """(job index, completions) for each job (instructions, generate kwargs), as the replicas finish them."""
    return (_map_ray if on == "ray" else _map)(_generate, name, spec, options, replicas, threads, jobs)


def score_chunks(name: str, spec, options: dict, replicas: int, threads: int | None,
                 jobs: Sequence[tuple[Sequence[str], Sequence[str]]], on: str = "local") -> Iterator[tuple[int, Any]]:
    """(job index, per-token log-probs) for each job (instructions, responses), as the replicas finish them."""
    return (_map_ray if on == "ray" else _map)(_score, name, spec, options, replicas, threads, jobs)


def _map(fn, name: str, spec, options: dict, replicas: int, threads: int | None, jobs) -> Iterator[tuple[int, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from harness.backends import threads_per_process

    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    per = threads_per_process(threads, replicas)
    gpus = local_gpus(replicas, options)
    with ProcessPoolExecutor(replicas, mp_context=ctx, initializer=_start,
                             initargs=(name, spec, dict(options), per, gpus, counter)) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        except BrokenProcessPool:
            for f in futures:
                f.cancel()
            raise HarnessError(f"a {name} replica died (killed, or out of memory); the finished chunks are kept and "
                               "a rerun redoes the rest") from None


class _Replica:
    """One engine as a Ray actor (its own process, on whichever node Ray places it)."""

    def __init__(self, name: str, spec, options: dict, threads: int):
        global _BACKEND
        from harness.backends import load_backend

        _BACKEND = load_backend(name, spec, threads=threads, **options)

    def run(self, fn, index: int, *job):
        return index, fn(*job)


def ray_resources(replicas: int, threads: int | None, options: dict, cluster: dict) -> dict:
    """The Ray resources of one replica in ``cluster`` (ray.cluster_resources()): a GPU per tensor-parallel rank
    where the cluster has GPUs, and its CPU threads (backend.threads, else an even share of the cluster's CPUs).
    A request the cluster cannot hold is one line (Ray would leave the actors pending forever)."""
    gpus = int(options.get("tensor_parallel_size", 1)) if cluster.get("GPU", 0) > 0 else 0
    cpus = threads or max(1, int(cluster.get("CPU", 1)) // replicas)
    for kind, each in (("CPU", cpus), ("GPU", gpus)):
        if each and replicas * each > cluster.get(kind, 0):
            raise HarnessError(f"backend.replicas = {replicas} Ray replicas need {replicas * each:g} {kind}s "
                               f"({each:g} each); the Ray cluster has {cluster.get(kind, 0):g}")
    return {"num_cpus": cpus, "num_gpus": gpus}


def _map_ray(fn, name: str, spec, options: dict, replicas: int, threads: int | None,
             jobs) -> Iterator[tuple[int, Any]]:
    """``_map`` on Ray actors: the model path must be readable on every node (a shared filesystem) and harness
    installed there. Chunks go to whichever replica is free; results come back to this (the stage's) process."""
    import ray
    from ray.exceptions import RayActorError
    from ray.util import ActorPool

    if not ray.is_initialized():  # stays up for the process's later stages; Ray shuts it down at exit
        ray.init(logging_level="WARNING", configure_logging=False)
    res = ray_resources(replicas, threads, options, ray.cluster_resources())
    actor = ray.remote(_Replica).options(**res)
    actors = [actor.remote(name, spec, dict(options), res["num_cpus"]) for _ in range(replicas)]
    pool = ActorPool(actors)
    try:
        for i, job in enumerate(jobs):
            pool.submit(lambda a, v: a.run.remote(fn, *v), (i, *job))
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except RayActorError:
                raise HarnessError(f"a {name} Ray replica died (killed, node lost, or out of memory); the finished "
                                   "chunks are kept and a rerun redoes the rest") from None
    finally:  # free the replicas' resources (their models) for the next stage
        for a in actors:
            ray.kill(a)
