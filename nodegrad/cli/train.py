"""What the ``nodegrad`` subcommands do: build data, model, optimiser and schedule from options,
train with checkpoints into a run directory, evaluate a run, report the installation."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path

from .. import _backend as B
from ..io import CheckpointError, atomic_write, load, remove_stale_temps, save

np = B.np


class UsageError(ValueError):
    """Bad command-line or config input (exit status 2)."""


DEFAULTS = {"model": "mnist1d_cnn", "dataset": None, "epochs": None, "batch_size": None,
            "optimizer": None, "lr": None, "weight_decay": None, "schedule": "none",
            "dropout": 0.0, "init": "default", "augment": False, "early_stopping": 0,
            "ensemble": 1, "bootstrap": False, "val_fraction": 0.1, "checkpoint_every": 0,
            "seed": 0, "device": "cpu", "out": None, "resume": False, "overwrite": False,
            "quiet": False, "jit": False, "accumulate": 1, "tensorboard": None}
# how many epochs `nodegrad train` runs by default: the MNIST-1D paper's 6,000 steps (150
# epochs) for the fast models, fewer for the CNN and GRU so the default run takes well under
# a minute
QUICK_EPOCHS = {"mnist1d_cnn": 50, "mnist1d_gru": 40}
DATASETS = {"mnist1d": "mnist1d", "mnist1d-shuffled": "mnist1d", "digits": "digits",
            "regression1d": "regression1d"}
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
              "adagrad": "Adagrad", "adadelta": "Adadelta", "nadam": "NAdam"}
SCHEDULES = ("none", "cosine", "step", "exponential", "onecycle", "plateau")
_RUN_KEYS = ("model", "dataset", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
             "dropout", "init", "augment", "early_stopping", "ensemble", "bootstrap",
             "val_fraction", "checkpoint_every", "seed", "accumulate")


# --- building blocks ----------------------------------------------------------------------------
def resolve(opts: dict) -> dict:
    """Fill defaults from the model's registry entry; check the model fits the dataset."""
    from ..models import REGISTRY

    o = {**DEFAULTS, **{k: v for k, v in opts.items() if k != "config"}}
    spec = REGISTRY[o["model"]]
    if o["dataset"] is None:
        o["dataset"] = spec.dataset
    if DATASETS[o["dataset"]] != spec.dataset:
        fits = [n for n, s in REGISTRY.items() if s.dataset == DATASETS[o["dataset"]]]
        raise UsageError(f"model {o['model']} is made for {spec.dataset}, not {o['dataset']}; "
                         f"models for {o['dataset']}: {', '.join(fits)}")
    d = spec.defaults
    if o["epochs"] is None:
        o["epochs"] = d.get("epochs") or QUICK_EPOCHS.get(o["model"], 150)
    for k in ("batch_size", "optimizer", "lr", "weight_decay"):
        if o[k] is None:
            o[k] = d[k]
    if o["dropout"] and "dropout" not in _params(spec.build):
        raise UsageError(f"model {o['model']} has no dropout")
    if o["augment"] and o["dataset"] == "regression1d":
        raise UsageError("--augment has no augmentation for regression1d")
    if o["accumulate"] > 1 and o["jit"]:
        raise UsageError("--jit captures one batch per step; leave it off with --accumulate")
    if o["bootstrap"] and o["ensemble"] < 2:
        raise UsageError("--bootstrap needs --ensemble K with K >= 2")
    B.get_backend(o["device"])  # an unknown or unavailable device fails before any file is written
    if o["tensorboard"]:
        from ..utils.tensorboard import _tbx
        try:
            _tbx()
        except ImportError as e:
            raise UsageError(f"--tensorboard: {e}") from None
    if o["out"] is None:
        o["out"] = _default_out(f"runs/{o['model']}-{o['dataset']}-s{o['seed']}",
                                latest=o["overwrite"])
    return o


