"""Regression tests: training metrics against scikit-learn, callbacks, history and ensembles."""

import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, train
from nodegrad.nn import functional as F
from nodegrad.train import metrics as M
from nodegrad.train.history import History

skm = pytest.importorskip("sklearn.metrics")


# --- metrics --------------------------------------------------------------------------------

def test_confusion_matrix_refuses_labels_beyond_num_classes():
    # label 3 with num_classes=2 used to land in cell (1, 1)
    with pytest.raises(ValueError, match="label 3 is out of range for num_classes=2"):
        M.confusion_matrix([0], [3], 2)
    with pytest.raises(ValueError, match="out of range"):
        M.precision_recall_f1([0, 1], [0, 3], num_classes=2)


def test_macro_average_skips_classes_absent_from_targets_and_predictions():
    t, p = [0, 2, 2], [0, 2, 0]  # class 1 appears nowhere
    ref = skm.precision_recall_fscore_support(t, p, average="macro", zero_division=0)[:3]
    assert M.precision_recall_f1(t, p) == pytest.approx(ref)
    assert M.f1_score(t, p, num_classes=5) == pytest.approx(ref[2])


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_precision_recall_f1_averages_match_sklearn(average):
    rng = np.random.default_rng(0)
    for _ in range(30):
        t, p = rng.integers(0, 4, 25), rng.integers(0, 3, 25)
        for zd in (0.0, 1.0):
            ref = skm.precision_recall_fscore_support(t, p, average=average,
                                                      zero_division=zd)[:3]
            got = M.precision_recall_f1(t, p, average, zero_division=zd)
            assert got == pytest.approx(ref)


def test_binary_average_matches_sklearn():
    t, p = [0, 1, 1, 0, 1], [0, 1, 0, 1, 1]
    ref = skm.precision_recall_fscore_support(t, p, average="binary")[:3]
    assert M.precision_recall_f1(t, p, "binary") == pytest.approx(ref)
    with pytest.raises(ValueError, match="average must be one of"):
        M.precision_recall_f1(t, p, "samples")


@pytest.mark.parametrize("normalize", ["true", "pred", "all"])
def test_confusion_matrix_normalize_matches_sklearn(normalize):
    t, p = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 0]
    ref = skm.confusion_matrix(t, p, labels=[0, 1, 2, 3], normalize=normalize)
    np.testing.assert_allclose(M.confusion_matrix(t, p, 4, normalize=normalize), ref)


def test_balanced_accuracy_matches_sklearn():
    t, p = [0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 0, 3]
    assert M.balanced_accuracy(t, p) == pytest.approx(skm.balanced_accuracy_score(t, p))


def test_r2_of_a_constant_target_matches_sklearn():
    # SS_tot = 0 used to divide by 1 instead: -3.0 where scikit-learn gives 0.0
    assert M.r2([1.0, 1, 1], [1.0, 1, 3]) == skm.r2_score([1.0, 1, 1], [1.0, 1, 3]) == 0.0
    assert M.r2([1.0, 1, 1], [1.0, 1, 1]) == 1.0
    t = np.array([[1.0, 0], [1, 1], [1, 2]])
    p = np.array([[1.0, 0], [1, 1], [3, 2]])
    assert M.r2(t, p) == pytest.approx(skm.r2_score(t, p))


def test_regression_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="mse: targets of shape \\(4, 1\\) do not match"):
        M.mse(np.zeros((4, 1)), np.ones((4, 3)))  # used to broadcast silently
    with pytest.raises(ValueError, match="mae: expected targets and predictions"):
        M.mae([], [])


def test_float_labels_with_multiclass_targets_are_refused():
    # float (N,) predictions are one binary logit each: with labels up to 2 that used to
    # score 2/3 for a perfect prediction
    with pytest.raises(ValueError, match="targets must be 0 or 1, got the label 2"):
        M.accuracy([0, 1, 2], np.array([0.0, 1.0, 2.0]))
    assert M.accuracy([0, 1, 2], np.array([0, 1, 2])) == 1.0


def test_ignore_index_targets_are_left_out():
    s = np.array([[1.0, 0], [1, 0], [0, 1]])
    assert M.accuracy([0, -100, 1], s) == 1.0  # cross_entropy's default ignore_index
    assert M.accuracy([0, 7, 1], s[:, :2], ignore_index=7) == 1.0
    np.testing.assert_array_equal(M.confusion_matrix([0, -100, 1], s), [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="negative label -1.*ignore_index=-1"):
        M.accuracy([0, -1, 1], s)


def test_sequence_scores_in_cross_entropy_layout():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5, 7))  # (N, C, T)
    t = rng.integers(0, 5, (4, 7))
    t[0, :3] = -100
    ref = F.cross_entropy(ng.tensor(logits), ng.tensor(t), reduction="none").numpy()
    assert ref.shape == (4, 7)
    keep = t != -100
    want = (logits.argmax(1) == t)[keep].mean()
    assert M.accuracy(t, logits) == pytest.approx(want)


