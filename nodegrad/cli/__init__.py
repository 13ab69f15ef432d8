"""The ``nodegrad`` command: ``train``, ``evaluate RUN_DIR``, ``info``, ``diagnose``, ``gradcheck``,
``export RUN_DIR``.

``nodegrad train`` with no arguments trains the MNIST-1D CNN in about 10 seconds on a CPU,
shows progress, and prints the test accuracy and where the run directory and plots are. Bad
input (unknown names, invalid numbers, unknown config keys, an existing run directory, a
checkpoint of another model) and every ``OSError`` (a read-only or full disk, a missing
permission, ``--out`` under a file) end with a one-line error and a non-zero exit status;
warnings are one ``nodegrad: warning:`` line each.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import warnings
from collections.abc import Sequence

from ..errors import DeviceError
from ..io import CheckpointError
from ..train.callbacks import NonFiniteError
from .args import Parser, choice, count, float_in, positive_int
from .train import (DATASETS, DEFAULTS, OPTIMIZERS, SCHEDULES, UsageError, evaluate_run, info,
                    train)

__all__ = ["main"]


def _train_parser(prog: str = "nodegrad train") -> Parser:
    from ..models import REGISTRY
    from ..nn.init import SCHEMES

    d = DEFAULTS
    p = Parser(prog=prog, description="Train a model; every option's default is shown. "
               "Values from --config FILE (TOML) apply first, flags override them.",
               argument_default=argparse.SUPPRESS,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--model", type=choice(list(REGISTRY), "model"), metavar="NAME",
      help=f"one of: {', '.join(REGISTRY)} (default {d['model']})")
    a("--dataset", type=choice(list(DATASETS), "dataset"), metavar="NAME",
      help=f"one of: {', '.join(DATASETS)} (default: the model's own)")
    a("--epochs", type=positive_int, help="epochs (default: the model's; the MNIST-1D paper "
      "trains 150 = 6,000 steps of 100, `nodegrad train` 50 for a one-minute run)")
    a("--batch-size", type=positive_int, help="minibatch size (default: the model's)")
    a("--accumulate", type=positive_int, metavar="K",
      help="one optimiser step per K batches, on their mean loss: the step of a batch K "
           f"times larger (default {d['accumulate']}; not with --jit)")
    a("--optimizer", type=choice(list(OPTIMIZERS), "optimizer"), metavar="NAME",
      help=f"one of: {', '.join(OPTIMIZERS)} (default: the model's, adam)")
    a("--lr", type=float_in(0.0, 1e3, lo_open=True), help="learning rate (default: model's)")
    a("--weight-decay", type=float_in(0.0, 1e3), help="L2 weight decay (default 0)")
    a("--schedule", type=choice(list(SCHEDULES), "schedule"), metavar="NAME",
      help=f"learning-rate schedule: {', '.join(SCHEDULES)} (default {d['schedule']})")
    a("--dropout", type=float_in(0.0, 1.0), help=f"dropout rate (default {d['dropout']})")
    a("--init", type=choice(list(SCHEMES), "init"), metavar="NAME",
      help=f"weight init: {', '.join(SCHEMES)} (default {d['init']})")
    a("--augment", action="store_true", help="random shifts (MNIST-1D) / translations (digits)")
    a("--early-stopping", type=count, metavar="PATIENCE",
      help="stop after PATIENCE epochs without a better val_loss, keep the best weights "
           f"(0: off; default {d['early_stopping']})")
    a("--ensemble", type=positive_int, metavar="K",
      help=f"train K members with seeds seed..seed+K-1 (default {d['ensemble']})")
    a("--bootstrap", action="store_true", help="ensemble members on bootstrap samples")
    a("--val-fraction", type=float_in(0.0, 0.9),
      help=f"validation share of the training set (default {d['val_fraction']})")
    a("--checkpoint-every", type=count, metavar="STEPS",
      help="also checkpoint every STEPS steps within an epoch (default 0: epoch ends only)")
    a("--seed", type=count, help=f"random seed (default {d['seed']})")
    a("--device", help=f"cpu or cuda[:N] (default {d['device']})")
    a("--out", metavar="DIR", help="run directory (default runs/MODEL-DATASET-sSEED)")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    a("--overwrite", action="store_true", help="replace an existing run directory")
    a("--config", metavar="FILE", help="TOML file of options (keys as the flags, - or _)")
    a("--quiet", action="store_true", help="no progress output")
    a("--jit", action="store_true",
      help="capture each step's forward and backward once and replay it (nodegrad.jit)")
    a("--tensorboard", metavar="DIR",
      help="log each epoch's losses, metrics and learning rate as TensorBoard event files in "
           "DIR (needs tensorboardX: pip install 'nodegrad[tensorboard]')")
    return p


def _parser() -> Parser:
    p = Parser(prog="nodegrad", description="nodegrad: train, evaluate and inspect models.")
    sub = p.add_subparsers(dest="command",
                           metavar="{train,evaluate,info,gradcheck,diagnose,export}")
    sub.add_parser("train", help="train a model (nodegrad train --help for options)",
                   add_help=False)
    ev = sub.add_parser("evaluate", help="test metrics of a finished run")
    ev.add_argument("run_dir")
    sub.add_parser("info", help="versions, backends, devices, models and datasets")
    sub.add_parser("gradcheck", add_help=False,
                   help="autodiff vs finite-difference gradients (nodegrad gradcheck --help)")
    sub.add_parser("diagnose", add_help=False,
                   help="per-layer activation/gradient statistics (nodegrad diagnose --help)")
    sub.add_parser("export", add_help=False,
                   help="a finished run's model as ONNX (nodegrad export --help)")
    return p


def _config_args(path: str) -> dict:
    """Options from a TOML file, checked by the same parser as the flags."""
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from None
    cfg = cfg.get("train", cfg)
    parser = _train_parser()
    actions = {o.lstrip("-"): act for act in parser._actions for o in act.option_strings}
    flags = set(actions)
    argv: list[str] = []
    for key, value in cfg.items():
        flag = key.replace("_", "-")
        if flag not in flags or flag in ("config", "help", "h"):
            raise UsageError(f"config file {path}: unknown key {key!r}; valid keys: "
                             f"{', '.join(sorted(flags - {'config', 'help', 'h'}))}")
        switch = isinstance(actions[flag], argparse._StoreTrueAction)
        if switch != isinstance(value, bool):  # `augment = "yes"`, `epochs = true`
            raise UsageError(f"config file {path}: {key} must be "
                             f"{'true or false' if switch else 'a value, not a boolean'}, "
                             f"got {json.dumps(value, default=str)}")
        if isinstance(value, bool):
            if value:
                argv.append(f"--{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    try:
        return vars(parser.parse_args(argv))
    except UsageError as e:
        raise UsageError(f"config file {path}: {e}") from None


def parse_train_args(argv: Sequence[str]) -> dict:
    """DEFAULTS, then --config FILE, then the flags given: the options of one run."""
    given = vars(_train_parser().parse_args(list(argv)))
    cfg = _config_args(given["config"]) if "config" in given else {}
    return {**cfg, **given}


_HINTS = {errno.ENOSPC: "free some space or choose another --out",
          errno.EROFS: "choose --out on a writable file system",
          errno.EACCES: "choose --out where you may write", errno.EPERM: "choose another --out",
          errno.ENOTDIR: "a part of the path is a file, not a folder",
          errno.EDQUOT: "disk quota exceeded; free some space or choose another --out"}


def os_error_line(e: OSError) -> str:
    """One line for an ``OSError``: the file, the system's reason and what to do."""
    if e.errno is None or e.strerror is None:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    where = f"{e.filename}: " if e.filename else ""
    hint = f" ({_HINTS[e.errno]})" if e.errno in _HINTS else ""
    return f"{where}{e.strerror.lower()}{hint}"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"nodegrad: warning: {str(message).splitlines()[0]}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nodegrad`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        if argv and argv[0] == "train":
            return train(parse_train_args(argv[1:]))
        if argv and argv[0] == "gradcheck":
            from .gradcheck import run as gradcheck_run

            return gradcheck_run(argv[1:])
        if argv and argv[0] == "diagnose":
            from .diagnose import run as diagnose_run

            return diagnose_run(argv[1:])
        if argv and argv[0] == "export":
            from .export import run as export_run

            return export_run(argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "evaluate":
            return evaluate_run(args.run_dir)
        if args.command == "info":
            return info()
        _parser().print_help()
        return 0 if not argv else 2
    except UsageError as e:
        print(f"nodegrad: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, DeviceError, ValueError, ImportError, NonFiniteError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"nodegrad: error: {msg}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `nodegrad info | head`
        sys.stdout = open(os.devnull, "w")  # keeps the flush at exit quiet
        return 0
    except OSError as e:  # a full or read-only disk, permissions, --out under a file, ...
        print(f"nodegrad: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nodegrad: interrupted; continue with --resume", file=sys.stderr)
        return 130