def _default_out(base: str, latest: bool) -> str:
    """Without ``--out``: the first unused of ``base``, ``base-2``, ``base-3``, ... so the same
    command run twice never collides; with ``--overwrite``, the latest used one."""
    def name(k: int) -> str:
        return base if k == 1 else f"{base}-{k}"

    k = 1
    while Path(name(k)).is_dir() and any(Path(name(k)).iterdir()):
        k += 1
    return name(max(k - 1, 1)) if latest else name(k)


def _params(fn) -> set:
    import inspect

    return set(inspect.signature(fn).parameters)


def load_data(name: str):
    from ..data import datasets

    if name == "mnist1d-shuffled":
        return datasets.mnist1d(shuffled=True)
    return getattr(datasets, name)()


def _augmentation(dataset: str):
    from ..data import augment

    if dataset.startswith("mnist1d"):
        return augment.RandomShift1d(3, mode="edge")
    if dataset == "digits":
        return augment.RandomTranslate2d(1.0)
    raise UsageError(f"--augment has no augmentation for {dataset}")


def build_model(o: dict, seed: int):
    from ..models import create

    kw = {"init": o["init"]}
    if o["dropout"]:
        kw["dropout"] = o["dropout"]
    model = create(o["model"], seed=seed, **kw)
    return model.to(o["device"]) if o["device"] != "cpu" else model


def build_optimizer(o: dict, model):
    from .. import optim

    cls = getattr(optim, OPTIMIZERS[o["optimizer"]])
    kw = {"lr": o["lr"]}
    if o["weight_decay"]:
        kw["weight_decay"] = o["weight_decay"]
    return cls(model.parameters(), **kw)


