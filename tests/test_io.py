"""Checkpoints: safetensors + JSON, atomic writes, corrupt files, PyTorch interchange."""

import os

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn


def _model():
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(32, 2))


def test_roundtrip_with_metadata(tmp_path):
    m = _model()
    path = tmp_path / "ck" / "model.safetensors"
    ng.save(m.state_dict(), path, {"epoch": 3, "note": "ok"})
    sd, meta = ng.load(path, with_metadata=True)
    assert meta == {"epoch": 3, "note": "ok"}
    m2 = _model()
    m2.load_state_dict(sd)
    x = ng.randn(2, 1, 10)
    m.eval()
    m2.eval()
    np.testing.assert_array_equal(m(x).numpy(), m2(x).numpy())


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    ng.save({"a": ng.ones(3)}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ng.save({"a": ng.zeros(3)}, path)
    monkeypatch.undo()
    assert ng.load(path)["a"].numpy().tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "m.safetensors"
    ng.save({"a": ng.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ng.CheckpointError, match="truncated or corrupt"):
        ng.load(path)
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(ng.CheckpointError):
        ng.load(path)
    with pytest.raises(ng.CheckpointError, match="no checkpoint"):
        ng.load(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError):
        ng.save({"a": [1, 2]}, tmp_path / "x.safetensors")


def test_pytorch_interchange(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    tm = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4),
                             torch.nn.Flatten(), torch.nn.Linear(32, 2))
    tm.eval()
    st.save_file(tm.state_dict(), str(tmp_path / "torch.safetensors"))
    m = _model()
    m.load_state_dict(ng.load(tmp_path / "torch.safetensors"))
    m.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 10)).astype(np.float32)
    np.testing.assert_allclose(m(ng.tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    ng.save(m.state_dict(), tmp_path / "ours.safetensors")
    back = st.load_file(str(tmp_path / "ours.safetensors"))
    tm.load_state_dict(back)
