"""DataLoader worker processes: batches bit for bit equal to the main process's, seeding,
get_worker_info, IterableDataset splitting (against PyTorch), errors, dead and slow workers,
shutdown without leftover processes, resume, in_order, the option checks and DistributedSampler.

The worker processes import this module to unpickle its datasets, so it imports only what they
have already loaded (NumPy, nodegrad); pytest and torch are imported inside the tests. Every
test runs under an alarm (pytest-timeout is not a dependency), and the loaders that could wait
on a worker pass ``timeout=``.
"""

import gc
import os
import pathlib
import random
import signal
import sys
import threading
import time

import numpy as np

import nodegrad as ng
from nodegrad.data import (
    ArrayDataset,
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    default_collate,
    default_convert,
    get_worker_info,
)
from nodegrad.data.augment import GaussianNoise

LIMIT = 20  # seconds any one test may take before its alarm fails it
WAIT = 10  # seconds a loader waits for a batch (a hang fails, it does not block the suite)


LINUX = sys.platform.startswith("linux")  # /proc, SIGKILL and the forkserver default


def _alarm_works():
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


def setup_function(function):
    if _alarm_works():
        def expired(signum, frame):
            raise TimeoutError(f"{function.__name__} ran past {LIMIT} s")

        signal.signal(signal.SIGALRM, expired)
        signal.alarm(LIMIT)


def teardown_function(function):
    if _alarm_works():
        signal.alarm(0)


# --- datasets the workers unpickle (module level) -------------------------------------------
def _ds(n=103, d=3):
    x = np.arange(n * d, dtype=np.float64).reshape(n, d)
    return ArrayDataset(x, np.arange(n) % 5, classes=5)


class _Plain:
    """A map-style dataset without gather: sample i is (float vector, int, str)."""

    def __len__(self):
        return 37

    def __getitem__(self, i):
        return np.full(2, i, dtype=np.float32), i, f"s{i}"


class _Noisy:
    """Samples that draw from the global random states the workers seed."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return np.float64(np.random.random()), np.float64(random.random()), \
            np.float64(ng.rand(()).item())


class _WhoAmI:
    """Sample i says which worker made it: (i, worker id, num_workers, seed, pid, init mark)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        info = get_worker_info()
        return (i, info.id, info.num_workers, info.seed % 2**31, os.getpid(), _MARK[0],
                int(isinstance(info.dataset, _WhoAmI)))


_MARK = [-1]


def _mark_worker(worker_id):
    _MARK[0] = 100 + worker_id


def _failing_init(worker_id):
    raise ValueError(f"init of worker {worker_id} refuses")


class _Failing:
    """Index 7 raises a ValueError, index 13 a KeyError; the traceback names __getitem__."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        if i == 7:
            raise ValueError("sample 7 is broken")
        if i == 13:
            raise KeyError(i)
        return np.float64(i)


class _Killing:
    """Index 5 kills its worker (as the out-of-memory killer would)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        if i == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.float64(i)


class _Slow:
    """Index ``slow`` sleeps ``secs`` seconds; the others return at once."""

    def __init__(self, slow=0, secs=30.0):
        self.slow, self.secs = slow, secs

    def __len__(self):
        return 16

    def __getitem__(self, i):
        if i == self.slow:
            time.sleep(self.secs)
        return np.float64(i), os.getpid()


class _Split(IterableDataset):
    """0..n-1, each worker reading every num_workers-th from its id (PyTorch's recipe)."""

    def __init__(self, n=23):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        lo, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(lo, self.n, step):
            yield np.float64(i), i


class _Unsplit(IterableDataset):
    """0..n-1 in every worker: it ignores the worker info, so workers duplicate it."""

    def __init__(self, n=10):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield np.float64(i), i


def _fields(loader):
    """Every field of every batch of one epoch as NumPy arrays."""
    return [[f.numpy() for f in b] for b in loader]


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert len(u) == len(v)
        for p, q in zip(u, v):
            assert p.dtype == q.dtype and p.shape == q.shape
            assert p.tobytes() == q.tobytes()  # bit for bit


def _alive(pid):
    """Whether process ``pid`` still exists (running, or a zombie nobody reaped)."""
    return pathlib.Path(f"/proc/{pid}").exists()


def _all_gone(pids, within=5.0):
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not any(_alive(p) for p in pids)


