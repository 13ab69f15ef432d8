"""The profiler: counts, nesting, the table, the Chrome trace, schedules, and that the hooks it
puts in come out again exactly. No assertion reads a time's value, only order and consistency."""

import json
import threading
import warnings

import pytest

import nodegrad as ng
from nodegrad import _backend as B
from nodegrad import autodiff
from nodegrad.jit.api import Jitted
from nodegrad.optim import base as optim_base
from nodegrad.primitive import REGISTRY
from nodegrad.profiler import ProfilerAction, ProfilerActivity, profile, record_function, schedule
from nodegrad.profiler import instrument

np = B.np


def _state():
    """Everything a profile changes while it runs, by identity."""
    return ({name: p.fwd for name, p in REGISTRY.items()}, autodiff._apply_vjps,
            Jitted.__dict__["__call__"], list(optim_base._global_step_pre_hooks),
            list(optim_base._global_step_post_hooks), instrument.ACTIVE)


def _same(a, b) -> bool:
    fa, *ra = a
    fb, *rb = b
    return (fa.keys() == fb.keys() and all(fa[k] is fb[k] for k in fa)
            and all(x is y if not isinstance(x, list) else
                    len(x) == len(y) and all(p is q for p, q in zip(x, y))
                    for x, y in zip(ra, rb)))


def _mlp_inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = ng.tensor(rng.standard_normal((8, 5)).astype("float32"))
    ws = [ng.tensor(rng.standard_normal(s).astype("float32"), requires_grad=True)
          for s in ((5, 6), (6, 6), (6, 3))]
    return x, ws


def _three_matmuls(x, ws):
    h = (x @ ws[0]).relu()
    h = (h @ ws[1]).relu()
    return (h @ ws[2]).sum()


def _inside(e, kind) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.kind == kind:
            return True
        p = p.cpu_parent
    return False


def _counts(events):
    return {a.key: a.count for a in events.key_averages()}


def test_counts_match_the_ops_run():
    x, ws = _mlp_inputs()
    with profile() as prof:
        _three_matmuls(x, ws).backward()
    ev = prof.events()
    fwd = [e for e in ev if e.name == "matmul" and not _inside(e, "backward")]
    assert len(fwd) == 3
    c = _counts(ev)
    assert c["matmul_backward"] == 3
    assert c["relu_backward"] == 2
    assert c["sum_backward"] == 1
    assert all(e.kind == "backward" for e in ev if e.name.endswith("_backward"))


def test_backward_nodes_match_pytorch():
    torch = pytest.importorskip("torch")
    x, ws = _mlp_inputs()
    with profile() as prof:
        _three_matmuls(x, ws).backward()
    ours = sorted(a.count for a in prof.key_averages() if a.key.endswith("_backward"))
    tx = torch.tensor(x.numpy())
    tws = [torch.tensor(w.numpy(), requires_grad=True) for w in ws]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
            h = (tx @ tws[0]).relu()
            h = (h @ tws[1]).relu()
            (h @ tws[2]).sum().backward()
    theirs = sorted(a.count for a in tp.key_averages()
                    if a.key.startswith("autograd::engine::evaluate_function: ")
                    and "Backward" in a.key)
    assert ours == theirs  # Mm x3, Relu x2, Sum x1