def test_one_hot_and_probability_targets():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 4, 30)
    s = rng.normal(size=(30, 4)).astype(np.float16)
    one_hot = np.eye(4, dtype=np.float32)[t]
    smooth = one_hot * 0.9 + 0.1 / 4
    for target in (one_hot, one_hot.astype(np.int32), smooth):
        assert M.accuracy(target, s) == pytest.approx(skm.accuracy_score(t, s.argmax(1)))
    assert M.top_k_accuracy(one_hot, s, 2) == pytest.approx(
        skm.top_k_accuracy_score(t, s.astype(np.float64), k=2))


def test_multilabel_targets_are_refused_clearly():
    t, logits = np.array([[1, 0, 1], [0, 1, 0]]), np.array([[2.0, -1, 3], [-1, -2, -3]])
    with pytest.raises(ValueError, match="multi-label"):
        M.accuracy(t, logits)
    # the per-label accuracy the message suggests (Keras' binary_accuracy on logits)
    assert M.accuracy(t.ravel(), (logits > 0).ravel()) == pytest.approx(5 / 6)


def test_nan_scores_give_nan_not_a_count():
    s = np.array([[np.nan, 0.0], [0.0, 1.0]])
    assert math.isnan(M.accuracy([0, 1], s))  # argmax landed on the NaN: used to be 1.0
    assert math.isnan(M.top_k_accuracy([0, 1], s, 1))
    assert math.isnan(M.accuracy([0, 1], np.array([np.nan, 1.0])))
    assert math.isnan(M.f1_score([0, 1], s)) and math.isnan(M.balanced_accuracy([0, 1], s))
    with pytest.raises(ValueError, match="NaN"):
        M.confusion_matrix([0, 1], s)


def test_top_k_accuracy_checks_its_input():
    s = np.eye(3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.top_k_accuracy([0, 1, 2], s, 0)
    with pytest.raises(ValueError, match="label 7 is out of range for 3 classes"):
        M.top_k_accuracy([0, 1, 7], s, 1)  # used to count as a miss
    with pytest.raises(ValueError, match="scores of shape \\(N, C\\)"):
        M.top_k_accuracy([0, 1, 2], s[:, 0], 1)
    assert M.top_k_accuracy([0, 1, 2], s, 10) == 1.0  # k >= C, as scikit-learn


def test_integer_labels_shaped_n_by_1():
    # argmax over a single column made every prediction class 0
    assert M.accuracy([1, 2, 1], np.array([[1], [2], [1]])) == 1.0
    np.testing.assert_array_equal(M.confusion_matrix([0, 1], np.array([[1], [1]])),
                                  [[0, 1], [0, 1]])


def test_binary_logits_and_int32_targets():
    z = np.array([-1.0, 0.5, 0.0, 2.0], np.float16)
    t = np.array([0, 1, 1, 1], np.int32)
    assert M.accuracy(t, z) == skm.accuracy_score(t, z > 0)
    assert M.accuracy(t.astype(np.float32).reshape(-1, 1), z.reshape(-1, 1)) == 0.75


# --- callbacks and history ------------------------------------------------------------------

def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _model(seed):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 2))


def _fit(model, lr, epochs, callbacks, **kw):
    x, y = _data()
    ds = ng.data.ArrayDataset(x, y)
    return train.fit(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=lr),
                     ng.data.DataLoader(ds, 16), ng.data.DataLoader(ds, 64), epochs=epochs,
                     callbacks=callbacks, progress=False, **kw)


def test_early_stopping_instance_reused_for_a_new_run_starts_fresh():
    es = train.EarlyStopping("val_loss", patience=1)
    m1 = _model(0)
    _fit(m1, 0.5, 5, [es])
    m2 = _model(1)
    h = _fit(m2, 0.01, 3, [es])
    # the first run's best used to stop the second at once and load m1's weights into m2
    assert len(h) == 3 and h.stop_reason is None
    assert not np.array_equal(m2.state_dict()["0.weight"].numpy(),
                              m1.state_dict()["0.weight"].numpy())


def test_early_stopping_state_survives_a_resume(tmp_path):
    es = train.EarlyStopping("val_loss", patience=50, min_delta=10.0)  # never improves again
    _fit(_model(0), 0.1, 2, [es], run_dir=tmp_path)
    es2 = train.EarlyStopping("val_loss", patience=50, min_delta=10.0)
    _fit(_model(0), 0.1, 4, [es2], run_dir=tmp_path, resume=True)
    assert es2.best_epoch == 0 and es2.wait == 3


def test_early_stopping_baseline_and_negative_min_delta():
    es = train.EarlyStopping("val_loss", patience=2, baseline=1e-9)  # never beaten
    h = _fit(_model(0), 0.1, 10, [es])
    assert len(h) == 2 and "beaten" in h.stop_reason
    assert train.EarlyStopping(min_delta=-0.5).min_delta == 0.5  # Keras takes abs()


