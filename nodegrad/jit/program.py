"""A captured program: a list of backend operations on numbered slots, and its replay.

Each instruction is ``(fn, ins, out)``: ``fn`` takes the values of slots ``ins`` and its result
goes to slot ``out`` (None for a pure effect). Kinds: ``op`` (a primitive's forward on raw
arrays), ``load`` (read a tensor's current array: a parameter, a gradient) and ``effect`` (a
Python step replayed by calling it again: an optimiser update, a random draw) and ``fused`` (one
compiled kernel for a group of elementwise ops, :mod:`.fuse`). Constants and inputs sit in slots
before the first instruction. :mod:`.passes` optimises the list and plans buffer reuse.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(slots=True)
class Instr:
    """One step of a program (see the module docstring for the kinds)."""

    kind: str
    name: str
    fn: object
    ins: tuple
    out: int | None
    params: object = None  # an op's primitive parameters (for CSE and fusion)
    access: str = ""  # an effect's: "read" (only reads its inputs), "mutate" (writes ins[0])
    outs: tuple | None = None  # a fused kernel's output slots (``out`` is then None)
    group: object = None  # a fused kernel's description (:class:`.fuse.Group`)


class Program:
    """Instructions over slots; ``run(inputs)`` replays them on new input arrays."""

    def __init__(self, instrs: list, nslots: int, consts: dict, in_slots: list,
                 out_slots: list, backend, meta: dict | None = None, optimize: bool = True,
                 fuse: bool | str = False, values: dict | None = None) -> None:
        self.consts = dict(consts)
        self.in_slots = in_slots
        self.out_slots = list(out_slots)
        self.backend = backend
        self.nslots = nslots
        self.meta = meta if meta is not None else {}
        self.stats: dict = {}  # what the passes did (see counts())
        self.plan = None  # the buffer plan (:func:`.passes.plan_memory`), or None
        self.lowered = None  # what the lowered optimiser steps assume (:class:`.passes.Lowered`)
        self.unlowered = None  # the instructions run once that does not hold
        instrs = eliminate_dead_code(instrs, self.out_slots)
        if meta is not None and optimize and backend is not None:
            from . import passes

            self.values = values or {}  # the traced arrays (kernels are compiled for them)
            instrs = passes.optimise(self, instrs)
            instrs = passes.join_scatters(self, instrs)
            if fuse:
                from . import fuse as F

                instrs = F.fuse(self, instrs, everything=fuse == "all")
                from .loops import compile_loops

                compile_loops(self, instrs)
            instrs = passes.fold_transposes(self, instrs)
            passes.direct_forms(self, instrs)
            self.plan = passes.plan_memory(self, instrs)
            instrs = passes.own_gradients(self, instrs)
            lowered = passes.lower_gradients(self, instrs)
            if lowered is not None:  # calls whose assumptions fail run the unlowered list
                self.unlowered, (instrs, self.lowered) = instrs, lowered
            del self.values
        self.instrs = instrs
        self._fn = self._compile(fast=False)
        self._plain = self._fn  # used when the program is already running (re-entry, threads)
        self._fast = False
        self._scoped = backend is not None and backend.device_id is not None  # a GPU's
        self._lock = threading.Lock()
        self._demote = threading.Lock()

    def _var(self, s: int) -> str:
        return f"c{s}" if s in self.consts else f"v{s}"

    def _out(self, s: int) -> str:
        return f"v{s}" if s not in self.consts else (
            f"c{s}.copy()" if hasattr(self.consts[s], "copy") else f"c{s}")

    def _compile(self, fast: bool):
        """The program as one straight-line Python function (no interpreter loop, locals only).

        With ``fast``, an op whose first replay needed no result conversion calls its bare
        forward."""
        return self._build(fast, pool=False)

    def _build(self, fast: bool, pool: bool):
        """The straight-line function; with ``pool``, planned ops write into the program's own
        buffers (``out=``), allocated once here."""
        ns: dict = {f"c{s}": v for s, v in self.consts.items()}
        instrs = self.instrs
        plan = self.plan if pool else None
        if plan is not None:
            from .passes import out_variant

            with self.backend.scope():
                for j, (shape, dtype) in enumerate(plan.buffers):
                    ns[f"b{j}"] = self.backend.xp.empty(shape, dtype)
        ns["_empty"] = self.backend.xp.empty if self.backend is not None else None
        args = ", ".join(f"_a{k}" for k in range(len(self.in_slots)))
        dead = self._releases(instrs)
        lines = [f"def _run({args}):"]
        if self.lowered is not None:  # the lowered steps' assumptions, else the unlowered program
            conds = []
            for j, p in enumerate(self.lowered.leaves.values()):
                ns[f"_g{j}"] = p
                conds.append(f"_g{j}.grad is not None")
            for j, (opt, n) in enumerate(self.lowered.groups):
                ns[f"_o{j}"] = opt
                conds.append(f"len(_o{j}.param_groups) != {n}")
            ns["_unlowered"] = self._run_unlowered
            if conds:
                lines += [f"    if {' or '.join(conds)}:", f"        return _unlowered({args})"]
        lines += [f"    v{s} = _a{k}" for k, s in enumerate(self.in_slots)]
        for k, i in enumerate(instrs):
            fn = i.fn
            argv = [self._var(a) for a in i.ins]
            if i.kind == "fused":
                ns[f"f{k}"] = fn
                for s in i.outs:
                    b = plan.buf.get(s) if plan is not None else None
                    if b is not None:
                        lines.append(f"    v{s} = b{b}")
                    elif s in i.group.layouts:  # laid out as NumPy laid it out
                        # (named by slot: "dt", not a load's "d" named by instruction index)
                        shape, dtype = self.meta[s]
                        ns[f"dt{s}"], ns["_nd"] = dtype, self.backend.xp.ndarray
                        lines.append(f"    v{s} = _nd({shape}, dt{s}, _empty("
                                     f"{math.prod(shape)}, dt{s}), 0, {i.group.layouts[s]})")
                    else:
                        shape, dtype = self.meta[s]
                        ns[f"dt{s}"] = dtype
                        lines.append(f"    v{s} = _empty({shape}, dt{s})")
                lines.append(f"    f{k}({', '.join([f'v{s}' for s in i.outs] + argv)})")
                lines += dead.get(k, ())
                continue
            t = getattr(fn, "tensor", None) if i.kind == "load" else None
            t = t() if t is not None else None
            if t is not None:  # a tensor's current array, checked as the load function does
                ns[f"t{k}"], (ns[f"s{k}"], ns[f"d{k}"]) = t, fn.spec
                ns[f"f{k}"] = fn
                lines += [f"    v{i.out} = t{k}._data",
                          f"    if v{i.out}.shape != s{k} or v{i.out}.dtype != d{k}:",
                          f"        v{i.out} = f{k}()"]
                continue
            b = plan.buf.get(i.out) if plan is not None and i.kind == "op" else None
            if fast and i.kind == "op" and not fn.converts:
                ofn = out_variant(i, self.backend.xp, self.meta) if b is not None else None
                if ofn is not None:
                    ns[f"f{k}"] = ofn
                    lines.append(f"    v{i.out} = f{k}({', '.join(argv + [f'b{b}'])})")
                    lines += dead.get(k, ())
                    continue
                fn = fn.fast
            ns[f"f{k}"] = fn
            call = f"f{k}({', '.join(argv)})"
            lines.append(f"    v{i.out} = {call}" if i.out is not None else f"    {call}")
            lines += dead.get(k, ())
        # a constant returned (a tensor made in the step) is a new array on every call, as eager
        lines.append(f"    return [{', '.join(self._out(s) for s in self.out_slots)}]")
        exec(compile("\n".join(lines), "<nodegrad.jit program>", "exec"), ns)
        return ns["_run"]

    def _run_unlowered(self, *inputs):
        """A call found the lowered steps' assumptions false (a ``.grad`` set outside, a new
        parameter group): from now on the program runs its unlowered instructions."""
        with self._demote:
            if self.lowered is not None:
                self.instrs, self.unlowered, self.lowered = self.unlowered, None, None
                for k in ("lowered_steps", "dropped_grad_stores"):
                    self.stats.pop(k, None)
                self._plain = self._compile(fast=self._fast)
                self._fn = self._build(fast=True, pool=True) if self._fast and self.plan \
                    else self._plain
        return self._plain(*inputs)  # no kept buffers: another thread may be using them

    def _releases(self, instrs: list | None = None) -> dict:
        """Instruction index -> ``del`` lines of the large intermediates it reads last, so a
        replay holds no more arrays alive than the eager code did (locals live until return)."""
        last: dict[int, int] = {}
        for k, i in enumerate(self.instrs if instrs is None else instrs):
            for a in i.ins:
                last[a] = k
        keep = set(self.out_slots) | set(self.consts)
        dead: dict[int, list] = {}
        for s, k in last.items():
            spec = self.meta.get(s)
            if s in keep or spec is None or _nbytes(spec) < RELEASE_BYTES:
                continue
            dead.setdefault(k, []).append(f"    del v{s}")
        return dead

    def run(self, inputs: list) -> list:
        """Replay on ``inputs`` (arrays, in the order of the traced inputs)."""
        if not self._lock.acquire(blocking=False):  # running already: no shared buffers
            return self._call(self._plain, inputs)
        try:
            outs = self._call(self._fn, inputs)
        finally:
            self._lock.release()
        if not self._fast:  # the first replay has shown which ops need no conversion
            self._plain = self._compile(fast=True)
            self._fn = self._build(fast=True, pool=True) if self.plan else self._plain
            self._fast = True
        return outs

    def _call(self, fn, inputs: list) -> list:
        if self._scoped:
            with self.backend.scope():
                return fn(*inputs)
        return fn(*inputs)

    def __len__(self) -> int:
        return len(self.instrs)

    def counts(self) -> dict:
        """How many instructions of each kind the program holds, how many ops its fused kernels
        hold (``fused_ops``), and what the passes did (CSE merges, folds, reused buffers...)."""
        c: dict = {}
        for i in self.instrs:
            c[i.kind] = c.get(i.kind, 0) + 1
            if i.kind == "fused":
                c["fused_ops"] = c.get("fused_ops", 0) + len(i.group.members) + (
                    i.group.reduce is not None)
        c.update({k: v for k, v in self.stats.items() if v})
        if self.plan is not None:
            c.update({k: v for k, v in self.plan.counts().items() if v})
        return c

    def __str__(self) -> str:
        lines = [f"program: {len(self.in_slots)} inputs, {len(self.consts)} constants, "
                 f"{len(self.instrs)} instructions, outputs {self.out_slots}"]
        for s in self.in_slots:
            lines.append(f"  %{s} = input")
        low = self.lowered
        if low is not None and (low.leaves or low.groups):
            lines.append(f"  check: .grad is None on {len(low.leaves)} parameters, "
                         f"{len(low.groups)} optimiser(s) unchanged (else the unlowered program)")
        plan = self.plan
        for i in self.instrs:
            args = ", ".join(self._show(a) for a in i.ins)
            if i.kind == "fused":
                outs = ", ".join(f"%{s}" + _where(plan, s) for s in i.outs)
                red = i.group.reduce
                order = f", loops in axis order {i.group.perm}" if i.group.perm else ""
                lines.append(f"  {outs} = fused {i.name}({args})  # "
                             f"{len(i.group.members) + (red is not None)} ops in one kernel"
                             + order)
                for m in i.group.members + ([red] if red is not None else []):
                    margs = ", ".join(self._show(a) for a in m.ins)
                    if m is red and len(i.group.axes) < len(i.group.shape):
                        margs += f", axis={i.group.axes}"
                    lines.append(f"      %{m.out} = {m.name}({margs})")
                continue
            lhs = f"%{i.out}{_where(plan, i.out)} = " if i.out is not None else ""
            lines.append(f"  {lhs}{i.kind} {i.name}({args})")
            lines += _sub_program(i)
        if plan is not None and plan.buffers:
            lines.append(f"  buffers: {len(plan.buffers)} kept between calls, written by "
                         f"{len(plan.buf)} results ({plan.inplace} in place of an input)")
        return "\n".join(lines)

    def _show(self, a: int) -> str:
        return f"%{a}" if a not in self.consts else _const(self.consts[a])


RELEASE_BYTES = 1 << 16  # smaller intermediates are left to the end of the replay


def _nbytes(spec: tuple) -> int:
    n = 1
    for d in spec[0]:
        n *= d
    return n * spec[1].itemsize


def _where(plan, s) -> str:
    """`` ->b3`` when slot ``s`` is written into the program's buffer 3."""
    if plan is None or s is None or s not in plan.buf:
        return ""
    return f" ->b{plan.buf[s]}"


def _const(v) -> str:
    shape = getattr(v, "shape", None)
    if shape is None or shape == ():
        return repr(v.item() if shape == () else v)
    return f"const{tuple(shape)}"


def eliminate_dead_code(instrs: list, out_slots: list) -> list:
    """Drop the operations and loads whose results nothing reads (effects always stay)."""
    live = set(out_slots)
    kept = []
    for i in reversed(instrs):
        if i.kind == "effect" or (i.out is not None and i.out in live) or (
                i.outs is not None and live.intersection(i.outs)):
            live.update(i.ins)
            kept.append(i)
    kept.reverse()
    return kept


def _sub_program(i: Instr) -> list:
    """The lines of a loop instruction's body program (``lax.scan``), indented under it."""
    params = getattr(i.fn, "params", {})
    body = params.get("body")
    if body is None or not hasattr(body, "program"):
        return []
    return ["    | " + ln for ln in str(body.program(params.get("fuse", False))).splitlines()]