def test_nested_ranges_self_and_total_are_consistent():
    x, ws = _mlp_inputs()
    with profile() as prof:
        with record_function("outer"):
            with record_function("inner"):
                y = _three_matmuls(x, ws)
            y.backward()
    ev = prof.events()
    outer = next(e for e in ev if e.name == "outer")
    inner = next(e for e in ev if e.name == "inner")
    assert inner.cpu_parent is outer and inner in outer.cpu_children
    assert outer.start_us <= inner.start_us <= inner.end_us <= outer.end_us
    assert outer.cpu_time_total >= inner.cpu_time_total >= inner.self_cpu_time_total >= 0
    kids = sum(k.cpu_time_total for k in outer.cpu_children)
    assert outer.self_cpu_time_total == pytest.approx(outer.cpu_time_total - kids)
    for e in ev:
        assert e.self_cpu_time_total >= -1e-6
        assert e.start_us <= e.end_us
        if e.cpu_parent is not None:
            p = e.cpu_parent
            assert p.start_us <= e.start_us and e.end_us <= p.end_us
    # the self times add up to the time the top-level ranges cover
    top = sum(e.cpu_time_total for e in ev if e.cpu_parent is None)
    assert ev.self_cpu_time_total == pytest.approx(top, rel=1e-9, abs=1e-3)
    assert all(e.cpu_parent is inner for e in ev if e.name == "matmul" and
               not _inside(e, "backward"))
    avg = {a.key: a for a in prof.key_averages()}
    assert avg["outer"].cpu_time_total >= avg["inner"].cpu_time_total
    total = prof.key_averages().total_average()
    assert total.self_cpu_time_total == pytest.approx(ev.self_cpu_time_total)


def test_record_function_as_decorator_and_outside_a_profile():
    @record_function("block")
    def f(x, depth):
        return f(x, depth - 1) + 1 if depth else x * 2

    x = ng.ones(3)
    assert np.array_equal(f(x, 0).numpy(), [2, 2, 2])  # no profile: plain call
    with profile() as prof:
        f(x, 2)
        f(x, 0)
    ev = prof.events()
    blocks = [e for e in ev if e.name == "block"]
    assert len(blocks) == 4
    assert sum(e.cpu_parent is None for e in blocks) == 2  # the recursion nests
    assert all(e.is_user_annotation for e in blocks)
    with pytest.raises(TypeError, match="record_function: name must be a str"):
        record_function(3)


def test_table_names_columns_and_order():
    x, ws = _mlp_inputs()
    with profile(record_shapes=True, profile_memory=True) as prof:
        with record_function("forward"):
            y = _three_matmuls(x, ws)
        y.backward()
    avgs = prof.key_averages()
    text = avgs.table(sort_by="self_cpu_time_total", row_limit=100)
    for col in ("Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg",
                "# of Calls", "CPU Mem", "Self CPU Mem"):
        assert col in text
    assert "Self CPU time total:" in text
    lines = text.splitlines()
    rows = lines[3:lines.index(lines[0], 3)]
    names = [r.split()[0] for r in rows]
    want = sorted(avgs, key=lambda a: a.self_cpu_time_total, reverse=True)
    assert names == [a.key for a in want]
    assert {"matmul", "matmul_backward", "forward"} <= set(names)
    short = avgs.table(sort_by="count", row_limit=2).splitlines()
    assert len(short) == 3 + 2 + 2  # header, two rows, rule and total
    counts = [int(r.split()[-1]) for r in short[3:5]]
    assert counts == sorted(counts, reverse=True)
    by_shape = prof.key_averages(group_by_input_shape=True)
    assert "Input Shapes" not in text and "Input Shapes" in by_shape.table()
    mm = [a for a in by_shape if a.key == "matmul"]
    assert sorted(map(str, (a.input_shapes for a in mm))) == sorted(
        ["[[8, 5], [5, 6]]", "[[8, 6], [6, 6]]", "[[8, 6], [6, 3]]"])
    assert all(a.count == 1 for a in mm)
    with pytest.raises(ValueError, match="unknown sort_by 'bogus'"):
        avgs.table(sort_by="bogus")


def test_table_columns_follow_the_options():
    x, ws = _mlp_inputs()
    with profile() as prof:
        _three_matmuls(x, ws)
    text = prof.key_averages().table()
    assert "Input Shapes" not in text and "CPU Mem" not in text and "# of Calls" in text


def test_memory_is_the_outputs_bytes():
    a = ng.ones((16, 8))
    b = ng.ones((8, 4))
    with profile(profile_memory=True) as prof:
        with record_function("r"):
            a @ b
    ev = prof.events()
    mm = next(e for e in ev if e.name == "matmul")
    r = next(e for e in ev if e.name == "r")
    assert mm.self_cpu_memory_usage == 16 * 4 * 4
    assert r.self_cpu_memory_usage == 0 and r.cpu_memory_usage == mm.cpu_memory_usage


