"""Run every workload of the suite: ``python -m benchmarks [--quick] [--json PATH] [--only W1]``."""

from . import all_workloads
from ._harness import main

if __name__ == "__main__":
    raise SystemExit(main(all_workloads(), description="nodegrad benchmark suite"))
