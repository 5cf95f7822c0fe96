"""Stage time split: exclusive nested phases that add up to the wall time; nothing recorded outside a stage."""

import time

import pytest

from harness.timing import fmt_split, phase, stage_clock


def test_phases_are_exclusive_and_add_up_to_the_wall_time():
    t0 = time.perf_counter()
    with stage_clock() as clock:
        with phase("load"):
            time.sleep(0.05)
            with phase("write"):  # pauses "load"
                time.sleep(0.03)
            time.sleep(0.02)
        time.sleep(0.04)  # compute
        with phase("write"):
            time.sleep(0.01)
        split = clock.split()
    wall = time.perf_counter() - t0
    assert split["load"] == pytest.approx(0.07, abs=0.02)
    assert split["write"] == pytest.approx(0.04, abs=0.02)
    assert split["compute"] == pytest.approx(0.04, abs=0.02)
    assert sum(split.values()) == pytest.approx(wall, abs=0.03)
    assert fmt_split({"write": 1.0, "load": 3.14, "compute": 80.0, "reference": 0.01, "judge": 2.0}) == \
        "load 3.1 · judge 2.0 · compute 80.0 · write 1.0"  # fixed order, tiny phases left out


def test_a_phase_outside_a_stage_records_nothing():
    with phase("load"):
        pass
    with stage_clock() as clock:
        split = clock.split()
    assert set(split) == {"compute"}


def test_an_exception_inside_a_phase_leaves_the_clock_consistent():
    with stage_clock() as clock:
        with pytest.raises(ValueError):
            with phase("load"):
                raise ValueError("x")
        with phase("write"):
            pass
        assert set(clock.split()) == {"load", "write", "compute"}
