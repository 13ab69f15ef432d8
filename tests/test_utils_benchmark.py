"""ng.utils.benchmark.Timer / Measurement: counts, positive times, statistics and torch's repr
layout (no timing assertions beyond sanity)."""

import re

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import _backend as B
from nodegrad.utils import benchmark
from nodegrad.utils.benchmark import Measurement, TaskSpec, Timer

torch = pytest.importorskip("torch")
pytest.importorskip("torch.utils.benchmark")


def _shape(r: str) -> str:
    """A repr with the object address, the numbers and their time unit taken out (a run of a
    microsecond may print in ns or us, whichever it lands on)."""
    r = re.sub(r"^<[\w.]+ object at 0x[0-9a-f]+>", "<M>", r)
    r = re.sub(r"\d+(\.\d+)? (ns|us|ms|s)\b", "N T", r)
    return re.sub(r"\d+\.\d+", "N", r)


def test_timeit_counts_and_repr_like_torch():
    x = ng.randn(8, 8)
    m = Timer("y = x @ x", globals={"x": x}).timeit(50)
    assert m.number_per_run == 50 and len(m.raw_times) == 1 and m.times[0] > 0
    assert m.mean == m.median == m.times[0] and m.iqr == 0
    ref = torch.utils.benchmark.Timer("y = x @ x", globals={"x": torch.randn(8, 8)}).timeit(50)
    assert _shape(repr(m)) == _shape(repr(ref))


def test_blocked_autorange_statistics():
    calls = []
    m = Timer("ng.exp(x)", globals={"x": ng.randn(100)}, label="exp", sub_label="100",
              description="f32").blocked_autorange(callback=lambda n, t: calls.append((n, t)),
                                                   min_run_time=0.02)
    assert len(m.times) == len(calls) >= 1 and all(t > 0 for t in m.times)
    assert all(n == m.number_per_run for n, _ in calls)
    assert sum(m.raw_times) >= 0.02
    ts = np.array(m.times)
    assert m.median == pytest.approx(np.median(ts)) and m.mean == pytest.approx(ts.mean())
    assert m.iqr == pytest.approx(np.quantile(ts, 0.75) - np.quantile(ts, 0.25))
    assert m.title == "exp: 100" and m.description == "f32"
    assert repr(m).splitlines()[1:3] == ["exp: 100", "f32"]


def test_adaptive_autorange_and_callable_stmt():
    x = ng.ones(16)
    m = Timer(lambda: x + 1).adaptive_autorange(min_run_time=0.01, max_run_time=0.5)
    assert len(m.times) >= 1 and all(t > 0 for t in m.times)
    assert m.stmt == "test_adaptive_autorange_and_callable_stmt.<locals>.<lambda>()"


def test_setup_runs_and_multiline_repr_like_torch():
    m = Timer("y = z + 1", setup="z = 3\nw = 4").timeit(10)
    ref = torch.utils.benchmark.Timer("y = z + 1", setup="z = 3\nw = 4").timeit(10)
    assert _shape(repr(m)) == _shape(repr(ref))
    m = Timer("y = 1\nq = 2", setup="z = 3").timeit(10)
    ref = torch.utils.benchmark.Timer("y = 1\nq = 2", setup="z = 3").timeit(10)
    assert _shape(repr(m)) == _shape(repr(ref))


def test_measurement_warnings_and_units():
    spec = TaskSpec("f()", "pass")
    steady = Measurement(1, [1e-3] * 8, spec)
    noisy = Measurement(1, [1e-3, 1e-3, 5e-3, 9e-3, 1e-3, 4e-3, 1e-3, 7e-3], spec)
    assert not steady.has_warnings and noisy.has_warnings
    assert "WARNING: Interquartile range" in repr(noisy)
    assert benchmark.select_unit(2e-6) == ("us", 1e-6)
    assert benchmark.select_unit(3.0) == ("s", 1.0)


def test_cpu_statement_synchronises_nothing(monkeypatch):
    t = Timer("x + 1", globals={"x": ng.ones(3)})
    assert t._gpus == ()
    seen = []
    monkeypatch.setattr(B, "cuda_synchronize", lambda i: seen.append(i))
    t._gpus = (0,)  # as if x lived on cuda:0: the clock waits for that GPU
    t.timeit(3)
    assert seen and set(seen) == {0}


def test_errors():
    with pytest.raises(TypeError, match="stmt must be Python source"):
        Timer(3)
    with pytest.raises(ValueError, match="num_threads"):
        Timer("pass", num_threads=0)
    with pytest.raises(ValueError, match="number must be a positive int"):
        Timer("pass").timeit(0)
    with pytest.raises(ValueError, match="min_run_time must be positive"):
        Timer("pass").blocked_autorange(min_run_time=0)
    with pytest.raises(NameError):
        Timer("undefined_name + 1").timeit(1)


def test_custom_timer_and_torch_only_arguments():
    ticks = iter(range(10**6))
    m = Timer("pass", timer=lambda: float(next(ticks))).timeit(5)
    assert m.raw_times == [1.0]  # one tick between the clock reads around the block
    with pytest.raises(ValueError, match="global_setup is for C"):
        Timer("pass", global_setup="int x = 1;")
    with pytest.raises(ValueError, match="only Python statements"):
        Timer("pass", language="c++")
