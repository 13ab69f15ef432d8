"""nodegrad's benchmark suite: each workload timed against PyTorch eager and a NumPy floor.

Run everything with ``python -m benchmarks`` or one file with ``python -m benchmarks.mlp``.
A workload file defines ``WORKLOADS`` (a list of :class:`benchmarks._harness.Workload`) and adds
its module name to ``SUITE`` below; nothing else needs to change. See ``benchmarks/README.md``.
"""

import importlib

# The workload files (each holds one or more workloads); rows are printed sorted by id.
SUITE = ("mlp", "mlp_large", "conv", "gru_step", "overhead", "per_example", "optim_step",
         "data_loader", "jit", "transformer")


def all_workloads() -> list:
    """Every workload of the files in ``SUITE``, sorted by id (W1, W2, ..., W5)."""
    found = []
    for name in SUITE:
        found += importlib.import_module(f"{__name__}.{name}").WORKLOADS
    return sorted(found, key=lambda w: w.id)
