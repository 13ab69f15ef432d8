"""draw_graph: boxes for primitive applications and leaves, arrows for data flow, values and
gradients read from the recorded graph, a cap for deep graphs, and the files it writes."""

import re
import shutil

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics.graph import draw_graph
from nodegrad.nn import functional as F

BOX = re.compile(r"^  (n\d+) \[label=\"(.*)\", fillcolor", re.M)


def _boxes(dot: str) -> dict:
    return {k: v.split("\\n") for k, v in BOX.findall(dot)}


def _edges(dot: str) -> list:
    return re.findall(r"^  (\w+) -> (n\d+)", dot, re.M)


def test_dot_product_boxes_values_and_gradients():
    w = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = ng.tensor([4.0, 5.0, 6.0])
    y = (w * x).sum()
    dot = draw_graph(y, values=True, grads=True, params={"w": w})
    boxes = _boxes(dot)
    assert boxes["n0"][0] == "sum" and "() float32" in boxes["n0"]
    assert "value: 32" in boxes["n0"] and "grad: 1" in boxes["n0"]
    assert boxes["n1"][:2] == ["multiply", "(3,) float32"]
    assert "grad: mean 1  std 0" in boxes["n1"]            # d(sum)/d(w*x) = ones
    assert boxes["n2"][0] == "w"
    assert "value: mean 2  std 0.816" in boxes["n2"]       # w = 1, 2, 3
    assert "grad: mean 5  std 0.816" in boxes["n2"]        # dy/dw = x = 4, 5, 6
    assert "min 4  max 6" in boxes["n2"]
    assert sorted(_edges(dot)) == [("c0", "n1"), ("n1", "n0"), ("n2", "n1")]
    assert 'c0 [label="constant\\n(3,) float32' in dot      # x needs no gradient
    assert w.grad is None                                  # the extra backward touched nothing


def test_mlp_graph_names_parameters_and_matches_the_node_count():
    ng.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = ng.randn(5, 4), ng.tensor([0, 1, 1, 0, 1])
    loss = F.cross_entropy(m(x), y)
    dot = draw_graph(loss, params=dict(m.named_parameters()))
    labels = [v[0] for v in _boxes(dot).values()]
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert labels.count(name) == 1
    # Sequential runs the Linear and the ReLU after it as one op, and the drawing shows it
    assert labels.count("linear_relu") == 1 and labels.count("linear") == 1
    assert "relu" not in labels and "cross_entropy" in labels
    # independent count of nodes and parent edges
    nodes, stack, edges = set(), [loss.node], 0
    while stack:
        n = stack.pop()
        if n in nodes:
            continue
        nodes.add(n)
        for p in n.parents:
            if p is not None:
                edges += 1
                if isinstance(p, ng.autodiff.Node):
                    stack.append(p)
    assert len(labels) == len(nodes) + 4
    assert len([e for e in _edges(dot) if e[0].startswith("n")]) == edges
    assert "penwidth=2" in dot.splitlines()[4]               # the output box is marked


def test_grads_leave_grad_and_user_hooks_alone_and_backward_still_works():
    w0 = np.array([[0.1, -0.2], [0.5, 0.3]])
    w = ng.tensor(w0, requires_grad=True)                  # float64
    h = ng.tanh(w @ ng.tensor(np.array([1.0, 2.0])))
    h.retain_grad()
    seen = []
    w.register_hook(lambda g: seen.append(g))
    loss = (h ** 2).sum()
    dot = draw_graph(loss, grads=True, values=True)
    assert h.grad is None and w.grad is None and not seen
    hv = np.tanh(w0 @ [1.0, 2.0])
    g_h = 2 * hv
    assert f"grad: mean {g_h.mean():.3g}" in dot
    loss.backward()
    assert len(seen) == 1
    expected = np.outer(g_h * (1 - hv ** 2), [1.0, 2.0])
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-12)


def test_grads_need_a_live_graph():
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    loss = (w * w).sum()
    loss.backward()
    with pytest.raises(ng.GradError, match="retain_graph"):
        draw_graph(loss, grads=True)
    draw_graph(loss)                                       # the structure is still there
    loss2 = (w * w).sum()
    loss2.backward(retain_graph=True)
    assert "grad: mean 3" in draw_graph(loss2, grads=True)  # 2w = 2, 4


def test_deep_graph_is_walked_iteratively_and_capped():
    x = ng.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    dot = draw_graph(y, max_nodes=50)
    assert len(_boxes(dot)) == 50
    assert "\u2026 4951 more nodes" in dot                  # 5000 nodes + 1 leaf - 50 shown
    assert ("more", "n49") in _edges(dot)


def test_writes_dot_and_falls_back_without_graphviz(tmp_path, monkeypatch):
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    loss = ng.exp(w).sum()
    text = draw_graph(loss, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == text
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="Graphviz"):
        draw_graph(loss, tmp_path / "pic.svg")
    assert not (tmp_path / "pic.svg").exists()
    assert (tmp_path / "pic.dot").read_text() == text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_renders_png_and_svg_with_graphviz(tmp_path):
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    loss = ng.exp(w).sum()
    draw_graph(loss, tmp_path / "g.png", values=True)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    draw_graph(loss, tmp_path / "g.svg")
    assert "<svg" in (tmp_path / "g.svg").read_text()


def test_real_model_on_mnist1d():
    data = ng.data.datasets.mnist1d()
    model = ng.models.create("mnist1d_cnn", seed=0)
    x, y = ng.tensor(data.x_train[:16]), ng.tensor(data.y_train[:16])
    loss = F.cross_entropy(model(x), y)
    dot = draw_graph(loss, values=True, grads=True, params=model)
    labels = [v[0] for v in _boxes(dot).values()]
    for name, _ in model.named_parameters():
        assert labels.count(name) == 1, name
    assert "grad: none" not in dot                          # every box got its gradient
    boxes = _boxes(dot)
    w1 = next(v for v in boxes.values() if v[0] == "conv1.weight")
    assert w1[1] == "(25, 1, 5) float32"


def test_bad_input():
    with pytest.raises(TypeError, match="draw_graph: expected a Tensor"):
        draw_graph(np.ones(3))
    t = ng.tensor([1.0], requires_grad=True) * 2
    with pytest.raises(ValueError, match="max_nodes"):
        draw_graph(t, max_nodes=0)
    with pytest.raises(ValueError, match=r"draw_graph: cannot write 'g\.jpg'"):
        draw_graph(t, "g.jpg")
    with pytest.raises(TypeError, match="params"):
        draw_graph(t, params=[1, 2])
    with pytest.raises(ng.GradError, match="does not require grad"):
        draw_graph(ng.tensor([1.0]), grads=True)
