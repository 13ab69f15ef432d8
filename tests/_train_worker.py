"""A tiny training run for the resume tests:
``python _train_worker.py RUN_DIR MODE [KILL_STEP [JIT]]``.

MODE ``full`` trains uninterrupted, ``kill`` SIGKILLs itself after step KILL_STEP (with the
steps since the last checkpoint already in steps.jsonl, and half a checkpoint in a temporary
file, as a kill during a write leaves it), ``resume`` continues from RUN_DIR's checkpoint. The
final weights land in RUN_DIR/final.safetensors. JIT 1 trains with ``fit(jit=True)``.
"""

import os
import signal
import sys

import nodegrad as ng
from nodegrad import nn, train
from nodegrad.data import augment
from nodegrad.nn import functional as F


class Killer(train.Callback):
    def __init__(self, at: int):
        self.at = at

    def on_batch_end(self, tr, logs):
        if tr.step == self.at:
            tr.history.steps.flush()
            ck = tr.checkpoint_path
            (ck.parent / f".{ck.name}.x1y2z3w4.tmp").write_bytes(ck.read_bytes()[:100])
            os.kill(os.getpid(), signal.SIGKILL)


def main(run_dir: str, mode: str, kill_step: int = 0, jit: int = 0) -> None:
    ng.manual_seed(3)
    d = ng.data.datasets.blobs(n=200, classes=3, dim=4, seed=1, n_test=60)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    sched = ng.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=28)
    tl = ng.data.DataLoader(d.train, batch_size=32, shuffle=True,
                            transform=augment.GaussianNoise(0.05))
    vl = ng.data.DataLoader(d.test, batch_size=64)
    cbs = [train.EarlyStopping(patience=50)]
    if mode == "kill":
        cbs.append(Killer(kill_step))
    train.fit(model, F.cross_entropy, opt, tl, vl, epochs=4, callbacks=cbs, scheduler=sched,
              run_dir=run_dir, checkpoint_every=3, resume=mode == "resume", progress=False,
              jit=bool(jit))
    ng.save(model.state_dict(), os.path.join(run_dir, "final.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
