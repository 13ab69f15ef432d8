"""Worker processes of the DataLoader: each makes whole batches from the indices it is sent.

The main process keeps the sampler and the order; a worker receives ``("batch", ..., indices)``
(or, over an IterableDataset, ``("next", ...)``), gathers, collates and transforms the batch on
the host, and sends it back through its own pipe. The main process waits on every worker's pipe
and process sentinel at once, so a worker that dies is noticed at once, never waited for.

Each worker's random state (Python's ``random``, NumPy's global state and nodegrad's default
CPU generator) is seeded from the loader's seed, the epoch and the worker id, and
:func:`get_worker_info` tells the code running in a worker who it is (PyTorch's semantics).
"""

from __future__ import annotations

import pickle
import queue
import random
import signal
import threading
import time
import traceback
from typing import Any

from .. import _backend as B
from ..random import default_generator

np = B.np

def _mp():
    """The multiprocessing package, imported when workers are first used (it would add ~8% to
    ``import nodegrad``)."""
    import multiprocessing
    import multiprocessing.connection

    return multiprocessing


_POLL = 1.0  # seconds between a waiting worker's checks that the main process is alive
_JOIN = 2.0  # seconds a worker gets to exit after being told to, before it is terminated


class WorkerInfo:
    """Who the current data-loading worker is: ``id``, ``num_workers``, ``seed`` (what its
    random state was seeded with this epoch) and ``dataset`` (the worker's own copy)."""

    __slots__ = ("id", "num_workers", "seed", "dataset")

    def __init__(self, id: int, num_workers: int, seed: int, dataset: Any) -> None:
        for k, v in (("id", id), ("num_workers", num_workers), ("seed", seed),
                     ("dataset", dataset)):
            object.__setattr__(self, k, v)

    def __setattr__(self, key: str, value: Any) -> None:
        raise RuntimeError(f"WorkerInfo: cannot set attribute {key!r}, it is read-only")

    def __repr__(self) -> str:
        return (f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed}, "
                f"dataset={type(self.dataset).__name__})")


_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    """The :class:`WorkerInfo` of the DataLoader worker process running the caller; None in
    the main process. An IterableDataset uses it to yield only its share of the stream in
    each worker (one that ignores it is read in full by every worker: duplicated data)."""
    return _info


def worker_seed(seed: int, epoch: int, worker_id: int) -> int:
    """The seed of worker ``worker_id``'s random state in ``epoch`` (a 63-bit int)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(epoch), 2, int(worker_id)))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global state and nodegrad's default CPU generator."""
    random.seed(seed)
    np.random.seed(np.random.SeedSequence(seed).generate_state(4))
    default_generator("cpu").manual_seed(seed)


def start_context(context: Any):
    """The multiprocessing context workers start in: a start method's name, a context, or None.

    None picks ``forkserver`` where the platform has it (Linux): workers fork from a small
    single-threaded server that has imported nodegrad once, so starting one costs
    milliseconds and no lock held by a thread of the main process (a prefetch thread, a BLAS
    pool, CUDA) is copied into it, as ``fork`` would; elsewhere the platform's default (spawn).
    """
    mp = _mp()
    if context is None:
        methods = mp.get_all_start_methods()
        context = mp.get_context("forkserver" if "forkserver" in methods else None)
    elif isinstance(context, str):
        methods = mp.get_all_start_methods()
        if context not in methods:
            raise ValueError("DataLoader: multiprocessing_context should specify a valid start "
                             f"method in {methods!r}, but got multiprocessing_context="
                             f"{context!r}")
        context = mp.get_context(context)
    elif not isinstance(context, mp.context.BaseContext):
        raise TypeError("DataLoader: multiprocessing_context should be a valid context object "
                        "or a string specifying the start method, but got "
                        f"multiprocessing_context={context!r}")
    if context.get_start_method() == "forkserver":
        _preload(context)
    return context


_preloaded: list[bool] = [False]