def test_chrome_trace_is_json_with_the_events(tmp_path):
    x, ws = _mlp_inputs()
    with profile(record_shapes=True) as prof:
        with record_function("forward"):
            y = _three_matmuls(x, ws)
        y.backward()
    path = tmp_path / "trace.json"
    path.write_text("old")
    prof.export_chrome_trace(path)
    data = json.loads(path.read_text())
    xs = [t for t in data["traceEvents"] if t["ph"] == "X"]
    assert sorted(t["name"] for t in xs) == sorted(e.name for e in prof.events())
    for t in xs:
        assert t["dur"] >= 0 and isinstance(t["ts"], float | int)
    fw = next(t for t in xs if t["name"] == "forward")
    assert fw["cat"] == "user_annotation"
    mm = [t for t in xs if t["name"] == "matmul"]
    assert all("Input Dims" in t["args"] for t in mm)
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]  # no temporary left


def test_chrome_trace_failure_leaves_the_old_file(tmp_path, monkeypatch):
    with profile() as prof:
        ng.ones(2) + 1
    path = tmp_path / "trace.json"
    path.write_text("old")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken)
    with pytest.raises(OSError, match="disk full"):
        prof.export_chrome_trace(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="export_chrome_trace: folder"):
        prof.export_chrome_trace(tmp_path / "missing" / "t.json")
    with pytest.raises(TypeError, match="not their averages"):
        prof.key_averages().export_chrome_trace(path)


def test_hooks_are_restored_exactly():
    before = _state()
    with profile():
        during = _state()
        assert REGISTRY["matmul"].fwd is not before[0]["matmul"]
        assert REGISTRY["matmul"].fwd.__wrapped__ is before[0]["matmul"]
        assert during[1] is not before[1]
    assert _same(_state(), before)
    assert not instrument.installed()


def test_exception_inside_restores():
    before = _state()
    x, ws = _mlp_inputs()
    with pytest.raises(ZeroDivisionError):
        with profile() as prof:
            with record_function("failing"):
                _three_matmuls(x, ws).backward()
                1 / 0
    assert _same(_state(), before)
    failing = next(e for e in prof.events() if e.name == "failing")
    assert failing.end_us is not None and failing.cpu_time_total >= 0

    def bad_handler(p):
        raise RuntimeError("handler")

    with pytest.raises(RuntimeError, match="handler"):
        with profile(on_trace_ready=bad_handler):
            ng.ones(2) * 2
    assert _same(_state(), before)


def test_an_op_that_raises_is_still_closed():
    with profile() as prof:
        with pytest.raises(ng.ShapeError):
            ng.ones((2, 3)) @ ng.ones((2, 3))
    mm = [e for e in prof.events() if e.name == "matmul"]
    assert len(mm) == 1 and mm[0].end_us is not None


def test_nested_profiles_share_the_install():
    before = _state()
    x = ng.ones((4, 4))
    with profile() as outer:
        with profile() as inner:
            x @ x
        assert instrument.installed()
        x @ x  # only the outer one sees this
    assert _same(_state(), before)
    assert _counts(inner.events())["matmul"] == 1
    assert _counts(outer.events())["matmul"] == 2


def test_profiles_in_threads_keep_the_registry_whole():
    before = _state()
    results, errors = {}, []
    barrier = threading.Barrier(3)

    def work(k):
        try:
            x = ng.ones((4, 4), requires_grad=True)
            barrier.wait(timeout=30)
            with profile() as prof:
                for _ in range(5):
                    (x @ x).sum().backward()
            results[k] = prof
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 3
    assert _same(_state(), before)
    for prof in results.values():
        c = _counts(prof.events())
        assert c["matmul"] >= 5 and c["matmul_backward"] >= 5
        for e in prof.events():  # a range's parent ran on its thread
            assert e.cpu_parent is None or e.cpu_parent.thread == e.thread