# --- batches -----------------------------------------------------------------------------------
def test_worker_batches_equal_main_process_batches_bit_for_bit():
    aug = GaussianNoise(0.5)  # seeded per batch: the workers must draw what the caller draws
    for kw in (dict(batch_size=10, shuffle=True, seed=3, transform=aug),
               dict(batch_size=8, shuffle=True, seed=4, drop_last=True, transform=aug),
               dict(batch_size=16, sampler=RandomSampler(_ds(), generator=ng.Generator(seed=1))),
               dict(batch_sampler=BatchSampler(range(103), 9, False))):
        main = DataLoader(_ds(), **kw)
        ref = [_fields(main) for _ in range(2)]
        for workers in (1, 3) if "transform" in kw else (2,):
            if "sampler" in kw:  # a fresh sampler drawing the same seeds
                kw["sampler"] = RandomSampler(_ds(), generator=ng.Generator(seed=1))
            loader = DataLoader(_ds(), num_workers=workers, persistent_workers=workers > 1,
                                timeout=WAIT, **kw)
            for epoch in range(2):
                _same(_fields(loader), ref[epoch])


def test_sample_by_sample_and_unbatched_reading_in_workers():
    plain = list(DataLoader(_Plain(), 6, shuffle=True, seed=2))
    got = list(DataLoader(_Plain(), 6, shuffle=True, seed=2, num_workers=2, timeout=WAIT))
    assert len(got) == len(plain) == 7
    for (x, i, s), (x2, i2, s2) in zip(plain, got):
        assert x.numpy().tobytes() == x2.numpy().tobytes() and i.dtype == i2.dtype == ng.int64
        assert i.numpy().tolist() == i2.numpy().tolist() and s == s2
    a = list(DataLoader(_Plain(), None, collate_fn=default_convert))
    b = list(DataLoader(_Plain(), None, collate_fn=default_convert, num_workers=2,
                        timeout=WAIT))
    assert [int(u[1]) for u in a] == [int(u[1]) for u in b] == list(range(37))
    assert all(u[0].numpy().tobytes() == v[0].numpy().tobytes() for u, v in zip(a, b))
    c = list(DataLoader(_Plain(), 5, collate_fn=default_collate, num_workers=2, timeout=WAIT))
    assert c[0][0].dtype == ng.float32 and c[0][2] == ("s0", "s1", "s2", "s3", "s4")


def test_prefetch_thread_over_workers_on_a_cuda_device(cuda):
    aug = GaussianNoise(0.1)
    cpu = _fields(DataLoader(_ds(), 10, shuffle=True, seed=3, transform=aug))
    gpu = DataLoader(_ds(), 10, shuffle=True, seed=3, transform=aug, device=cuda,
                     num_workers=2, pin_memory=True, timeout=WAIT)
    assert gpu.prefetch == 2  # a thread uploads what the workers made
    _same(_fields(gpu), cpu)


def test_pin_memory_is_accepted_and_changes_nothing_on_the_cpu():
    ref = _fields(DataLoader(_ds(), 10, shuffle=True, seed=0))
    _same(_fields(DataLoader(_ds(), 10, shuffle=True, seed=0, pin_memory=True,
                             pin_memory_device="cuda")), ref)
    _same(_fields(DataLoader(_ds(), 10, shuffle=True, seed=0, pin_memory=True, num_workers=2,
                             timeout=WAIT)), ref)


# --- seeding and worker info -------------------------------------------------------------------
def test_worker_random_state_is_seeded_from_the_loader_seed():
    def run(seed, **kw):
        return _fields(DataLoader(_Noisy(), 4, seed=seed, num_workers=2, timeout=WAIT, **kw))

    a, b = run(5), run(5)
    _same(a, b)  # numpy's, Python's and nodegrad's global streams, all reproducible
    assert not np.array_equal(np.concatenate([u[0] for u in a]),
                              np.concatenate([u[0] for u in run(6)]))
    draws = np.concatenate([u[0] for u in a])
    assert len(np.unique(draws)) == len(draws)  # the two workers do not repeat each other
    _same(run(5, persistent_workers=True), a)  # reseeded per epoch: the same first epoch
    loader = DataLoader(_Noisy(), 4, seed=5, num_workers=2, timeout=WAIT)
    e0, e1 = _fields(loader), _fields(loader)
    assert not np.array_equal(e0[0][0], e1[0][0])  # a fresh stream every epoch


