"""Running a test's work on several threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def at_once(work: Callable[[int], None], n: int, timeout: float) -> tuple[list, bool]:
    """``work(i)`` for i in range(n), each on a thread of its own, started together and joined
    within ``timeout`` seconds each: (the exceptions they raised, whether one is still running)."""
    errors: list = []

    def run(i: int) -> None:
        try:
            work(i)
        except Exception as e:  # noqa: BLE001 - the caller asserts there were none
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors, any(t.is_alive() for t in threads)
