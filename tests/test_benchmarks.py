"""Every benchmark workload builds and its frameworks agree on the first step, so the suite
cannot rot silently (timing itself belongs to ``python -m benchmarks``, never to tests)."""

import numpy as np
import pytest

from benchmarks import all_workloads
from benchmarks._harness import _as_float, _check, import_jax, import_torch

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


def test_an_eager_floor_is_warmed_up_as_the_nodegrad_workers_are(monkeypatch):
    """A jit row's floor (nodegrad eager) runs in a worker warmed up as every nodegrad worker is
    (numba imported where installed, so eager takes its numba loops as in W1-W8), not as a bare
    NumPy floor's."""
    from benchmarks import _harness as H

    ready = []
    monkeypatch.setattr(H, "_framework_ready", ready.append)

    class Conn:  # the parent's end: one "ready" reply, then stop
        def send(self, msg):
            assert msg[0] != "error", msg

        def recv(self):
            return "stop"

        def close(self):
            pass

    settings = H.Settings(reps=1, block_s=0.001, warm_s=0.001)
    for wid, framework in (("J1", "floor"), ("W1", "floor"), ("J1", "nodegrad")):
        H._worker("benchmarks", wid, framework, settings, Conn())
    assert ready == ["nodegrad", "floor", "nodegrad"]


def _jax_agrees(w) -> None:
    values = {}
    for name in ("nodegrad", "jax"):
        data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in w.data().items()}
        step = getattr(w, name)(data)
        values[name] = _as_float(step())
        step()
    assert _check(values) == "ok", _check(values)


def test_jax_reference_column_agrees_on_j5():
    """The JAX column's step computes what nodegrad's does (skipped without jax)."""
    if import_jax() is None:
        pytest.skip("jax is not installed (pip install nodegrad[bench])")
    _jax_agrees(next(w for w in WORKLOADS if w.id == "J5"))


JAX_WORKLOADS = [w for w in WORKLOADS if w.jax is not None]


@pytest.mark.slow
@pytest.mark.parametrize("w", JAX_WORKLOADS, ids=[w.id for w in JAX_WORKLOADS])
def test_jax_reference_steps_agree(w):
    if import_jax() is None:
        pytest.skip("jax is not installed (pip install nodegrad[bench])")
    _jax_agrees(w)


@pytest.mark.slow
def test_separate_process_mode_times_jax_and_first_calls():
    from benchmarks._harness import Settings, measure_processes, table_row

    if import_jax() is None:
        pytest.skip("jax is not installed (pip install nodegrad[bench])")
    (w,) = [w for w in WORKLOADS if w.id == "J5"]
    r = measure_processes(w, Settings(reps=2, block_s=0.002, warm_s=0.01), None, import_jax())
    assert r["check"] == "ok" and r["jax"]["median"] > 0 and r["ratio_jax"] > 0
    assert r["first_call_s"]["nodegrad"] > 0 and r["first_call_s"]["jax"] > 0
    assert "J5" in table_row(r)


def test_each_block_follows_a_rewarm_of_at_least_rewarm_s():
    """A block is timed after untimed steps lasting ``rewarm_s`` (a worker woken from the
    settle's sleep runs slower for tens of milliseconds), and after ``rewarm`` steps however
    long they take."""
    import time

    from benchmarks._harness import Settings, _time_block

    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.002)

    per_step = _time_block(step, 3, Settings(rewarm=1, rewarm_s=0.03))
    assert len(calls) >= 3 + 10 and calls[-3] - calls[0] >= 0.03
    assert 0.002 <= per_step < 0.03
    calls.clear()
    _time_block(step, 2, Settings(rewarm=4, rewarm_s=0.0))
    assert len(calls) == 6


def test_median_interval_is_the_order_statistics_of_its_coverage():
    """The ratio's interval: the j-th smallest and largest of n values for the largest j whose
    binomial coverage is at least the level; none where even the extremes fall short."""
    from math import comb

    from benchmarks._harness import median_interval

    def coverage(n, j):
        return 1 - 2 * sum(comb(n, i) for i in range(j)) / 2 ** n

    assert median_interval([float(v) for v in range(15, 0, -1)]) == (4.0, 12.0)  # unsorted in
    assert median_interval(range(1, 42)) == (14, 28)
    assert median_interval(range(1, 6)) is None  # 5 values: the extremes cover 93.75 %
    for n in range(6, 60):
        lo, hi = median_interval(range(1, n + 1))
        assert hi == n + 1 - lo and coverage(n, lo) >= 0.95 > coverage(n, lo + 1)


def test_results_and_table_carry_the_ratios_interval():
    from benchmarks._harness import Workload, _summarise, table_row

    w = Workload("X1", "a workload", dict, dict)
    ng, pt = [1.0 + 0.01 * k for k in range(15)], [1.0] * 15
    r = _summarise(w, {"nodegrad": ng, "torch": pt}, {"nodegrad": 1, "torch": 1}, "ok")
    r["background_cores"] = 0.0
    assert r["ratio_torch_ci"] == (ng[3], ng[11]) and r["ratio_floor_ci"] is None
    assert "1.03-1.11" in table_row(r)


def test_suite_ids_are_unique():
    ids = [w.id for w in WORKLOADS]
    assert len(ids) == len(set(ids))


def test_e2e_script_runs_both_frameworks_from_the_same_weights(tmp_path):
    pytest.importorskip("torch")
    import json

    from benchmarks import e2e

    out = tmp_path / "runs.json"
    table = e2e.main(["--steps", "80", "--models", "logreg", "--json", str(out), "--jit"])
    assert "| logreg |" in table and "wall jit" in table
    runs = json.loads(out.read_text())["logreg"]
    assert runs["jit"][0]["accuracy"] == pytest.approx(runs["nodegrad"][0]["accuracy"], abs=0.01)
    for fw in ("nodegrad", "jit", "torch"):
        (run,) = runs[fw]
        assert run["wall"] > 0 and run["rss_mb"] > 0
        assert 0.15 < run["accuracy"] < 0.45, (fw, run)  # trained past chance (10 %)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_gpu_script_runs_every_workload_from_the_same_weights(tmp_path, device):
    """``python -m benchmarks.gpu`` (``--device cpu`` without a GPU: the small rows, GL's step
    takes seconds there): eager, jit and PyTorch steps run and start from the same loss."""
    import json

    from benchmarks import gpu

    ids = list(gpu.WORKLOADS) if device == "cuda" else ["G1", "G3"]
    out = tmp_path / "g.json"
    assert gpu.main(["--device", device, "--reps", "1", "--only", ",".join(ids),
                     "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["id"] for r in rows] == ids
    for r in rows:
        losses = [r[k]["loss"] for k in ("eager", "jit", "torch") if k in r]
        assert np.allclose(losses, losses[0], rtol=1e-4), (r["id"], losses)
        assert all(r[k]["ms"] > 0 for k in ("eager", "jit"))
