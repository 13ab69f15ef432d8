"""Every benchmark workload builds and its frameworks agree on the first step, so the suite
cannot rot silently (timing itself belongs to ``python -m benchmarks``, never to tests)."""

import numpy as np
import pytest

from benchmarks import all_workloads
from benchmarks._harness import _as_float, _check, import_torch

WORKLOADS = all_workloads()


@pytest.mark.parametrize("w", WORKLOADS, ids=[w.id for w in WORKLOADS])
def test_workload_runs_and_frameworks_agree(w):
    torch = import_torch()
    values = {}
    for name, make in {"nodegrad": w.nodegrad, "floor": w.floor,
                       "torch": w.torch if torch is not None else None}.items():
        if make is not None:
            data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in w.data().items()}
            step = make(data)
            values[name] = _as_float(step())
            step()  # a second step runs too (state carried between steps)
    assert values["nodegrad"] is None or np.isfinite(values["nodegrad"])
    assert _check(values) in ("ok", "-"), _check(values)


def test_separate_process_mode_times_every_framework():
    """Each framework's step is built and timed in a worker process of its own."""
    from benchmarks._harness import Settings, measure_processes

    (w,) = [w for w in WORKLOADS if w.id == "W5"]
    r = measure_processes(w, Settings(reps=2, block_s=0.002, warm_s=0.01), import_torch())
    assert r["check"] in ("ok", "-")
    assert r["nodegrad"]["reps"] == 2 and r["nodegrad"]["median"] > 0
    assert r["floor"]["median"] > 0 and r["ratio_floor"] > 0


def test_suite_ids_are_unique():
    ids = [w.id for w in WORKLOADS]
    assert len(ids) == len(set(ids))


def test_e2e_script_runs_both_frameworks_from_the_same_weights(tmp_path):
    pytest.importorskip("torch")
    import json

    from benchmarks import e2e

    out = tmp_path / "runs.json"
    table = e2e.main(["--steps", "80", "--models", "logreg", "--json", str(out)])
    assert "| logreg |" in table
    runs = json.loads(out.read_text())["logreg"]
    for fw in ("nodegrad", "torch"):
        (run,) = runs[fw]
        assert run["wall"] > 0 and run["rss_mb"] > 0
        assert 0.15 < run["accuracy"] < 0.45, (fw, run)  # trained past chance (10 %)
