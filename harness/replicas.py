"""Data-parallel generation on one machine: a stage's chunks spread over N engine processes (``backend.replicas``).

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


def _start(name: str, spec, options: dict, threads: int, counter) -> None:
    """Replica initializer: its own cores (vLLM binds its threads to them) and its own backend."""
    global _BACKEND
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    first = index * threads
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"{first}-{first + threads - 1}"
    from harness.backends import load_backend

    _BACKEND = load_backend(name, spec, threads=threads, **options)


def _generate(instructions: Sequence[str], kwargs: dict) -> list:
    be = _BACKEND
    return be.generate([be.format_prompt(x) for x in instructions], **kwargs)


def _score(instructions: Sequence[str], responses: Sequence[str]) -> list:
    be = _BACKEND
    return be.score([be.format_prompt(x) for x in instructions], responses)


def generate_chunks(name: str, spec, options: dict, replicas: int, threads: int | None,
                    jobs: Sequence[tuple[Sequence[str], dict]]) -> Iterator[tuple[int, Any]]:
    """(job index, completions) for each job (instructions, generate kwargs), as the replicas finish them."""
    return _map(_generate, name, spec, options, replicas, threads, jobs)


def score_chunks(name: str, spec, options: dict, replicas: int, threads: int | None,
                 jobs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> Iterator[tuple[int, Any]]:
    """(job index, per-token log-probs) for each job (instructions, responses), as the replicas finish them."""
    return _map(_score, name, spec, options, replicas, threads, jobs)


def _map(fn, name: str, spec, options: dict, replicas: int, threads: int | None, jobs) -> Iterator[tuple[int, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from harness.backends import threads_per_process

    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    per = threads_per_process(threads, replicas)
    with ProcessPoolExecutor(replicas, mp_context=ctx, initializer=_start,
                             initargs=(name, spec, dict(options), per, counter)) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        except BrokenProcessPool:
            for f in futures:
                f.cancel()
            raise HarnessError(f"a {name} replica died (killed, or out of memory); the finished chunks are kept and "
                               "a rerun redoes the rest") from None
