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
    with pytest.raises(TypeError, match="nodegrad never pickles"):
        ng.save({"a": object()}, tmp_path / "x.safetensors")


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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ng.save({"a": ng.ones(2)}, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_symlinked_target_updates_its_target(tmp_path):
    real = tmp_path / "store" / "m.safetensors"
    ng.save({"a": ng.ones(2)}, real)
    link = tmp_path / "m.safetensors"
    link.symlink_to(real)
    ng.save({"a": ng.zeros(2)}, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert ng.load(real)["a"].numpy().tolist() == [0.0, 0.0]


def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"),
                                                     real_replace(a, b))[1])
    ng.save({"a": ng.ones(2)}, tmp_path / "m.safetensors")
    assert events == ["file", "rename", "dir"]


def test_write_errors_name_the_target_and_leave_no_temp_file(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "m.safetensors"
    ng.save({"a": ng.ones(2)}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        ng.save({"a": ng.zeros(2)}, path)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert ng.load(path)["a"].numpy().tolist() == [1.0, 1.0]
    (tmp_path / "ck").mkdir()
    with pytest.raises(IsADirectoryError, match="ck"):
        ng.save({"a": ng.ones(2)}, tmp_path / "ck")


def test_remove_stale_temps(tmp_path):
    from nodegrad.io import remove_stale_temps

    stale = tmp_path / ".checkpoint.safetensors.k2_x9abc.tmp"
    stale.write_bytes(b"half a file")
    keep = [tmp_path / "checkpoint.safetensors", tmp_path / ".hidden", tmp_path / "a.tmp"]
    for p in keep:
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_metadata_json_cannot_encode_names_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\['cfg'\]\['fn'\] is builtin_function"):
        ng.save({"a": ng.ones(2)}, tmp_path / "m.safetensors", {"cfg": {"fn": print}})
    with pytest.raises(TypeError, match=r"metadata\['lr'\]\[1\] is float32 .*x\.item\(\)"):
        ng.save({"a": ng.ones(2)}, tmp_path / "m.safetensors", {"lr": [0.1, np.float32(2)]})
    assert not (tmp_path / "m.safetensors").exists()


class _Evil:
    """Unpickling this would create a folder: loading must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_load_refuses_directories_pickles_and_torch_files(tmp_path):
    import pickle

    ng.save({"a": ng.ones(2)}, tmp_path / "run" / "model.safetensors")
    with pytest.raises(ng.CheckpointError, match="is a directory.*model.safetensors"):
        ng.load(tmp_path / "run")
    marker = tmp_path / "unpickled"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    with pytest.raises(ng.CheckpointError, match="pickle.*safetensors files only.*save_file"):
        ng.load(tmp_path / "evil.pkl")
    assert not marker.exists()
    np.savez(tmp_path / "w.npz", w=np.ones(2))
    with pytest.raises(ng.CheckpointError, match=r"\.npz archive.*save_file"):
        ng.load(tmp_path / "w.npz")
    torch = pytest.importorskip("torch")
    sd = {"w": torch.ones(2)}
    torch.save(sd, tmp_path / "new.pt")
    with pytest.raises(ng.CheckpointError, match=r"torch\.save file.*safetensors files only.*"
                                                 r"safetensors\.torch\.save_file\(torch\.load"):
        ng.load(tmp_path / "new.pt")
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ng.CheckpointError, match="pickle"):
        ng.load(tmp_path / "old.pt")
    # the conversion the message names gives a file nodegrad reads
    st = pytest.importorskip("safetensors.torch")
    st.save_file(torch.load(tmp_path / "new.pt", weights_only=True), tmp_path / "conv.st")
    assert ng.load(tmp_path / "conv.st")["w"].numpy().tolist() == [1.0, 1.0]


def test_a_pytorch_bfloat16_checkpoint_loads_as_bfloat16(tmp_path):
    """It was refused as 'truncated or corrupt', then read as float32; it now loads as bfloat16,
    bit for bit, and ``bfloat16_as_float32=True`` keeps the float32 reading (exact values)."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    w = torch.randn(3, 4).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    st.save_file({"w": w, "b": torch.arange(3.0)}, str(path))
    out = ng.load(path)
    assert out["w"].dtype == ng.bfloat16
    np.testing.assert_array_equal(out["w"].numpy().view(np.uint16), w.view(torch.int16).numpy()
                                  .view(np.uint16))
    np.testing.assert_array_equal(out["b"].numpy(), [0.0, 1.0, 2.0])
    old = ng.load(path, bfloat16_as_float32=True)
    assert old["w"].dtype == ng.float32
    np.testing.assert_array_equal(old["w"].numpy(), w.float().numpy())


def test_a_nested_checkpoint_saves_and_loads_as_torch_save_does(tmp_path):
    # torch.save({"model": ..., "optimizer": ..., "epoch": ...}): tensors under slash-joined
    # paths, the nesting (int keys, tuples, numbers, None) in the header
    ng.manual_seed(0)
    m = ng.nn.Sequential(ng.nn.Linear(3, 4), ng.nn.BatchNorm1d(4))
    opt = ng.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sched = ng.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    m(ng.randn(5, 3)).sum().backward()
    opt.step()
    sched.step()
    ckpt = {"model": m.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": 3, "note": (1.5, None, "x")}
    ng.save(ckpt, tmp_path / "ckpt.pt")
    back = ng.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert back["epoch"] == 3 and back["note"] == (1.5, None, "x")
    assert back["scheduler"] == sched.state_dict()
    m2 = ng.nn.Sequential(ng.nn.Linear(3, 4), ng.nn.BatchNorm1d(4))
    m2.load_state_dict(back["model"])
    opt2 = ng.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])
    for k, s in opt.state_dict()["state"].items():
        np.testing.assert_array_equal(np.asarray(opt2.state_dict()["state"][k]["momentum_buffer"]),
                                      np.asarray(s["momentum_buffer"]))
    with pytest.raises(TypeError, match="'model/x' is object"):
        ng.save({"model": {"x": object()}}, tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="map_location must name a device"):
        ng.load(tmp_path / "ckpt.pt", map_location={"cuda:0": "cpu"})
    kept = ng.load(tmp_path / "ckpt.pt", map_location=lambda storage, loc: storage)
    assert kept["epoch"] == 3  # torch.load's way of reading a GPU checkpoint on a CPU
