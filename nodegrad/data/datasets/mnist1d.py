"""MNIST-1D (Greydanus & Kobak, 2020): ten 1D digit templates, randomly transformed, length 40.

Generated locally with the ``mnist1d`` package's own generator and its default arguments
(5,000 samples: 4,000 train / 1,000 test, seed 42; pinned in ``DEFAULT_ARGS``), then cached
as ``.npz``; the package's pickle download is never used. The shuffled variant applies one
fixed permutation to the 40 positions (the one ``shuffle_seq=True`` draws), which keeps every
value but destroys locality.
"""

from __future__ import annotations

import hashlib
import json
import random

from ... import _backend as B
from .base import DatasetInfo, Splits, cache_dir, load_npz, save_npz

np = B.np

SOURCE = "https://github.com/greydanus/mnist1d (generated locally with mnist1d.data.make_dataset)"
LICENCE = "Apache-2.0 (the mnist1d package and its generator)"
CITATION = ("S. Greydanus and D. Kobak, 'Scaling Down Deep Learning with MNIST-1D', ICML 2024; "
            "arXiv:2011.14439")
_KEYS = ("x", "y", "x_test", "y_test", "t", "perm")
# The generator's default arguments (mnist1d 0.0.2, get_dataset_args()), pinned so that the data
# and its cache key stay the same if a later release changes them; a cache hit then needs no
# import of mnist1d (which also imports matplotlib).
DEFAULT_ARGS = {"num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60],
                "scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25,
                "iid_noise_scale": 2e-2, "shear_scale": 0.75, "shuffle_seq": False,
                "final_seq_length": 40, "seed": 42}


def _generator():
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nodegrad.data.datasets.mnist1d needs the mnist1d package: "
                          "pip install mnist1d") from e
    return get_dataset_args, make_dataset


def _generate() -> dict:
    """Run the package's generator with its defaults, leaving the global RNGs as they were."""
    get_dataset_args, make_dataset = _generator()
    args = get_dataset_args()
    for k, v in DEFAULT_ARGS.items():  # today these equal the package's defaults
        setattr(args, k, v)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
        # make_dataset's last global draw is the batch shuffle; with shuffle_seq=True it would
        # next draw exactly this permutation of the positions
        perm = np.random.permutation(args.final_seq_length)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": d["x"].astype(B.float32), "y": d["y"].astype(B.int64),
            "x_test": d["x_test"].astype(B.float32), "y_test": d["y_test"].astype(B.int64),
            "t": np.asarray(d["t"], dtype=B.float32), "perm": perm.astype(B.int64)}


def _cache_name() -> str:
    key = hashlib.sha256(json.dumps(DEFAULT_ARGS, sort_keys=True).encode()).hexdigest()[:12]
    return f"mnist1d-{key}.npz"


def mnist1d(shuffled: bool = False, channel_axis: bool = False, root=None,
            regenerate: bool = False) -> Splits:
    """MNIST-1D as float32 signals (N, 40) (or (N, 1, 40) with ``channel_axis``) and int64 labels.

    ``shuffled`` gives the variant with the spatial positions permuted (a fixed permutation).
    The first call generates the data (a few seconds) into the cache (see ``cache_dir``).
    """
    path = cache_dir(root) / _cache_name()
    d = None if regenerate else load_npz(path, _KEYS)
    if d is None:
        d = _generate()
        save_npz(path, **d)
    x, xt = d["x"], d["x_test"]
    if shuffled:
        x, xt = x[:, d["perm"]], xt[:, d["perm"]]
    if channel_axis:
        x, xt = x[:, None, :], xt[:, None, :]
    info = DatasetInfo(
        name="mnist1d-shuffled" if shuffled else "mnist1d",
        description=("MNIST-1D: 1D signals of the ten digit templates, padded, translated, "
                     "scaled, sheared and noised; standardised to mean 0, std 1"
                     + ("; positions shuffled by a fixed permutation" if shuffled else "")),
        classes=10, input_shape=tuple(x.shape[1:]), source=SOURCE, licence=LICENCE,
        citation=CITATION,
        extra={"t": d["t"], "permutation": d["perm"] if shuffled else None, "cache": str(path)})
    return Splits(np.ascontiguousarray(x), d["y"], np.ascontiguousarray(xt), d["y_test"], info)