def test_get_worker_info_and_worker_init_fn():
    assert get_worker_info() is None
    loader = DataLoader(_WhoAmI(), 3, num_workers=2, seed=9, worker_init_fn=_mark_worker,
                        timeout=WAIT)
    rows = np.concatenate([np.stack([f.numpy() for f in b], 1) for b in loader])
    i, wid, n, seed, pid, mark, own = rows.T
    assert i.tolist() == list(range(12))
    assert wid.tolist() == [0, 0, 0, 1, 1, 1] * 2  # batch b from worker b % 2
    assert set(n.tolist()) == {2} and set(own.tolist()) == {1}
    assert (mark == 100 + wid).all()  # worker_init_fn(worker_id) ran in each worker
    assert len(set(pid.tolist())) == 2 and os.getpid() not in pid
    assert len(set(seed[wid == 0].tolist())) == 1 and set(seed[wid == 0]) != set(seed[wid == 1])


# --- iterable datasets ---------------------------------------------------------------------------
def test_iterable_dataset_is_split_by_worker_info_as_in_torch():
    import torch

    class TorchSplit(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            yield from range(info.id, 23, info.num_workers)

    for workers, size, drop in ((2, 4, False), (3, 3, True)):
        theirs = [b.tolist() for b in torch.utils.data.DataLoader(
            TorchSplit(), batch_size=size, drop_last=drop, num_workers=workers, timeout=WAIT)]
        ours = [b[1].numpy().tolist() for b in DataLoader(
            _Split(), size, drop_last=drop, num_workers=workers, timeout=WAIT)]
        assert ours == theirs
    main = _fields(DataLoader(_Split(), 5, transform=GaussianNoise(1.0), seed=1))
    _same(_fields(DataLoader(_Split(), 5, transform=GaussianNoise(1.0), seed=1, num_workers=1,
                             timeout=WAIT)), main)  # one worker: the caller's batches


def test_an_iterable_dataset_ignoring_worker_info_is_duplicated():
    got = [i for b in DataLoader(_Unsplit(10), 4, num_workers=3, timeout=WAIT)
           for i in b[1].numpy().tolist()]
    assert sorted(got) == sorted(list(range(10)) * 3)


# --- errors, dead and slow workers, shutdown -----------------------------------------------------
def test_an_exception_in_a_worker_names_the_worker_and_carries_its_traceback():
    import pytest

    with pytest.raises(ValueError, match=r"worker process 1") as e:
        list(DataLoader(_Failing(), 4, num_workers=2, timeout=WAIT))  # index 7: batch 1
    assert "sample 7 is broken" in str(e.value) and "__getitem__" in str(e.value)
    assert "Original Traceback" in str(e.value)
    with pytest.raises(KeyError, match=r"(?s)worker process 0 .*KeyError: 13"):
        list(DataLoader(_Failing(), 4, num_workers=2, timeout=WAIT, sampler=[12, 13, 0, 1]))
    with pytest.raises(ValueError, match=r"(?s)worker process \d in worker_init_fn.*refuses"):
        list(DataLoader(_ds(), 10, num_workers=2, worker_init_fn=_failing_init,
                        timeout=WAIT))


def test_a_killed_worker_raises_instead_of_hanging():
    import pytest

    from nodegrad.data.worker import WorkerError

    if not LINUX:
        pytest.skip("SIGKILL and the exit status as on Linux")

    t = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker 1 \(pid \d+\) exited unexpectedly.*SIGKILL"):
        list(DataLoader(_Killing(), 4, num_workers=2))  # no timeout: noticed anyway
    assert time.monotonic() - t < 8


def test_timeout_raises_when_a_worker_does_not_deliver():
    import pytest

    from nodegrad.data.worker import WorkerError

    t = time.monotonic()
    with pytest.raises(WorkerError, match=r"timed out after 1.0 seconds.*batch 0 \(worker 0"):
        list(DataLoader(_Slow(slow=0, secs=30), 2, num_workers=2, timeout=1.0))
    assert time.monotonic() - t < 8  # the sleeping worker was terminated, not waited for


def test_workers_end_with_the_epoch_the_iterator_or_the_loader():
    import pytest

    if not LINUX:
        pytest.skip("reads /proc")

    def pids_of(batches):
        return {int(p) for b in batches for p in b[1].numpy()}

    loader = DataLoader(_Slow(slow=-1), 2, num_workers=2, timeout=WAIT)
    pids = pids_of(loader)  # exhausted
    assert len(pids) == 2 and _all_gone(pids)
    it = iter(loader)
    pids = pids_of([next(it), next(it)])
    del it  # an iterator dropped mid-epoch (collected)
    gc.collect()
    assert len(pids) == 2 and _all_gone(pids)
    for b in loader:  # a loop left early
        pids = pids_of([b])
        break
    assert _all_gone(pids)
    loader = DataLoader(_Slow(slow=-1), 2, num_workers=2, persistent_workers=True,
                        timeout=WAIT)
    first, second = pids_of(loader), pids_of(loader)
    assert first == second and all(_alive(p) for p in first)  # kept between epochs
    it = iter(loader)
    next(it)
    next(iter(loader))  # a second iteration takes the persistent workers over
    with pytest.raises(RuntimeError, match="newer iteration"):
        next(it)
    assert pids_of(loader) == first  # the workers outlive the superseded iterator
    del it, loader
    gc.collect()
    assert _all_gone(first)


# --- resume and in_order -------------------------------------------------------------------------
def test_mid_epoch_resume_with_workers():
    import pytest

    aug = GaussianNoise(0.5)
    ref = DataLoader(_ds(), 10, shuffle=True, seed=11, transform=aug)
    _fields(ref)
    full = _fields(ref)  # epoch 1
    loader = DataLoader(_ds(), 10, shuffle=True, seed=11, transform=aug, num_workers=2,
                        timeout=WAIT)
    _fields(loader)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    del it
    assert state["epoch"] == 1 and state["batch"] == 4
    for workers in (0, 3):
        fresh = DataLoader(_ds(), 10, shuffle=True, seed=1, transform=aug,
                           num_workers=workers, timeout=WAIT if workers else 0)
        fresh.load_state_dict(state)
        _same(_fields(fresh), full[4:])
    # a stream: each worker skips its own batches already handed out
    ref = _fields(DataLoader(_Split(), 3, num_workers=2, timeout=WAIT))
    loader = DataLoader(_Split(), 3, num_workers=2, timeout=WAIT)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    del it
    assert state["workers"] == {"num_workers": 2, "batches": [2, 1]}
    fresh = DataLoader(_Split(), 3, num_workers=2, timeout=WAIT)
    fresh.load_state_dict(state)
    _same(_fields(fresh), ref[3:])
    with pytest.raises(ValueError, match="num_workers is 3 here but 2"):
        DataLoader(_Split(), 3, num_workers=3).load_state_dict(state)


def test_in_order_false_does_not_wait_for_a_slow_batch_and_resumes_exactly():
    slow = _Slow(slow=0, secs=1.5)  # batch 0 (worker 0) takes 1.5 s
    loader = DataLoader(slow, 2, num_workers=2, in_order=False, timeout=WAIT)
    it = iter(loader)
    first = [int(next(it)[0].numpy()[0]) // 2 for _ in range(3)]
    assert 0 not in first  # the other worker's batches came first
    state = loader.state_dict()
    assert state["batch"] == 0 and state["ahead"] == sorted(first)
    del it
    rest = DataLoader(_Slow(slow=-1), 2, num_workers=2, in_order=False, timeout=WAIT)
    rest.load_state_dict(state)
    got = [int(b[0].numpy()[0]) // 2 for b in rest]
    assert sorted(got + first) == list(range(8))  # each batch of the epoch once
    main = DataLoader(_Slow(slow=-1), 2)
    main.load_state_dict(state)  # the caller skips them too
    assert sorted(int(b[0].numpy()[0]) // 2 for b in main) == sorted(got)


# --- start methods and option checks -------------------------------------------------------------
def test_start_methods_and_unpicklable_arguments():
    import pytest

    ref = _fields(DataLoader(_ds(), 10, shuffle=True, seed=0, transform=GaussianNoise(0.2)))
    loader = DataLoader(_ds(), 10, shuffle=True, seed=0, num_workers=2, timeout=WAIT,
                        transform=lambda x, rng: GaussianNoise(0.2)(x, rng=rng),
                        multiprocessing_context="fork")  # fork needs no pickling
    assert loader.multiprocessing_context.get_start_method() == "fork"
    _same(_fields(loader), ref)
    default = DataLoader(_ds(), 10, num_workers=2, transform=lambda x, rng: x, timeout=WAIT)
    if not LINUX:
        return
    assert default.multiprocessing_context.get_start_method() == "forkserver"
    with pytest.raises(RuntimeError, match="module level.*multiprocessing_context='fork'"):
        list(default)


def test_worker_option_checks_follow_torch():
    import pytest
    import torch

    td = torch.utils.data
    cases = [dict(num_workers=-1), dict(timeout=-1), dict(prefetch_factor=2),
             dict(persistent_workers=True), dict(multiprocessing_context="fork"),
             dict(num_workers=2, multiprocessing_context="no-such-method")]
    for kw in cases:
        with pytest.raises(ValueError) as theirs:
            td.DataLoader(list(range(8)), **kw)
        with pytest.raises(ValueError) as ours:
            DataLoader(_ds(), **kw)
        key = theirs.value.args[0].split()[0]  # the option torch names
        assert key in str(ours.value), (kw, str(ours.value))
    with pytest.raises(TypeError, match="multiprocessing_context"):
        DataLoader(_ds(), num_workers=1, multiprocessing_context=3)
    with pytest.raises(ValueError, match="prefetch_factor"):
        DataLoader(_ds(), num_workers=1, prefetch_factor=0)
    with pytest.raises(TypeError, match="worker_init_fn"):
        DataLoader(_ds(), num_workers=1, worker_init_fn=3)
    loader = DataLoader(_ds(), num_workers=2)
    assert loader.prefetch_factor == 2 and not loader.persistent_workers and loader.in_order
    assert DataLoader(_ds()).prefetch_factor is None


# --- DistributedSampler under its torch.utils.data name -------------------------------------------
def test_distributed_sampler_from_data_drives_a_loader_without_mpi():
    import torch

    from nodegrad.distributed import DistributedSampler

    assert ng.data.DistributedSampler is DistributedSampler
    ds = _ds(23)
    for shuffle, drop in ((False, False), (False, True), (True, False)):
        shares = []
        for rank in range(3):
            s = ng.data.DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=shuffle,
                                           seed=4, drop_last=drop)
            t = torch.utils.data.DistributedSampler(range(23), num_replicas=3, rank=rank,
                                                    shuffle=shuffle, seed=4, drop_last=drop)
            assert len(s) == len(t)
            if not shuffle:
                assert list(s) == list(t)
            loader = DataLoader(ds, 4, sampler=s, num_workers=2 if rank == 0 else 0,
                                timeout=WAIT if rank == 0 else 0)
            loader.set_epoch(1)
            s.set_epoch(1)
            shares.append([int(x[0]) // 3 for b in loader for x in b[0].numpy()])
            assert shares[-1] == list(s)  # the loader reads the sampler's epoch-1 order
        seen = sum(shares, [])
        assert len(seen) == (21 if drop else 24)  # padded by repeating, or cut
        assert len(set(seen)) == (21 if drop else 23)


def test_distributed_sampler_set_epoch_decides_the_loaders_order_as_in_torch():
    """PyTorch's pattern, ``sampler.set_epoch(e)`` before each epoch, also when a resumed run
    starts at e = 10 with a fresh loader; without set_epoch the loader's own epochs count."""
    ds = _ds(23)

    def order(sampler, epochs):
        loader = DataLoader(ds, 5, sampler=sampler)
        out = []
        for e in epochs:
            if e is not None:
                sampler.set_epoch(e)
            out.append([int(x[0]) // 3 for b in loader for x in b[0].numpy()])
        return out

    def make():
        return ng.data.DistributedSampler(ds, num_replicas=2, rank=1, seed=7)

    ref = make()
    want = [ref.indices(e).tolist() for e in (10, 11)]
    assert order(make(), [10, 11]) == want  # a resume at epoch 10 reads epoch 10's order
    assert want[0] != ref.indices(0).tolist()
    assert order(make(), [None, None]) == [ref.indices(0).tolist(), ref.indices(1).tolist()]


def test_data_does_not_import_distributed_at_import_time():
    import ast

    pkg = pathlib.Path(ng.__file__).parent / "data"
    for path in pkg.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any("distributed" in n for n in names), path.name