def _preload(ctx) -> None:
    """Have the fork server import nodegrad once (its children then start without importing it;
    this adds to the server's preload list, which takes effect if it is not running yet)."""
    if _preloaded[0]:
        return
    import multiprocessing.forkserver as forkserver

    server = getattr(forkserver, "_forkserver", None)
    mods = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if "nodegrad" not in mods:
        ctx.set_forkserver_preload(mods + ["nodegrad"])
    _preloaded[0] = True


class _RemoteError:
    """An exception raised in a worker, carried to the main process with its traceback text."""

    def __init__(self, worker_id: int, error: BaseException, where: str) -> None:
        self.worker_id = worker_id
        self.exc_type = type(error)
        self.text = "".join(traceback.format_exception(error))
        self.where = where

    def __reduce__(self):  # the type by reference when it pickles, else RuntimeError
        try:
            pickle.dumps(self.exc_type)
            exc_type = self.exc_type
        except Exception:
            exc_type = RuntimeError
        return _remote_error, (self.worker_id, exc_type, self.text, self.where)

    def reraise(self):
        msg = (f"Caught {self.exc_type.__name__} in DataLoader worker process "
               f"{self.worker_id} {self.where}.\nOriginal {self.text}")
        if issubclass(self.exc_type, KeyError):  # its str() is the repr of its argument
            msg = _Verbatim(msg)
        try:
            err = self.exc_type(msg)
        except Exception:
            err = RuntimeError(msg)
        raise err


class _Verbatim(str):
    """A message a KeyError prints as it is (not as a quoted, escaped string)."""

    def __repr__(self) -> str:
        return str(self)


def _remote_error(worker_id, exc_type, text, where) -> _RemoteError:
    e = _RemoteError.__new__(_RemoteError)
    e.worker_id, e.exc_type, e.text, e.where = worker_id, exc_type, text, where
    return e


def _limit_threads() -> None:
    """One BLAS thread per worker (as PyTorch's one intra-op thread): N workers, N cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def _worker_loop(worker_id: int, num_workers: int, fetcher, init_fn, seed: int, tasks,
                 conn) -> None:
    """A worker's life: seed, ``init_fn(worker_id)``, then serve tasks until told to stop.

    Messages in: ``("epoch", gen, loader_seed, epoch, worker_seed, read)``,
    ``("batch", gen, b, indices)``, ``("next", gen, k)`` and ``None`` (stop). Out:
    ``(gen, key, status, payload)`` with status ``"ok"`` (payload: the host batch), ``"end"``
    (the worker's share of the stream ran out) or ``"error"`` (a :class:`_RemoteError`)."""
    global _info
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _limit_threads()
    _seed_all(seed)
    dataset = fetcher.dataset
    _info = WorkerInfo(worker_id, num_workers, seed, dataset)
    parent = _mp().parent_process()

    def send(msg) -> bool:
        try:
            conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):  # the main process stopped listening
            return False
        except Exception as e:  # a batch that cannot be pickled
            return send((msg[0], msg[1], "error", _RemoteError(worker_id, e,
                                                               "sending a batch")))
        return True

    if init_fn is not None:
        try:
            init_fn(worker_id)
        except Exception as e:
            send((-1, None, "error", _RemoteError(worker_id, e, "in worker_init_fn")))
            return
    state = {"gen": None, "seed": None, "epoch": 0, "it": None, "read": 0, "ended": False,
             "worker_seed": seed}
    while True:
        try:
            msg = tasks.get(timeout=_POLL)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        except (EOFError, OSError):
            return
        if msg is None:
            return
        kind, gen = msg[0], msg[1]
        if kind == "epoch":
            _, gen, state["seed"], state["epoch"], wseed, read = msg
            if wseed != state["worker_seed"]:  # a persistent worker's next epoch: reseed
                _seed_all(wseed)
                _info = WorkerInfo(worker_id, num_workers, wseed, dataset)
                state["worker_seed"] = wseed
            state.update(gen=gen, it=None, read=read, ended=False)
            continue
        if gen != state["gen"]:  # a task of an epoch left early
            continue
        try:
            if kind == "batch":
                _, _, b, idx = msg
                out = (gen, b, "ok", fetcher.batch(idx, state["seed"], state["epoch"], b))
            else:
                out = (gen, msg[2], *_next_of_stream(fetcher, state, worker_id, num_workers))
        except Exception as e:
            where = (f"while making batch {msg[2]} of epoch {state['epoch']} "
                     f"(dataset indices {_indices_text(msg[3])})" if kind == "batch" else
                     f"while reading batch {msg[2]} of its share of the IterableDataset in "
                     f"epoch {state['epoch']}")
            out = (gen, msg[2], "error", _RemoteError(worker_id, e, where))
        if not send(out):
            return


