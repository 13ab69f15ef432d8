"""check_gradients and `nodegrad gradcheck`: correct models pass on real data, a primitive with a
wrong VJP is caught (non-zero exit), a user's module file is checked, bad input is refused with
one line."""

import sys
import textwrap

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.cli import main
from nodegrad.diagnostics.gradcheck import assert_gradients, check_gradients, format_gradcheck
from nodegrad.nn import functional as F
from nodegrad.primitive import REGISTRY, Primitive
from nodegrad.testing import GradcheckError

# cube with a wrong VJP: 2x² instead of 3x² (a Primitive kept out of the registry, which other
# tests enumerate)
_bad_cube = Primitive("bad_cube", lambda xp, x: x ** 3, (lambda g, ans, x: g * (x * x * 2.0),),
                      None, None, None, "elementwise", "inputs", True, "x³ with a wrong VJP")


class CubeNet(nn.Module):
    """Linear -> x³ (through the wrong primitive when ``bad``) -> Linear."""

    def __init__(self, bad: bool):
        super().__init__()
        self.a, self.b, self.bad = nn.Linear(4, 3), nn.Linear(3, 2), bad

    def forward(self, x):
        h = self.a(x)
        return self.b(_bad_cube(h) if self.bad else h ** 3)


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_digits_mlp_passes_and_the_model_is_untouched():
    data = ng.data.datasets.digits()
    model = ng.models.create("digits_mlp", seed=0)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    rows = check_gradients(model, F.cross_entropy, data.x_train[:8], data.y_train[:8])
    assert [r["name"] for r in rows] == ["linear1.weight", "linear1.bias", "linear2.weight",
                                         "linear2.bias"]
    assert [r["checked"] for r in rows] == [50, 50, 50, 10]
    assert [r["shape"] for r in rows] == [(64, 64), (64,), (10, 64), (10,)]
    assert max(r["max_rel_error"] for r in rows) < 1e-5
    assert all(abs(r["analytic"] - r["numeric"]) < 1e-8 for r in rows)
    for n, p in model.named_parameters():
        assert p.dtype == ng.float32 and p.grad is None
        np.testing.assert_array_equal(p.numpy(), before[n])
    table = format_gradcheck(rows, tol=1e-5)
    lines = table.splitlines()
    assert lines[1].startswith("linear1.weight") and all(ln.endswith("  ok") for ln in lines[1:])


def test_wrong_vjp_is_detected_and_right_one_passes():
    ng.manual_seed(0)
    good, bad = CubeNet(False), CubeNet(True)
    bad.load_state_dict(good.state_dict())
    x, y = np.random.default_rng(0).standard_normal((6, 4)), np.zeros((6, 2))
    ok = check_gradients(good, F.mse_loss, x, y, max_per_param=None)
    assert [r["checked"] for r in ok] == [12, 3, 6, 2] and max(
        r["max_rel_error"] for r in ok) < 1e-6
    rows = {r["name"]: r for r in check_gradients(bad, F.mse_loss, x, y, max_per_param=None)}
    # layers before the cube get 2/3 of the true gradient: relative error 1/3 ... 1/2
    assert 0.3 < rows["a.weight"]["max_rel_error"] < 0.6
    assert rows["b.weight"]["max_rel_error"] < 1e-6      # after the cube, still right
    assert "FAIL" in format_gradcheck(list(rows.values()), tol=1e-5)
    with pytest.raises(GradcheckError, match=r"a\.(weight|bias)\[.*autodiff .* vs finite"):
        assert_gradients(bad, F.mse_loss, x, y)


def test_dropout_in_training_mode_sees_the_same_mask_every_time():
    data = ng.data.datasets.digits()
    model = ng.models.create("digits_mlp", seed=0, dropout=0.5)
    assert model.training
    rows = check_gradients(model, F.cross_entropy, data.x_train[:8], data.y_train[:8],
                           max_per_param=20)
    assert max(r["max_rel_error"] for r in rows) < 1e-5


def test_check_gradients_bad_input():
    m = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="check_gradients: expected an nn.Module"):
        check_gradients(lambda t: t, F.mse_loss, np.ones((1, 2)), np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"eps must be a number in \(0, 1\)"):
        check_gradients(m, F.mse_loss, np.ones((1, 2)), np.ones((1, 1)), eps=0)
    with pytest.raises(ValueError, match="max_per_param must be"):
        check_gradients(m, F.mse_loss, np.ones((1, 2)), np.ones((1, 1)), max_per_param=0)
    with pytest.raises(ValueError, match="scalar"):
        check_gradients(m, lambda o, t: o, np.ones((3, 2)), np.ones((3, 1)))


# --- the command ---------------------------------------------------------------------------
def test_cli_zoo_model_passes(capsys):
    assert main(["gradcheck", "--model", "mnist1d_mlp", "--max-per-param", "20"]) == 0
    out = capsys.readouterr().out
    assert "mnist1d_mlp on 8 samples of mnist1d, cross-entropy" in out
    assert "linear3.bias" in out and out.strip().splitlines()[-1].startswith("passed:")


