"""Training: fit/evaluate/predict, callbacks, metrics, checkpoints, ensembles, plots.

>>> import nodegrad as ng
>>> from nodegrad import models, train
>>> d = ng.data.datasets.digits()
>>> model = models.create("digits_mlp", seed=0)
>>> opt = ng.optim.Adam(model.parameters(), lr=1e-2)
>>> loader = ng.data.DataLoader(d.train, batch_size=64, shuffle=True, seed=0)
>>> history = train.fit(model, ng.nn.functional.cross_entropy, opt, loader, epochs=5,
...                     progress=False)
>>> train.evaluate(model, ng.data.DataLoader(d.test, 512))["accuracy"] > 0.9
True
"""

from . import callbacks, checkpoint, ensemble, metrics, transfer
from .callbacks import (Callback, EarlyStopping, GradientClipping, HistoryWriter, LRSchedule,
                        ModelCheckpoint, NaNGuard, NonFiniteError, ProgressBar)
from .ensemble import Ensemble, train_ensemble
from .loop import History, Trainer, evaluate, fit, predict
from .tensorboard import TensorBoard
from .transfer import (LoadReport, freeze, load_pretrained, param_groups, replace_head,
                       replace_module, trainable_summary, unfreeze)

__all__ = ["Callback", "EarlyStopping", "Ensemble", "GradientClipping", "History",
           "HistoryWriter", "LRSchedule", "LoadReport", "ModelCheckpoint", "NaNGuard",
           "NonFiniteError", "ProgressBar", "Trainer", "callbacks", "checkpoint", "ensemble",
           "evaluate", "fit", "freeze", "load_pretrained", "metrics", "param_groups", "predict",
           "replace_head", "replace_module", "train_ensemble", "trainable_summary", "transfer",
           "unfreeze", "TensorBoard"]