def test_ranges_on_another_thread_nest_there():
    x = ng.ones((3, 3))

    def work():
        with record_function("worker"):
            x @ x

    with profile() as prof:
        with record_function("main"):
            t = threading.Thread(target=work)
            t.start()
            t.join(timeout=30)
    ev = prof.events()
    worker = next(e for e in ev if e.name == "worker")
    main = next(e for e in ev if e.name == "main")
    assert worker.cpu_parent is None and worker.thread != main.thread
    assert next(e for e in ev if e.name == "matmul").cpu_parent is worker


def test_schedule_matches_pytorch():
    torch = pytest.importorskip("torch")
    for kw in ({"wait": 1, "warmup": 1, "active": 2, "repeat": 1},
               {"wait": 0, "warmup": 2, "active": 1, "repeat": 0, "skip_first": 3},
               {"wait": 2, "warmup": 0, "active": 3, "repeat": 2}):
        ours = schedule(**kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = torch.profiler.schedule(**kw)
        assert [ours(s).name for s in range(20)] == [theirs(s).name for s in range(20)]
    with pytest.raises(ValueError, match="schedule: active must be an int >= 1"):
        schedule(wait=0, warmup=0, active=0)
    with pytest.raises(ValueError, match="schedule: wait must be an int >= 0"):
        schedule(wait=-1, warmup=0, active=1)


def test_schedule_records_only_active_steps():
    ready = []
    x = ng.ones((3, 3))
    sched = schedule(wait=1, warmup=1, active=2, repeat=1)
    with profile(schedule=sched, on_trace_ready=ready.append) as prof:
        for i in range(6):
            with record_function(f"it{i}"):
                x @ x
            prof.step()
    assert ready == [prof]  # one cycle, handed over once
    names = {e.name for e in prof.events()}
    assert {"it2", "it3", "ProfilerStep#2", "ProfilerStep#3"} <= names
    assert not names & {"it0", "it1", "it4", "it5", "ProfilerStep#0", "ProfilerStep#1"}
    assert _counts(prof.events())["matmul"] == 2
    it2 = next(e for e in prof.events() if e.name == "it2")
    assert it2.cpu_parent.name == "ProfilerStep#2"


def test_schedule_repeats_and_hands_over_each_cycle():
    seen = []
    sched = schedule(wait=0, warmup=0, active=1, repeat=0)
    with profile(schedule=sched,
                 on_trace_ready=lambda p: seen.append(sorted(
                     e.name for e in p.events() if e.name.startswith("s")))) as prof:
        for i in range(3):
            with record_function(f"s{i}"):
                pass
            prof.step()
    assert seen[:3] == [["s0"], ["s1"], ["s2"]]


def test_bad_use_is_refused():
    with pytest.raises(TypeError, match="profile: activities must be ProfilerActivity"):
        profile(activities=["cpu"])
    with pytest.raises(TypeError, match="profile: schedule must be callable"):
        profile(schedule=3)
    p = profile()
    with pytest.raises(RuntimeError, match="profile.step: the profile is not running"):
        p.step()
    with p:
        with pytest.raises(RuntimeError, match="still under way"):
            p.events()
        with pytest.raises(RuntimeError, match="already running"):
            p.start()
    with pytest.raises(TypeError, match="must return a ProfilerAction"):
        with profile(schedule=lambda step: "record"):
            pass
    assert not instrument.installed()


def test_cuda_activity_without_a_gpu_warns():
    if B.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        p = profile(activities=[ProfilerActivity.CUDA])
    with p:
        ng.ones(2) + 1
    assert _counts(p.events())["add"] == 1
    assert ProfilerActivity.CUDA not in ng.profiler.supported_activities()


def test_with_stack_names_the_caller():
    with profile(with_stack=True) as prof:
        ng.ones(2) * 3
    mul = next(e for e in prof.events() if e.name == "multiply")
    assert mul.stack and "test_profiler.py" in mul.stack[0]
    assert "Source Location" in prof.key_averages(group_by_stack_n=1).table()


def test_jitted_step_shows_as_one_range():
    w = ng.ones((4, 4), requires_grad=True)

    @ng.jit
    def step(x):
        return (x @ w).sum()

    x = ng.ones((2, 4))
    step(x)  # traced here, outside the profile
    step(x)
    with profile() as prof:
        step(x)
    c = _counts(prof.events())
    assert c.get("jit#step") == 1
    assert "matmul" not in c  # the replay runs its captured program, not the ops


def test_a_step_traced_during_a_profile_replays_its_own_forwards():
    w = ng.ones((4, 4), requires_grad=True)

    @ng.jit
    def step(x):
        return (x @ w).sum()

    x = ng.ones((2, 4))
    with profile():
        step(x)  # traced while the timing wrappers are in
    with profile() as prof:
        step(x)
    c = _counts(prof.events())
    assert c.get("jit#step") == 1 and "matmul" not in c  # no wrapper left in the program


def test_autograd_profiler_alias():
    assert ng.autograd.profiler.record_function is record_function
    x = ng.ones((3, 3), requires_grad=True)
    with ng.autograd.profiler.profile(record_shapes=True) as prof:
        (x @ x).sum().backward()
    assert {"matmul", "matmul_backward"} <= {e.name for e in prof.function_events}
    assert "matmul" in prof.key_averages().table(sort_by="cpu_time_total")
    assert "matmul" in prof.table()
    before = _state()
    with ng.autograd.profiler.profile(enabled=False) as off:
        assert not instrument.installed()
        x @ x
    assert len(off.function_events) == 0 and _same(_state(), before)
    with pytest.raises(ValueError, match="use_device must be"):
        ng.autograd.profiler.profile(use_device="tpu")


def test_mnist1d_mlp_training_step():
    from nodegrad.models.mnist1d import MLP

    try:
        data = ng.data.datasets.mnist1d()
    except ImportError:  # neither cached nor the generator installed
        pytest.skip("MNIST-1D needs the mnist1d package")
    x = ng.tensor(data.x_train[:32])
    y = ng.tensor(data.y_train[:32])
    ng.manual_seed(0)
    model = MLP()
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    before = _state()
    with profile(record_shapes=True, profile_memory=True) as prof:
        with record_function("train_step"):
            opt.zero_grad()
            loss = ng.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    assert _same(_state(), before)
    ev = prof.events()
    step = next(e for e in ev if e.name == "Optimizer.step#Adam.step")
    assert step.cpu_parent.name == "train_step"
    backward = [e for e in ev if e.kind == "backward"]
    assert backward and all(e.cpu_parent.name == "train_step" for e in backward
                            if not _inside(e, "backward"))
    top = [e for e in ev if e.cpu_parent is None]
    assert [e.name for e in top] == ["train_step"]
    assert np.isfinite(loss.item())
    text = prof.key_averages().table(row_limit=10)
    assert "Optimizer.step#Adam.step" in prof.key_averages().table(row_limit=0)
    assert "train_step" in text
    # one node per differentiable op recorded in forward: the backward ranges match them
    fwd_ops = [e for e in ev if e.kind == "op" and not _inside(e, "backward")
               and not _inside(e, "optimizer")]
    assert len(backward) <= len(fwd_ops)


def test_profiler_action_values():
    assert {a.name for a in ProfilerAction} == {"NONE", "WARMUP", "RECORD", "RECORD_AND_SAVE"}


def test_cuda_activity_times_device_ops(cuda):
    a = ng.ones((8, 8), device=cuda, requires_grad=True)
    h = ng.ones((8, 8))
    assert ProfilerActivity.CUDA in ng.profiler.supported_activities()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        (a @ a).sum().backward()
        h @ h
    ev = prof.events()
    dev = [e for e in ev if e.name == "matmul" and e.device_time_total > 0]
    assert dev, "device ops carry a device time"
    for e in ev:
        assert 0 <= e.device_time_total <= e.cpu_time_total + 1e-6
    host = [e for e in ev if e.name == "matmul" and e.device_time_total == 0]
    assert len(host) == 1  # the NumPy one
    text = prof.key_averages().table(sort_by="self_cuda_time_total")
    assert "Self CUDA" in text and "CUDA total" in text