def _indices_text(idx, most: int = 8) -> str:
    """The dataset indices of a batch for an error message (the first ``most`` of many)."""
    if isinstance(idx, int | np.integer):
        return str(int(idx))
    flat = np.asarray(idx).reshape(-1).tolist()
    more = f", ... {len(flat)} in all" if len(flat) > most else ""
    return "[" + ", ".join(map(str, flat[:most])) + more + "]"


def _next_of_stream(fetcher, state: dict, worker_id: int, num_workers: int) -> tuple:
    """The next batch of this worker's share of an IterableDataset: ("ok", batch) or
    ("end", None); a resumed epoch first skips the ``read`` batches handed out before."""
    if state["ended"]:
        return "end", None
    if state["it"] is None:
        state["it"] = iter(fetcher.dataset)
        fetcher.skip(state["it"], state["read"])
    k = state["read"]
    out = fetcher.next_batch(state["it"])  # (batch,) or None at the end
    if out is None:
        state["ended"] = True
        return "end", None
    state["read"] = k + 1
    key = (state["epoch"], 1, k) if num_workers == 1 else (state["epoch"], 3, worker_id, k)
    return "ok", fetcher.transformed(out[0], state["seed"], key)


class WorkerError(RuntimeError):
    """A DataLoader worker process exited unexpectedly, or did not deliver in time."""


