"""Argument types shared by the ``nodegrad`` subcommands: each rejects bad input with a
one-line message that names what it expected."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from .train import UsageError

class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) raised as :class:`UsageError`."""

    def error(self, message: str):
        raise UsageError(message)


def int_at_least(lo: int):
    """An argparse type: an integer >= ``lo``."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


positive_int = int_at_least(1)
count = int_at_least(0)


def float_in(lo: float, hi: float = math.inf, lo_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not (lo < v if lo_open else lo <= v) or not v <= hi or not math.isfinite(v):
            if hi == math.inf:
                raise argparse.ArgumentTypeError(
                    f"expected a number {'>' if lo_open else '>='} {lo:g}, got {s}")
            raise argparse.ArgumentTypeError(
                f"expected a number in {'(' if lo_open else '['}{lo}, {hi}], got {s}")
        return v
    return parse


def choice(options: Sequence[str], what: str):
    """An argparse type: one of ``options``; the error lists them."""
    def parse(s: str) -> str:
        if s not in options:
            raise argparse.ArgumentTypeError(f"unknown {what} {s!r}; choose from "
                                             f"{', '.join(options)}")
        return s
    return parse


positive_float = float_in(0.0, lo_open=True)