def build_schedule(o: dict, opt, steps: int):
    from ..optim import lr_scheduler as S

    s = o["schedule"]
    if s == "none":
        return None
    if s == "cosine":
        return S.CosineAnnealingLR(opt, T_max=steps)
    if s == "step":
        return S.StepLR(opt, step_size=max(1, steps // 3), gamma=0.1)
    if s == "exponential":
        return S.ExponentialLR(opt, gamma=0.01 ** (1 / max(steps, 1)))
    if s == "onecycle":
        return S.OneCycleLR(opt, max_lr=o["lr"], total_steps=steps)
    return S.ReduceLROnPlateau(opt, factor=0.5, patience=3)


def _task(model_name: str) -> str:
    from ..models import REGISTRY

    return REGISTRY[model_name].task


def _loss_and_metrics(task: str):
    from ..nn import functional as F

    if task == "regression":
        return F.mse_loss, ["mse", "r2"]
    return F.cross_entropy, ["accuracy"]


# --- train --------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    """``--out`` must be a folder, or a path whose existing part is one."""
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is a file" if p == out else f"is under {p}, which is a file"
                raise UsageError(f"--out {out} {what}, not a folder")
            return


def _is_run_dir(out: Path) -> bool:
    """Whether ``out`` holds a nodegrad run: a ``config.json`` with a run's options."""
    try:
        cfg = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and {"model", "dataset", "epochs", "seed"} <= cfg.keys()


def read_run_config(out: Path) -> dict:
    """The options of the run in ``out`` (its ``config.json``), defaults filled in; a file that
    is not a run's options (not JSON, another kind of JSON, an unknown model) is a
    :class:`CheckpointError` naming it, not a traceback."""
    from ..models import REGISTRY

    path = out / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not a run's config (not text: {e.reason})") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not a run's config (not valid JSON: {e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a run's config (a JSON {type(cfg).__name__}, "
                              "expected an object of options)")
    missing = [k for k in ("model", "dataset", "epochs", "seed") if k not in cfg]
    if missing:
        raise CheckpointError(f"{path} is not a run's config (no {', '.join(missing)})")
    if cfg["model"] not in REGISTRY or cfg["dataset"] not in DATASETS:
        raise CheckpointError(f"{path} names an unknown model or dataset ({cfg['model']!r} on "
                              f"{cfg['dataset']!r})")
    return {**DEFAULTS, **cfg}


def _check_overwrite(out: Path) -> None:
    """``--overwrite`` deletes ``out``: only a nodegrad run directory, never the current
    directory or one that contains it, nor a symbolic link."""
    here = Path.cwd().resolve()
    if out.is_symlink():
        raise UsageError(f"--overwrite: {out} is a symbolic link; refusing to delete it "
                         "(choose another --out, or remove it yourself)")
    target = out.resolve()
    if target == here or target in here.parents:
        raise UsageError(f"--overwrite: {out} is the current directory or contains it; refusing "
                         "to delete it (choose another --out)")
    if not _is_run_dir(out):
        raise UsageError(f"--overwrite: {out} is not a nodegrad run directory (it holds no "
                         "config.json of a run), so it is left as it is; choose another --out, "
                         "or empty or remove it yourself")


def _check_dir(o: dict) -> Path:
    """The run directory ``--out`` with ``--resume``/``--overwrite`` checked; changes nothing
    on disk (:func:`_make_dir` does, once every other option is checked too)."""
    out = Path(o["out"])
    _check_out(out)
    if o["resume"]:
        if o["overwrite"]:
            raise UsageError("--resume and --overwrite contradict each other")
        if not (out / "config.json").exists():
            raise UsageError(f"cannot resume: {out} holds no run (no config.json)")
        return out
    if out.exists() and any(out.iterdir()):
        if not o["overwrite"]:
            raise UsageError(f"run directory {out} exists; pass --resume to continue it or "
                             "--overwrite to replace it (or choose --out)")
        _check_overwrite(out)
    return out


def _make_dir(o: dict) -> Path:
    """Make the run directory checked by :func:`_check_dir`: an existing run is deleted with
    ``--overwrite`` (checked again right before), a resumed one loses the temporary files a
    killed write left."""
    out = _check_dir(o)
    if o["resume"]:
        remove_stale_temps(out)
        return out
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# schedules whose learning rate follows the run's length (steps = epochs x batches)
_LENGTH_SCHEDULES = ("cosine", "step", "exponential", "onecycle")


def _saved_options(out: Path, given: dict) -> dict:
    """On --resume the run's own options, with --epochs (and output flags) from the command.

    --epochs may change only when the schedule does not depend on the run's length: a cosine,
    step, exponential or one-cycle schedule was built for the saved number of epochs, and
    neither continuing it past its end nor stretching it midway is the schedule of a run of the
    new length."""
    saved = read_run_config(out)
    if "model" in given and given["model"] != saved["model"]:
        raise CheckpointError(f"{out} holds a run of {saved['model']}, not {given['model']}")
    for k in _RUN_KEYS:
        if k in given and given[k] != saved.get(k):
            raise UsageError(f"cannot change --{k.replace('_', '-')} when resuming "
                             f"(the run has {saved.get(k)!r})")
    schedule = saved.get("schedule", "none")
    if "epochs" in given and given["epochs"] != saved.get("epochs") \
            and schedule in _LENGTH_SCHEDULES:
        raise UsageError(f"cannot change --epochs when resuming a run with --schedule "
                         f"{schedule} (its learning rate is laid out over the run's "
                         f"{saved.get('epochs')} epochs); resume with --epochs "
                         f"{saved.get('epochs')} or start a new run")
    return {**saved, **{k: given[k] for k in ("epochs", "quiet", "device", "jit", "tensorboard")
                        if k in given},
            "resume": True, "overwrite": False, "out": str(out)}


def _resume_line(trainer, run_dir: Path, epochs: int) -> str:
    """Where a resumed run continues (or that it had finished)."""
    at = trainer.resumed_from
    if at["epoch"] > epochs or trainer.stop_training:
        return (f"resuming {run_dir}: the run had finished (epoch {at['epoch'] - 1}, step "
                f"{at['step']}); nothing left to train")
    within = f", batch {at['batch']} done" if at["batch"] else ""
    return (f"resuming {run_dir} at epoch {at['epoch']}/{epochs}, step {at['step']}{within} "
            "(the last checkpoint)")


def _setup_member(o: dict, data, seed: int, comm=None) -> dict:
    """Model, optimiser, loss, metrics, loaders and schedule of one member, built in memory
    (no file is read or written): what :func:`_check_setup` builds to validate the options."""
    from .. import data as D

    model = build_model(o, seed)
    opt = build_optimizer(o, model)
    task = _task(o["model"])
    loss_fn, metrics = _loss_and_metrics(task)
    train_set = data.train
    if o["val_fraction"]:
        strat = data.y_train if task == "classification" else None
        try:
            train_set, val_set = D.train_val_split(train_set, o["val_fraction"], seed=0,
                                                   stratify=strat)
        except ValueError as e:
            raise UsageError(f"--val-fraction {o['val_fraction']}: {e}") from None
    if o["bootstrap"]:
        rng = np.random.default_rng(seed)
        train_set = D.Subset(train_set, rng.integers(0, len(train_set), len(train_set)))
    tf = _augmentation(o["dataset"]) if o["augment"] else None
    tl = D.DataLoader(train_set, batch_size=o["batch_size"], shuffle=True, seed=seed,
                      transform=tf, device=o["device"])
    vl = (D.DataLoader(val_set, batch_size=1000, device=o["device"]) if o["val_fraction"]
          else None)
    if comm is not None:  # each rank's share, so that the schedule counts the steps it runs
        from ..train.distributed import shard
        tl = shard(tl, comm)
    steps = -(-len(tl) // o["accumulate"])  # optimiser steps per epoch
    sched = build_schedule(o, opt, o["epochs"] * steps)
    return {"model": model, "opt": opt, "loss_fn": loss_fn, "metrics": metrics, "tl": tl,
            "vl": vl, "sched": sched}


def _check_setup(o: dict, data) -> None:
    """Build the first member in memory, so that an option that fails (a validation share
    that leaves no sample, a model that does not fit) fails before any file changes."""
    _setup_member(o, data, o["seed"])


def _train_member(o: dict, data, run_dir: Path, seed: int, resume: bool):
    from .. import train as T

    comm = _world()
    m = _setup_member(o, data, seed, comm)
    model, opt, loss_fn, metrics = m["model"], m["opt"], m["loss_fn"], m["metrics"]
    tl, vl, sched = m["tl"], m["vl"], m["sched"]
    monitor = "val_loss" if vl is not None else "loss"
    cbs = [T.ModelCheckpoint(run_dir, monitor=monitor)]
    if o["early_stopping"]:
        cbs.append(T.EarlyStopping(monitor, patience=o["early_stopping"]))
    if o["tensorboard"]:  # an ensemble's members log to member-i under it, as their run dirs
        cbs.append(T.TensorBoard(Path(o["tensorboard"]) / run_dir.relative_to(o["out"])))
    main = comm is None or comm.rank == 0
    if not o["quiet"] and main:
        cbs.insert(0, T.ProgressBar())
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if comm is not None:
        comm.barrier()
    if resume and not (run_dir / "checkpoint.safetensors").exists():
        # killed before its first checkpoint: starting over is exactly the uninterrupted run
        if main:
            remove_stale_temps(run_dir)
        if main:
            print(f"resuming {run_dir}: no checkpoint yet (stopped before its first one); training "
              "from the start")
        resume = False
    trainer = T.Trainer(model, loss_fn, opt, tl, vl, epochs=o["epochs"], callbacks=cbs,
                        metrics=metrics, scheduler=sched, run_dir=run_dir,
                        checkpoint_every=o["checkpoint_every"] or None, resume=resume,
                        config=o, progress=False, jit=o["jit"], accumulate=o["accumulate"])
    if trainer.resumed_from is not None and main:
        print(_resume_line(trainer, run_dir, o["epochs"]))
    history = trainer.fit()
    if main:
        save(model.state_dict(), run_dir / "model.safetensors", {"model": o["model"]})
    return model, history, trainer


def _test_report(o: dict, model, data, run_dir: Path, history, plot: bool) -> dict:
    from .. import train as T

    task = _task(o["model"])
    loss_fn, metrics = _loss_and_metrics(task)
    tl = _test_loader(o, data)
    res = T.evaluate(model, tl, loss_fn, metrics + (["f1"] if task != "regression" else []))
    plots = []
    if plot:
        try:
            from ..train import plots as P

            cm = None
            if task == "classification":
                cm = T.metrics.confusion_matrix(data.y_test, T.predict(model, tl),
                                                data.info.classes)
            plots = [str(p) for p in P.plot_run(history, run_dir, cm)]
        except ImportError:
            plots = []
    return {"test": res, "plots": plots}


def _test_loader(o: dict, data):
    from ..data import DataLoader

    return DataLoader(data.test, batch_size=1000, device=o["device"])


def _fmt_test(res: dict) -> str:
    if "accuracy" in res:
        return f"test accuracy {100 * res['accuracy']:.2f} %  (loss {res['loss']:.4f})"
    return f"test mse {res['mse']:.4g}  r2 {res['r2']:.4f}"


def _world():
    """The MPI world when ``mpirun`` started this command as one of several ranks, else None."""
    from ..distributed import init, launched_under_mpi
    return init() if launched_under_mpi() else None


def _on_main(comm, fn, *args):
    """``fn(*args)`` on rank 0; its result, or its usage or file error, on every rank."""
    res = err = None
    if comm is None or comm.rank == 0:
        try:
            res = fn(*args)
        except (UsageError, CheckpointError, OSError) as e:
            if comm is None:
                raise
            err = [type(e).__name__, str(e)]
    if comm is None:
        return res
    res, err = comm.broadcast_json([res, err])
    if err is not None:
        raise (CheckpointError if err[0] == "CheckpointError" else UsageError)(err[1])
    return res


def train(opts: dict) -> int:
    """``nodegrad train``: returns the exit status. Under ``mpirun -np N`` every rank trains
    its share of each batch (data parallel) and rank 0 alone writes and prints."""
    if opts.get("resume") and "out" not in opts:
        raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
    comm = _world()
    main = comm is None or comm.rank == 0
    o = _on_main(comm, resolve, opts)  # rank 0 picks the run directory for all
    out = Path(_on_main(comm, lambda: str(_check_dir(o))))
    if o["resume"]:
        o = resolve(_saved_options(out, opts))
    data = load_data(o["dataset"])
    # every option is checked before a file changes: --overwrite deletes the old run only
    # once the new one can start
    _check_setup(o, data)
    _on_main(comm, lambda: str(_make_dir(o)))
    if main:
        atomic_write(out / "config.json", json.dumps(o, indent=1).encode())
    say = (lambda *a: None) if o["quiet"] or not main else print
    if comm is not None:
        say(f"data parallel over {comm.world_size} ranks, batch {o['batch_size']} per rank")
    steps_of = f" x {o['accumulate']} per step" if o["accumulate"] > 1 else ""
    say(f"training {o['model']} on {o['dataset']}: {o['epochs']} epochs, batch "
        f"{o['batch_size']}{steps_of}, {o['optimizer']} lr {o['lr']}, seed {o['seed']} -> {out}")
    t0 = time.perf_counter()
    before = 0.0  # wall time of the sessions before a resume, from the checkpoints
    if o["ensemble"] == 1:
        model, history, trainer = _train_member(o, data, out, o["seed"], o["resume"])
        before = (trainer.resumed_from or {}).get("wall_time", 0.0)
        if not main:
            return 0
        report = _test_report(o, model, data, out, history, plot=True)
        report["stop_reason"] = history.stop_reason
    else:
        from ..train import Ensemble

        members, histories, member_reports = [], [], []
        for i in range(o["ensemble"]):
            say(f"member {i + 1}/{o['ensemble']} (seed {o['seed'] + i})")
            mdir = out / f"member-{i}"
            model, h, trainer = _train_member(o, data, mdir, o["seed"] + i, o["resume"])
            before += (trainer.resumed_from or {}).get("wall_time", 0.0)
            members.append(model)
            histories.append(h)
            if main:
                member_reports.append(_test_report(o, model, data, mdir, h, plot=True))
        if not main:
            return 0
        ens = Ensemble(members, histories)
        report = {"members": [r["test"] for r in member_reports], "plots": []}
        if _task(o["model"]) == "classification":
            report["test"] = ens.evaluate(data.x_test, data.y_test)
    report["wall_time_s"] = round(before + time.perf_counter() - t0, 2)
    atomic_write(out / "results.json", json.dumps(report, indent=1).encode())
    if o["ensemble"] == 1:
        if report.get("stop_reason"):
            say(report["stop_reason"])
        print(_fmt_test(report["test"]))
    else:
        for i, r in enumerate(report["members"]):
            print(f"member {i + 1}: " + _fmt_test(r))
        if "test" in report:
            t = report["test"]
            print(f"ensemble of {o['ensemble']}: test accuracy {100 * t['ensemble']:.2f} % "
                  f"(members' mean {100 * t['member_mean']:.2f} %)")
    print(f"run directory: {out}")
    if report["plots"]:
        print("plots: " + ", ".join(report["plots"]))
    return 0


# --- evaluate and info --------------------------------------------------------------------------
def evaluate_run(run_dir: str) -> int:
    """``nodegrad evaluate RUN_DIR``: test metrics of the run's final (or last saved) weights."""
    from ..train.checkpoint import check_compatible

    out = Path(run_dir)
    cfg = out / "config.json"
    if not cfg.exists():
        raise UsageError(f"{out} is not a nodegrad run directory (no config.json)")
    o = read_run_config(out)
    dirs = [out / f"member-{i}" for i in range(o.get("ensemble", 1))] \
        if o.get("ensemble", 1) > 1 else [out]
    data = load_data(o["dataset"])
    loss_fn, metrics = _loss_and_metrics(_task(o["model"]))
    from .. import train as T

    models = []
    for d in dirs:
        path = d / "model.safetensors"
        if not path.exists():
            path = d / "checkpoint.safetensors"
        if not path.exists():
            raise CheckpointError(f"{d} has no weights yet (train it first)")
        tensors = load(path)
        weights = {k[6:] if k.startswith("model/") else k: v for k, v in tensors.items()
                   if not k.startswith("state/")}
        model = build_model(o, o["seed"])
        check_compatible(model, weights, str(path))
        model.load_state_dict(weights)
        models.append(model)
        print(f"{d}: " + _fmt_test(T.evaluate(model, _test_loader(o, data), loss_fn, metrics)))
    if len(models) > 1 and _task(o["model"]) == "classification":
        acc = T.Ensemble(models).evaluate(data.x_test, data.y_test)["ensemble"]
        print(f"ensemble of {len(models)}: test accuracy {100 * acc:.2f} %")
    return 0


def _version(mod: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(mod)
    except metadata.PackageNotFoundError:
        return "not installed"


def info() -> int:
    """``nodegrad info``: versions, backends, devices, models and datasets."""
    import nodegrad as ng

    from ..data.datasets import cache_dir
    from ..models import REGISTRY

    print(f"nodegrad {ng.__version__}  python {platform.python_version()}  "
          f"({sys.executable})")
    for pkg in ("numpy", "scipy", "safetensors", "matplotlib", "tqdm", "mnist1d",
                "scikit-learn", "tensorboardX", "cupy-cuda12x"):
        print(f"  {pkg:<13} {_version(pkg)}")
    gpus = "available" if ng.cuda_available() else "not available"
    print(f"backends: numpy (cpu); cupy (cuda) {gpus}")
    print(f"data cache: {cache_dir()}")
    print("models: " + ", ".join(f"{n} ({s.dataset})" for n, s in REGISTRY.items()))
    print("datasets: " + ", ".join(DATASETS))
    print("optimizers: " + ", ".join(OPTIMIZERS) + "; schedules: " + ", ".join(SCHEDULES))
    return 0
