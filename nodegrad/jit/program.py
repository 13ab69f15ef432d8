"""A captured program: a list of backend operations on numbered slots, and its replay.

Each instruction is ``(fn, ins, out)``: ``fn`` takes the values of slots ``ins`` and its result
goes to slot ``out`` (None for a pure effect). Kinds: ``op`` (a primitive's forward on raw
arrays), ``load`` (read a tensor's current array: a parameter, a gradient) and ``effect`` (a
Python step replayed by calling it again: an optimiser update, a random draw). Constants and
inputs sit in slots before the first instruction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Instr:
    """One step of a program (see the module docstring for the kinds)."""

    kind: str
    name: str
    fn: object
    ins: tuple
    out: int | None


class Program:
    """Instructions over slots; ``run(inputs)`` replays them on new input arrays."""

    def __init__(self, instrs: list, nslots: int, consts: dict, in_slots: list,
                 out_slots: list, backend) -> None:
        self.consts = consts
        self.in_slots = in_slots
        self.out_slots = out_slots
        self.backend = backend
        self.nslots = nslots
        self.instrs = eliminate_dead_code(instrs, out_slots)
        self._fn = self._compile(fast=False)
        self._fast = False

    def _var(self, s: int) -> str:
        return f"c{s}" if s in self.consts else f"v{s}"

    def _compile(self, fast: bool):
        """The program as one straight-line Python function (no interpreter loop, locals only).

        With ``fast``, an op whose first replay needed no result conversion calls its bare
        forward."""
        ns: dict = {f"c{s}": v for s, v in self.consts.items()}
        args = ", ".join(f"_a{k}" for k in range(len(self.in_slots)))
        lines = [f"def _run({args}):"]
        lines += [f"    v{s} = _a{k}" for k, s in enumerate(self.in_slots)]
        for k, i in enumerate(self.instrs):
            fn = i.fn
            if fast and i.kind == "op" and not fn.converts:
                fn = fn.fast
            ns[f"f{k}"] = fn
            call = f"f{k}({', '.join(self._var(a) for a in i.ins)})"
            lines.append(f"    v{i.out} = {call}" if i.out is not None else f"    {call}")
        lines.append(f"    return [{', '.join(self._var(s) for s in self.out_slots)}]")
        exec(compile("\n".join(lines), "<nodegrad.jit program>", "exec"), ns)
        return ns["_run"]

    def run(self, inputs: list) -> list:
        """Replay on ``inputs`` (arrays, in the order of the traced inputs)."""
        if self.backend is not None and self.backend.device_id is not None:
            with self.backend.scope():
                outs = self._fn(*inputs)
        else:
            outs = self._fn(*inputs)
        if not self._fast:  # the first replay has shown which ops need no conversion
            self._fn = self._compile(fast=True)
            self._fast = True
        return outs

    def __len__(self) -> int:
        return len(self.instrs)

    def counts(self) -> dict:
        """How many instructions of each kind the program holds."""
        c: dict = {}
        for i in self.instrs:
            c[i.kind] = c.get(i.kind, 0) + 1
        return c

    def __str__(self) -> str:
        lines = [f"program: {len(self.in_slots)} inputs, {len(self.consts)} constants, "
                 f"{len(self.instrs)} instructions, outputs {self.out_slots}"]
        for s in self.in_slots:
            lines.append(f"  %{s} = input")
        for i in self.instrs:
            args = ", ".join(f"%{a}" if a not in self.consts else _const(self.consts[a])
                             for a in i.ins)
            lhs = f"%{i.out} = " if i.out is not None else ""
            lines.append(f"  {lhs}{i.kind} {i.name}({args})")
            lines += _sub_program(i)
        return "\n".join(lines)


def _const(v) -> str:
    shape = getattr(v, "shape", None)
    if shape is None:
        return repr(v)
    return f"const{tuple(shape)}"


def eliminate_dead_code(instrs: list, out_slots: list) -> list:
    """Drop the operations and loads whose results nothing reads (effects always stay)."""
    live = set(out_slots)
    kept = []
    for i in reversed(instrs):
        if i.kind == "effect" or (i.out is not None and i.out in live):
            live.update(i.ins)
            kept.append(i)
    kept.reverse()
    return kept


def _sub_program(i: Instr) -> list:
    """The lines of a loop instruction's body program (``lax.scan``), indented under it."""
    body = getattr(i.fn, "params", {}).get("body")
    if body is None or not hasattr(body, "program"):
        return []
    return ["    | " + ln for ln in str(body.program()).splitlines()]
