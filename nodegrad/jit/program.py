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
        self._code = [(i.fn, i.ins, i.out) for i in self.instrs]
        env = [None] * nslots
        for s, v in consts.items():
            env[s] = v
        self._env0 = env

    def run(self, inputs: list) -> list:
        """Replay on ``inputs`` (arrays, in the order of the traced inputs)."""
        env = self._env0.copy()
        for s, a in zip(self.in_slots, inputs):
            env[s] = a
        if self.backend is not None and self.backend.device_id is not None:
            with self.backend.scope():
                _execute(self._code, env)
        else:
            _execute(self._code, env)
        return [env[s] for s in self.out_slots]

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
        return "\n".join(lines)


def _const(v) -> str:
    shape = getattr(v, "shape", None)
    if shape is None:
        return repr(v)
    return f"const{tuple(shape)}"


def _execute(code: list, env: list) -> None:
    for fn, ins, out in code:
        r = fn(*[env[i] for i in ins])
        if out is not None:
            env[out] = r


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