def test_cli_regression_model_checks_every_entry(capsys):
    assert main(["gradcheck", "--model", "regression_mlp", "--max-per-param", "0",
                 "--batch-size", "4", "--tol", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "MSE" in out and "all entries" in out
    assert "hidden.1.weight         64x64     4096" in out


USER_FILE = """
import numpy as np
import nodegrad as ng
from nodegrad import nn
from nodegrad.primitive import REGISTRY, primitive

bad_tanh = REGISTRY.get("user_bad_tanh") or primitive(
    "user_bad_tanh", lambda xp, x: xp.tanh(x), lambda g, ans, x: g * (1 - ans), saves="out",
    kind="elementwise")


class Net(nn.Module):
    def __init__(self, bad=False):
        super().__init__()
        self.l1, self.l2, self.bad = nn.Linear(3, 5), nn.Linear(5, 2), bad

    def forward(self, x):
        h = self.l1(x)
        return self.l2(bad_tanh(h) if self.bad else ng.tanh(h))


def make(seed=0):
    ng.manual_seed(seed)
    rng = np.random.default_rng(seed)
    return Net(), rng.standard_normal((6, 3)), rng.integers(0, 2, 6)


def make_bad():
    return Net(bad=True), np.ones((4, 3)) * 0.5, np.zeros((4, 2))


def bare():
    return Net()


def boom():
    raise RuntimeError("no weights here\\nsecond line")


def not_a_model():
    return 42
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(textwrap.dedent(USER_FILE))
    yield path
    REGISTRY.pop("user_bad_tanh", None)  # other tests enumerate the registry


def test_cli_user_module_file(user_file, capsys):
    assert main(["gradcheck", "--module", f"{user_file}:make"]) == 0
    out = capsys.readouterr().out
    assert "on its x of shape (6, 3), cross_entropy" in out and "passed" in out
    assert main(["gradcheck", "--module", f"{user_file}:bare", "--input-shape", "4,3"]) == 0
    assert "N(0, 1) input (4, 3), MSE" in capsys.readouterr().out


def test_cli_user_module_by_import_path(user_file, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    monkeypatch.delitem(sys.modules, "my_net", raising=False)  # and removed again afterwards
    assert main(["gradcheck", "--module", "my_net:make", "--seed", "3"]) == 0
    assert "passed" in capsys.readouterr().out


def test_cli_user_module_by_import_path_from_the_current_directory(user_file, capsys,
                                                                   monkeypatch):
    """The console script does not put the current directory on sys.path (python -m does):
    a package.module:FACTORY there was not found."""
    monkeypatch.chdir(user_file.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if p not in ("", ".", str(user_file.parent))])
    monkeypatch.delitem(sys.modules, "my_net", raising=False)
    assert main(["gradcheck", "--module", "my_net:make", "--seed", "3"]) == 0
    assert "passed" in capsys.readouterr().out
    assert str(user_file.parent) not in sys.path  # taken off again


def test_cli_wrong_vjp_exits_nonzero(user_file, capsys):
    assert main(["gradcheck", "--module", f"{user_file}:make_bad"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and out.strip().splitlines()[-1].startswith("FAILED:")
    assert "l1.weight" in out.strip().splitlines()[-1] or "l1.bias" in out


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope"], "unknown model 'nope'; choose from mnist1d_logreg"),
    ([], "one of the arguments --model --module is required"),
    (["--model", "digits_mlp", "--eps", "-1"], "expected a number > 0"),
    (["--model", "digits_mlp", "--max-per-param", "x"], "expected an integer"),
    (["--model", "digits_mlp", "--module", "a.py:f"], "not allowed with argument"),
    (["--model", "digits_mlp", "--input-shape", "2,8"], "--input-shape applies to --module"),
    (["--module", "missing_file.py:make"], "no file missing_file.py"),
    (["--module", "no_colon.py"], "expects FILE.py:FACTORY"),
    (["--module", "surely_not_a_module_xyz:make"], "no module named 'surely_not_a_module_xyz'"),
    (["--module", "{file}:nothere"], "has no callable 'nothere'; it defines Net, bare, boom"),
    (["--module", "{file}:boom"], "raised RuntimeError: no weights here"),
    (["--module", "{file}:not_a_model"], "returned int; expected an nn.Module"),
    (["--module", "{file}:bare"], "pass --input-shape"),
    (["--module", "{file}:bare", "--input-shape", "4,7"], "the model on input of shape (4, 7)"),
    (["--module", "{file}:bare", "--input-shape", "4,-3"], "expected sizes >= 1"),
])
def test_cli_bad_input_one_line(args, needle, user_file, capsys):
    args = [a.replace("{file}", str(user_file)) for a in args]
    assert main(["gradcheck", *args]) == 2
    assert needle in _err_line(capsys)


def test_cli_help_lists_gradcheck(capsys):
    with pytest.raises(SystemExit) as e:
        main(["gradcheck", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-per-param" in out and "FACTORY returns (model, x, y)" in out
    main([])
    assert "gradcheck" in capsys.readouterr().out