def test_early_stopping_counts_a_nan_monitor_as_no_improvement():
    class NaNVal(train.Callback):
        def on_epoch_end(self, tr, logs):
            logs["val_loss"] = float("nan")

    es = train.EarlyStopping("val_loss", patience=2)
    h = _fit(_model(0), 0.1, 10, [NaNVal(), es])
    assert len(h) == 2 and es.best_epoch == -1


def test_callback_modes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="ModelCheckpoint: mode must be 'min' or 'max'"):
        train.ModelCheckpoint(tmp_path, mode="Max")  # used to act as mode="max" silently
    with pytest.raises(ValueError, match="History.best: mode"):
        History([{"a": 1.0}]).best("a", "maximum")


def test_plateau_schedule_with_an_unlogged_monitor_is_an_error():
    model = _model(0)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    sched = ng.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    cb = train.LRSchedule(sched, monitor="val_acc")  # a typo used to step on the train loss
    x, y = _data()
    ds = ng.data.ArrayDataset(x, y)
    with pytest.raises(train.callbacks.MonitorError, match="monitor 'val_acc' is not logged"):
        train.fit(model, F.cross_entropy, opt, ng.data.DataLoader(ds, 16),
                  ng.data.DataLoader(ds, 64), callbacks=[cb], progress=False)


def test_history_best_passes_over_nan():
    h = History([{"epoch": 1, "val_loss": float("nan")}, {"epoch": 2, "val_loss": 0.5},
                 {"epoch": 3, "val_loss": 0.3}])
    assert h.best()["epoch"] == 3  # used to return the NaN epoch
    assert h.best("val_loss", "max")["epoch"] == 2
    with pytest.raises(KeyError, match="NaN in every epoch"):
        History([{"val_loss": float("nan")}]).best()


def test_history_csv_quotes_and_resume_rewrites_without_duplicates(tmp_path):
    import csv

    from nodegrad.train.callbacks import write_history

    h = History([{"epoch": 1, "loss": 0.5, "note": 'a, "b"\nc'}])
    write_history(h, tmp_path)
    with open(tmp_path / "history.csv", newline="") as f:
        assert list(csv.DictReader(f))[0]["note"] == 'a, "b"\nc'
    _fit(_model(0), 0.1, 2, [], run_dir=tmp_path / "r")
    _fit(_model(0), 0.1, 4, [], run_dir=tmp_path / "r", resume=True)
    with open(tmp_path / "r" / "history.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]


def test_plot_monitor_direction():
    from nodegrad.train import plots

    assert [plots._mode(k) for k in ("val_loss", "val_f1", "val_r2", "val_mae")] == \
        ["min", "max", "max", "min"]


# --- ensembles ------------------------------------------------------------------------------

def test_ensemble_of_binary_single_logit_models():
    x, y = _data()
    yf = y.astype(np.float32)

    def bce(o, t):
        return F.binary_cross_entropy_with_logits(o.reshape(-1), t)

    ens = train.train_ensemble(lambda: nn.Linear(4, 1),
                               lambda m: ng.optim.SGD(m.parameters(), lr=0.5), bce,
                               ng.data.ArrayDataset(x, yf), k=3, epochs=5, progress=False)
    res = ens.evaluate(x, yf)
    # the softmax of one logit is 1.0: the ensemble used to predict class 1 everywhere (~0.5)
    assert res["ensemble"] >= min(res["members"]) > 0.8
    by_hand = np.mean([1 / (1 + np.exp(-train.predict(m, x).astype(np.float64)))
                       for m in ens.members], axis=0)
    np.testing.assert_allclose(ens.predict_proba(x), by_hand, rtol=1e-12)
    np.testing.assert_array_equal(ens.predict(x), (by_hand.ravel() > 0.5).astype(np.int64))


def test_ensemble_averages_softmax_probabilities_as_by_hand():
    x, y = _data()
    members = [_model(s) for s in range(3)]
    ens = train.Ensemble(members)
    outs = [train.predict(m, x).astype(np.float64) for m in members]
    by_hand = np.mean([np.exp(o) / np.exp(o).sum(1, keepdims=True) for o in outs], axis=0)
    np.testing.assert_allclose(ens.predict_proba(x), by_hand, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ens.evaluate(x, y)["ensemble"] == pytest.approx(
            skm.accuracy_score(y, by_hand.argmax(1)))


def test_epoch_metrics_over_uneven_batches_equal_the_concatenated_metric():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)  # batches of 16, 16, 16, 2
    y = rng.integers(0, 3, 50)
    ng.manual_seed(0)
    m = nn.Linear(4, 3)
    dl = ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=16)
    h = train.fit(m, F.cross_entropy, ng.optim.SGD(m.parameters(), lr=0.0), dl,
                  metrics=["accuracy", "top5"], progress=False)  # lr 0: fixed outputs
    out = train.predict(m, x)
    assert h.last["accuracy"] == pytest.approx(skm.accuracy_score(y, out.argmax(1)))
    assert h.last["loss"] == pytest.approx(
        F.cross_entropy(ng.tensor(out), ng.tensor(y)).item(), rel=1e-6)