class WorkerPool:
    """``num_workers`` processes serving one loader, each with a task queue and a result pipe.

    ``start_epoch`` opens a generation: results of an earlier one (an epoch left early) are
    dropped. ``recv`` returns the next result of the current generation, raising a worker's
    exception, a :class:`WorkerError` for a dead worker, or one after ``timeout`` seconds."""

    def __init__(self, ctx, fetcher, num_workers: int, init_fn, seeds: list[int],
                 timeout: float) -> None:
        self.num_workers = num_workers
        self.timeout = timeout
        self.method = ctx.get_start_method()
        self.procs: list = []
        self.tasks: list = []
        self.readers: list = []
        self.gen = 0
        self.closed = False
        self.heard = [False] * num_workers  # whether worker w has sent anything yet
        # one thread reads the pipes at a time; a new generation (or shutdown) wakes a reader
        # of an older one (a prefetch thread of an iteration left early), which then stops
        # instead of taking the new generation's batches
        self._reading = threading.Lock()
        self._wake_r, self._wake_w = ctx.Pipe(duplex=False)
        try:
            for w in range(num_workers):
                tasks = ctx.Queue()
                reader, writer = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker_loop, name=f"nodegrad-data-worker-{w}",
                                args=(w, num_workers, fetcher, init_fn, seeds[w], tasks, writer),
                                daemon=True)
                self.tasks.append(tasks)
                self.readers.append(reader)
                try:
                    p.start()
                except Exception as e:
                    if self.method == "fork":
                        raise
                    raise RuntimeError(
                        f"DataLoader(num_workers={num_workers}): could not send the dataset, "
                        "collate_fn, transform and worker_init_fn to a worker process started "
                        f"with '{self.method}' ({type(e).__name__}: {e}); define them at module "
                        "level (not as lambdas or local functions), or pass "
                        "multiprocessing_context='fork'") from e
                finally:
                    writer.close()  # the worker holds the only write end: its death is EOF
                self.procs.append(p)
        except BaseException:
            self.shutdown()
            raise

    def start_epoch(self, seed, epoch: int, worker_seeds: list[int],
                    read: list[int] | None = None) -> int:
        """Open a new generation for ``epoch`` (over a stream: ``read[w]``, the batches of
        worker ``w`` already handed out, which a resume skips)."""
        self.gen += 1
        self._wake()
        with self._reading:  # a reader of an earlier generation has let go of the pipes
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        for w in range(self.num_workers):
            self.tasks[w].put(("epoch", self.gen, seed, epoch, worker_seeds[w],
                               read[w] if read else 0))
        return self.gen

    def send(self, worker: int, msg: tuple) -> None:
        self.tasks[worker].put(msg)

    def check(self, gen: int) -> None:
        """Raise unless generation ``gen`` is still the current one."""
        if gen != self.gen:
            raise RuntimeError("DataLoader: a newer iteration of this loader took over its "
                               "persistent workers; this iterator cannot go on")

    def _wake(self) -> None:
        """Wake a thread waiting in :meth:`recv` (it then checks its generation)."""
        try:
            self._wake_w.send_bytes(b"\0")
        except (OSError, ValueError):
            pass

    def recv(self, gen: int, deadline: float | None, what: str) -> tuple[int, Any, str, Any]:
        """The next ``(worker, key, status, payload)`` of generation ``gen``, the current one."""
        with self._reading:
            return self._recv(gen, deadline, what)

    def _recv(self, gen: int, deadline: float | None, what: str) -> tuple[int, Any, str, Any]:
        self.check(gen)
        waiting = {r: w for w, r in enumerate(self.readers)}
        sentinels = {p.sentinel: w for w, p in enumerate(self.procs)}
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready = _mp().connection.wait(list(waiting) + list(sentinels) + [self._wake_r],
                                          left)
            if not ready:
                raise WorkerError(f"DataLoader timed out after {self.timeout} seconds waiting "
                                  f"for {what}")
            if self._wake_r in ready:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                if self.closed:
                    raise WorkerError(f"DataLoader: the workers were shut down while the main "
                                      f"process waited for {what}")
                self.check(gen)  # a newer generation started: this reader stops
            dead = None
            for obj in ready:
                if obj is self._wake_r:
                    continue
                if obj in waiting:
                    w = waiting[obj]
                    try:
                        got, key, status, payload = obj.recv()
                    except (EOFError, OSError):
                        dead = w
                        continue
                    self.heard[w] = True
                    if status == "error" and got == -1:
                        payload.reraise()
                    if got == gen:
                        if status == "error":
                            payload.reraise()
                        return w, key, status, payload
                elif dead is None:
                    dead = sentinels[obj]
            if dead is not None:
                p = self.procs[dead]
                p.join(0.1)
                hint = ""
                if p.exitcode == 1 and not self.heard[dead] and self.method != "fork":
                    hint = (f". It exited before sending anything; with the '{self.method}' "
                            "start method a worker first imports the main script, so the "
                            "dataset, collate_fn, transform and worker_init_fn must be defined "
                            "at its module level and the code that iterates a DataLoader must "
                            "be under `if __name__ == \"__main__\":` (the worker's own "
                            "traceback, if any, is printed above)")
                raise WorkerError(f"DataLoader worker {dead} (pid {p.pid}) exited "
                                  f"unexpectedly{_exit_reason(p.exitcode)} while the main "
                                  f"process waited for {what}{hint}")

    def shutdown(self, force: bool = False) -> None:
        """Stop the workers: ask, wait up to a moment (none with ``force``: after an error),
        then terminate; reap them all."""
        if self.closed:
            return
        self.closed = True
        for q in self.tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        self._wake()  # a thread waiting for a batch stops before its pipes are closed
        idle = self._reading.acquire(timeout=_JOIN)
        try:
            for r in self.readers:  # a worker blocked sending a batch gets a broken pipe
                r.close()
            if idle:
                self._wake_r.close()
                self._wake_w.close()
        finally:
            if idle:
                self._reading.release()
        deadline = time.monotonic() + (0.0 if force else _JOIN)
        for p in self.procs:
            p.join(max(deadline - time.monotonic(), 0.0))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(_JOIN)
            if p.is_alive():
                p.kill()
                p.join()
        for q in self.tasks:
            q.cancel_join_thread()
            q.close()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return ""
    if code < 0:
        try:
            return f" (killed by signal {signal.Signals(-code).name})"
        except ValueError:
            return f" (killed by signal {-code})"
    return f" with exit code {code}"
