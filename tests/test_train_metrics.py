import numpy as np
import pytest

from nodegrad.train import metrics as M

skm = pytest.importorskip("sklearn.metrics")


@pytest.fixture
def cls():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 200)
    s = rng.normal(size=(200, 5))
    s[np.arange(200), t] += rng.normal(1.0, 1.0, 200)
    return t, s


def test_classification_matches_sklearn(cls):
    t, s = cls
    p = s.argmax(1)
    assert M.accuracy(t, s) == pytest.approx(skm.accuracy_score(t, p))
    assert M.top_k_accuracy(t, s, 2) == pytest.approx(skm.top_k_accuracy_score(t, s, k=2))
    np.testing.assert_array_equal(M.confusion_matrix(t, p, 5), skm.confusion_matrix(t, p))
    pr, rc, f1 = M.precision_recall_f1(t, s)
    ref = skm.precision_recall_fscore_support(t, p, average="macro", zero_division=0)
    assert (pr, rc, f1) == pytest.approx(ref[:3])
    per = M.precision_recall_f1(t, p, average=None)
    ref = skm.precision_recall_fscore_support(t, p, average=None, zero_division=0)
    for a, b in zip(per, ref[:3]):
        np.testing.assert_allclose(a, b)


def test_missing_class_counts_zero():
    t, p = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    pr, rc, f1 = M.precision_recall_f1(t, p, average=None, num_classes=3)
    assert pr[1] == rc[2] == f1[1] == 0.0


def test_regression_matches_sklearn():
    rng = np.random.default_rng(1)
    t = rng.normal(size=100)
    p = t + rng.normal(0, 0.3, 100)
    assert M.mse(t, p) == pytest.approx(skm.mean_squared_error(t, p))
    assert M.mae(t, p) == pytest.approx(skm.mean_absolute_error(t, p))
    assert M.r2(t, p.reshape(-1, 1)) == pytest.approx(skm.r2_score(t, p))


def test_tensors_accepted(cls):
    import nodegrad as ng

    t, s = cls
    assert M.accuracy(ng.tensor(t), ng.tensor(s)) == pytest.approx(M.accuracy(t, s))
