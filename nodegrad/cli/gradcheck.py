"""``nodegrad gradcheck``: a model's autodiff gradients against central finite differences.

Two sources of a model:

- ``--model NAME``: a zoo model (``nodegrad.models.REGISTRY``) on a batch of ``--batch-size``
  samples of its own dataset, with its training loss (cross-entropy or MSE).
- ``--module FILE.py:FACTORY`` or ``--module package.module:FACTORY``: your code. ``FACTORY``
  is called with no arguments (or with ``seed=`` when it takes one) and returns either
  ``(model, x, y)``, ``(model, x, y, loss_fn)``, or a bare module; then ``--input-shape``
  gives the shape of a batch (e.g. ``4,40``), ``x`` is N(0, 1) and the loss is the MSE against
  N(0, 1) targets of the output's shape. Without ``loss_fn``, integer ``y`` means
  cross-entropy and float ``y`` MSE.

It prints the worst relative error per parameter and exits 0 when every one is at most
``--tol``, 1 when one exceeds it, and 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import _backend as B
from .args import Parser, count, positive_float, positive_int
from .train import UsageError

np = B.np
DEFAULT_TOL = 1e-5


def _shape(s: str) -> tuple:
    try:
        shape = tuple(int(p) for p in s.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 4,40, got "
                                         f"{s!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected sizes >= 1 such as 4,40, got {s!r}")
    return shape


def parser(prog: str = "nodegrad gradcheck") -> Parser:
    """The options of ``nodegrad gradcheck`` (one-line errors, like the other subcommands)."""
    from ..models import REGISTRY

    p = Parser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
               description="Compare every parameter's autodiff gradient with central finite "
               "differences in float64 (on a float64 copy of the model). Exit status: 0 all "
               "within --tol, 1 a gradient disagrees, 2 bad input.",
               epilog="FACTORY returns (model, x, y), (model, x, y, loss_fn), or a module "
               "(then give --input-shape; the loss is the MSE against random targets). It is "
               "called with seed=SEED when it has a 'seed' parameter.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME",
                     help=f"a zoo model: {', '.join(REGISTRY)}")
    src.add_argument("--module", metavar="FILE.py:FACTORY",
                     help="your factory: path/to/file.py:make or package.module:make")
    p.add_argument("--input-shape", type=_shape, metavar="N,D,...",
                   help="batch shape for a factory that returns a bare module")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="zoo models: samples of the dataset to check on")
    p.add_argument("--eps", type=positive_float, default=1e-6, help="finite-difference step")
    p.add_argument("--max-per-param", type=count, default=50, metavar="N",
                   help="entries checked per parameter, drawn at random (0: all)")
    p.add_argument("--seed", type=count, default=0,
                   help="seed of the model, the batch and the entries drawn")
    p.add_argument("--tol", type=positive_float, default=DEFAULT_TOL,
                   help="largest relative error accepted")
    return p


# --- where the model comes from -----------------------------------------------------------------
def _zoo(name: str, batch: int, seed: int):
    from ..models import REGISTRY, create
    from ..nn import functional as F
    from .train import _loss_and_metrics, load_data

    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    model = create(name, seed=seed)
    data = load_data(spec.dataset)
    n = len(data.x_train)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(batch, n), replace=False))
    loss = _loss_and_metrics(spec.task)[0]
    what = (f"{name} on {len(idx)} samples of {spec.dataset}, "
            f"{'cross-entropy' if loss is F.cross_entropy else 'MSE'}")
    return model, data.x_train[idx], data.y_train[idx], loss, what


def _load_factory(target: str):
    mod_part, sep, attr = target.rpartition(":")
    if not sep or not mod_part or not attr:
        raise UsageError(f"--module expects FILE.py:FACTORY or package.module:FACTORY, got "
                         f"{target!r}")
    if mod_part.endswith(".py") or "/" in mod_part or "\\" in mod_part:
        path = Path(mod_part)
        if not path.is_file():
            raise UsageError(f"--module: no file {mod_part}")
        name = f"_nodegrad_gradcheck_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"--module: cannot import {mod_part} (not a Python file?)")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's code: any error becomes one line
            sys.modules.pop(name, None)
            raise UsageError(f"--module: importing {mod_part} raised {_one_line(e)}") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:  # from the current directory too, as `python -m` would find it
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(mod_part)
        except ModuleNotFoundError as e:
            raise UsageError(f"--module: no module named {e.name!r} (from {target!r})") from None
        except Exception as e:
            raise UsageError(f"--module: importing {mod_part} raised {_one_line(e)}") from None
        finally:
            if added:
                sys.path.remove(cwd)
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and
                       getattr(v, "__module__", None) == module.__name__)
        raise UsageError(f"--module: {mod_part} has no callable {attr!r}"
                         + (f"; it defines {', '.join(found)}" if found else ""))
    return fn


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _user(target: str, input_shape, seed: int):
    from ..nn import Module
    from ..nn import functional as F
    from ..random import manual_seed
    from ..tensor import Tensor

    fn = _load_factory(target)
    manual_seed(seed)
    try:
        takes_seed = "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    try:
        made = fn(seed=seed) if takes_seed else fn()
    except Exception as e:
        raise UsageError(f"--module: {target}() raised {_one_line(e)}") from None
    loss = None
    if isinstance(made, Module):
        if input_shape is None:
            raise UsageError(f"--module: {target}() returned a bare module; pass --input-shape "
                             "N,D,... (or return (model, x, y) from the factory)")
        rng = np.random.default_rng(seed)
        model, x = made, rng.standard_normal(input_shape)
        dt = next((p.dtype for p in model.parameters()), B.float32)
        x = x.astype(dt)
        try:
            out = model(Tensor._of(x))
        except Exception as e:
            raise UsageError(f"--module: the model on input of shape {input_shape} raised "
                             f"{_one_line(e)}") from None
        y = rng.standard_normal(tuple(out.shape))
        return model, x, y, F.mse_loss, f"{target} on N(0, 1) input {input_shape}, MSE"
    if isinstance(made, tuple) and len(made) in (3, 4) and isinstance(made[0], Module):
        model, x, y = made[:3]
        if len(made) == 4:
            loss = made[3]
            if not callable(loss):
                raise UsageError(f"--module: {target}() returned a loss_fn that is not callable "
                                 f"({type(loss).__name__})")
        else:
            ydt = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
            loss = F.cross_entropy if ydt.kind in "iu" else F.mse_loss
        if input_shape is not None:
            raise UsageError("--input-shape applies only to a factory that returns a bare "
                             "module; this one returns its own x")
        name = getattr(loss, "__name__", type(loss).__name__)
        return model, x, y, loss, f"{target} on its x of shape {tuple(np.shape(x))}, {name}"
    raise UsageError(f"--module: {target}() returned {type(made).__name__}; expected an "
                     "nn.Module or a tuple (model, x, y[, loss_fn])")


# --- the command ---------------------------------------------------------------------------------
def run(argv: Sequence[str]) -> int:
    """``nodegrad gradcheck ARGS``: returns the exit status (bad input raises UsageError)."""
    from ..diagnostics.gradcheck import check_gradients, format_gradcheck

    a = parser().parse_args(list(argv))
    if a.model is not None:
        if a.input_shape is not None:
            raise UsageError("--input-shape applies to --module factories, not zoo models")
        model, x, y, loss, what = _zoo(a.model, a.batch_size, a.seed)
    else:
        model, x, y, loss, what = _user(a.module, a.input_shape, a.seed)
    per = None if a.max_per_param == 0 else a.max_per_param
    try:
        rows = check_gradients(model, loss, x, y, eps=a.eps, max_per_param=per, seed=a.seed)
    except Exception as e:
        raise UsageError(f"gradcheck: {_one_line(e)}") from None
    print(f"gradcheck: {what}; float64, eps {a.eps:g}, "
          f"{'all entries' if per is None else f'up to {per} entries'} per parameter")
    print(format_gradcheck(rows, a.tol))
    bad = [r for r in rows if not r["max_rel_error"] <= a.tol]
    worst = max(rows, key=lambda r: r["max_rel_error"])
    if not bad:
        print(f"passed: worst relative error {worst['max_rel_error']:.2e} ({worst['name']}) "
              f"<= tol {a.tol:g}")
        return 0
    idx = ", ".join(map(str, worst["index"]))
    print(f"FAILED: {len(bad)} of {len(rows)} parameters exceed tol {a.tol:g}; worst "
          f"{worst['name']}[{idx}]: autodiff {worst['analytic']:.6g} vs finite differences "
          f"{worst['numeric']:.6g} (relative error {worst['max_rel_error']:.2e})")
    return 1


__all__ = ["run", "parser", "DEFAULT_TOL"]
