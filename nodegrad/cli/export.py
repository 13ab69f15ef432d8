"""``nodegrad export RUN_DIR --format onnx [--out FILE]``: a finished run's model as ONNX.

The model is rebuilt from the run's ``config.json``, its final (or last saved) weights are
loaded, and its forward is traced on two samples of its dataset's test set; the batch axis
stays dynamic. An ensemble run writes one file per member (``member-K/model.onnx``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..io import CheckpointError, load
from .args import Parser, choice, int_at_least
from .train import UsageError, build_model, load_data, read_run_config


def parser(prog: str = "nodegrad export") -> Parser:
    """The options of ``nodegrad export``."""
    from ..onnx._common import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = Parser(prog=prog, description="Export a finished run's model (ONNX: weights as "
               "initializers, the batch axis dynamic), checked by onnx's full checker.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", type=choice(["onnx"], "format"), default="onnx",
                   help="the exchange format (onnx)")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=int_at_least(MIN_OPSET), default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    return p


def _weights(d: Path) -> dict:
    path = d / "model.safetensors"
    if not path.exists():
        path = d / "checkpoint.safetensors"
    if not path.exists():
        raise CheckpointError(f"{d} has no weights yet (train it first)")
    tensors = load(path)
    return {k[6:] if k.startswith("model/") else k: v for k, v in tensors.items()
            if not k.startswith("state/")}


def run(argv: Sequence[str]) -> int:
    """Run ``nodegrad export`` with ``argv`` (the words after ``export``)."""
    from ..onnx import export
    from ..onnx._common import MAX_OPSET
    from ..tensor import Tensor
    from ..train.checkpoint import check_compatible

    a = parser().parse_args(list(argv))
    if a.opset > MAX_OPSET:
        raise UsageError(f"--opset must be at most {MAX_OPSET}, got {a.opset}")
    out = Path(a.run_dir)
    cfg = out / "config.json"
    if not cfg.exists():
        raise UsageError(f"{out} is not a nodegrad run directory (no config.json)")
    o = read_run_config(out)
    o["device"] = "cpu"
    members = o.get("ensemble", 1)
    if members > 1 and a.out:
        raise UsageError(f"{out} holds an ensemble of {members}; --out names one file (leave "
                         "it out to write member-K/model.onnx for each)")
    dirs = [out / f"member-{i}" for i in range(members)] if members > 1 else [out]
    data = load_data(o["dataset"])
    example = Tensor._of(data.x_test[:2])
    for d in dirs:
        weights = _weights(d)
        model = build_model(o, o["seed"])
        check_compatible(model, weights, str(d))
        model.load_state_dict(weights)
        target = Path(a.out) if a.out else d / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        export(model, example, target, opset=a.opset)
        print(f"wrote {target} ({o['model']}, input {tuple(example.shape[1:])} per example, "
              f"opset {a.opset})")
    return 0
