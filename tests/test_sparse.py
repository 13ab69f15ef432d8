"""Sparse COO tensors against PyTorch's: construction, coalescing, products, sums, softmax,
gradients in the values and the dense operand, and a graph convolution trained both ways."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

IDX = [[0, 1, 1, 0, 2], [2, 0, 2, 2, 1]]  # (0, 2) twice: an uncoalesced tensor
VAL = [1.0, 2.0, 3.0, 4.0, -1.5]


def _pair(values=VAL, size=(3, 3), requires_grad=False):
    t = torch.sparse_coo_tensor(torch.tensor(IDX), torch.tensor(values, dtype=torch.float64),
                                size, requires_grad=requires_grad)
    n = ng.sparse_coo_tensor(IDX, np.array(values), size, requires_grad=requires_grad)
    return t, n


def _same_sparse(n, t):
    assert n.is_sparse and n.layout is ng.sparse_coo
    assert tuple(n.shape) == tuple(t.shape) and n._nnz() == t._nnz()
    assert n.sparse_dim() == t.sparse_dim() and n.dense_dim() == t.dense_dim()
    np.testing.assert_array_equal(n._indices().numpy(), t._indices().numpy())
    np.testing.assert_allclose(n._values().detach().numpy(), t._values().detach().numpy(),
                               rtol=1e-14)


def test_construction_coalesce_and_dense():
    t, n = _pair()
    assert n.is_coalesced() is t.is_coalesced() is False
    _same_sparse(n.coalesce(), t.coalesce())
    assert n.coalesce().is_coalesced()
    np.testing.assert_array_equal(n.to_dense().numpy(), t.to_dense().numpy())
    t2 = torch.sparse_coo_tensor(torch.tensor(IDX), torch.tensor(VAL))  # size inferred
    n2 = ng.sparse_coo_tensor(IDX, VAL)
    assert tuple(n2.shape) == tuple(t2.shape) and n2.dtype == ng.float32
    with pytest.raises(RuntimeError, match="coalesce"):
        n.indices()
    np.testing.assert_array_equal(n.coalesce().indices().numpy(), t.coalesce().indices().numpy())


def test_dense_to_sparse_and_hybrid():
    x = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -3.0]])
    _same_sparse(ng.tensor(x).to_sparse(), torch.tensor(x).to_sparse())
    y = np.zeros((3, 2, 2))
    y[1, 0, 1] = 4.0
    y[2] = 1.0
    tn, nn_ = torch.tensor(y).to_sparse(1), ng.tensor(y).to_sparse(1)
    _same_sparse(nn_, tn)
    np.testing.assert_array_equal(nn_.to_dense().numpy(), y)


@pytest.mark.parametrize("wrap", ["sparse.mm", "mm", "matmul", "@", "spmm"])
def test_sparse_dense_product_and_gradients(wrap):
    t, n = _pair(requires_grad=True)
    d = np.arange(6.0).reshape(3, 2) - 2
    td = torch.tensor(d, requires_grad=True)
    nd = ng.tensor(d, requires_grad=True)
    fn = {"sparse.mm": (torch.sparse.mm, ng.sparse.mm), "mm": (torch.mm, ng.mm),
          "matmul": (torch.matmul, ng.matmul), "@": (lambda a, b: a @ b,) * 2,
          "spmm": (torch.spmm, ng.spmm)}[wrap]
    to, no = fn[0](t, td), fn[1](n, nd)
    np.testing.assert_allclose(no.detach().numpy(), to.detach().numpy(), rtol=1e-14)
    w = np.array([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]])
    (to * torch.tensor(w)).sum().backward()
    (no * ng.tensor(w)).sum().backward()
    np.testing.assert_allclose(nd.grad.numpy(), td.grad.numpy(), rtol=1e-14)
    if t.grad.is_sparse:
        _same_sparse(n.grad, t.grad.coalesce())
    else:  # torch.mm's gradient of a sparse operand is dense: it agrees at the stored entries
        mask = t.detach().coalesce().to_dense() != 0
        np.testing.assert_allclose(n.grad.to_dense().numpy(), (t.grad * mask).numpy(),
                                   rtol=1e-14)


def test_values_that_require_grad_receive_it():
    v = np.array(VAL)
    tv, nv = torch.tensor(v, requires_grad=True), ng.tensor(v, requires_grad=True)
    ts = torch.sparse_coo_tensor(torch.tensor(IDX), tv, (3, 3))
    ns = ng.sparse_coo_tensor(IDX, nv, (3, 3))
    assert not ns.is_leaf and ns.requires_grad
    d = np.linspace(-1, 1, 12).reshape(3, 4)
    (torch.sparse.mm(ts, torch.tensor(d)).tanh().sum() + ts.to_dense().pow(2).sum()).backward()
    (ng.sparse.mm(ns, ng.tensor(d)).tanh().sum() + ns.to_dense().pow(2).sum()).backward()
    np.testing.assert_allclose(nv.grad.numpy(), tv.grad.numpy(), rtol=1e-13)


def test_dense_times_sparse_and_vector():
    t, n = _pair()
    d = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose((ng.tensor(d) @ n).numpy(), (torch.tensor(d) @ t).numpy())
    vec = np.array([1.0, -1.0, 2.0])
    np.testing.assert_allclose((n @ ng.tensor(vec)).numpy(),
                               torch.mv(t, torch.tensor(vec)).numpy())


def test_arithmetic_and_flags_follow_pytorch():
    t, n = _pair()
    tc, nc = t.coalesce(), n.coalesce()
    for tr, nr in [(tc + tc, nc + nc), (t + t, n + n), (tc * 2, nc * 2), (t * 2, n * 2),
                   (-tc, -nc), (tc / 4, nc / 4), (tc.t(), nc.t()), (tc - t, nc - n)]:
        assert nr.is_coalesced() == tr.is_coalesced()
        np.testing.assert_allclose(nr.to_dense().numpy(), tr.to_dense().numpy())
    dense = np.arange(9.0).reshape(3, 3)
    _same_sparse(n * ng.tensor(dense), (t * torch.tensor(dense)).coalesce())
    np.testing.assert_allclose((ng.tensor(dense) + n).numpy(),
                               (torch.tensor(dense) + t).numpy())
    with pytest.raises(TypeError, match=r"add\(dense, sparse\)"):
        n + ng.tensor(dense)
    _same_sparse(ng.sin(n), torch.sin(t).coalesce())
    _same_sparse(ng.tanh(nc), torch.tanh(tc))


def test_sparse_mask_and_legacy_constructors():
    t, n = _pair()
    d = np.arange(9.0).reshape(3, 3)
    td, nd = torch.tensor(d, requires_grad=True), ng.tensor(d, requires_grad=True)
    for mt, mn in [(t, n), (t.coalesce(), n.coalesce())]:
        rt, rn = td.sparse_mask(mt), nd.sparse_mask(mn)
        assert rn.is_coalesced() == rt.is_coalesced()
        _same_sparse(rn, rt)
    nd.sparse_mask(n.coalesce()).to_dense().sum().backward()
    td.sparse_mask(t.coalesce()).to_dense().sum().backward()
    np.testing.assert_array_equal(nd.grad.numpy(), td.grad.numpy())
    with pytest.raises(ng.ShapeError, match="differs from the mask"):
        ng.ones((2, 3)).sparse_mask(n)
    legacy = ng.sparse.FloatTensor(ng.tensor(IDX), ng.tensor(VAL), (3, 3))
    assert legacy.dtype == ng.float32 and not legacy.is_coalesced()
    assert ng.sparse.DoubleTensor(ng.tensor(IDX), ng.tensor(VAL), (3, 3)).dtype == ng.float64


def test_top_level_functions_route_sparse_operands():
    t, n = _pair()
    d = np.ones((3, 3))
    assert float(ng.sum(n)) == float(torch.sum(t))
    _same_sparse(ng.sum(n, 1), torch.sum(t, 1).coalesce())
    np.testing.assert_array_equal((ng.tensor(d) - n).numpy(), (torch.tensor(d) - t).numpy())
    np.testing.assert_array_equal(ng.add(ng.tensor(d), n).numpy(),
                                  torch.add(torch.tensor(d), t).numpy())
    for tr, nr in [(torch.pow(t, 2), ng.pow(n, 2)), (t ** 0.5, n ** 0.5),
                   (torch.div(t, 4), ng.div(n, 4))]:
        np.testing.assert_allclose(nr.to_dense().numpy(), tr.to_dense().numpy(), rtol=1e-15)
    with pytest.raises(TypeError, match=r"add\(dense, sparse\)"):
        n - ng.tensor(d)


def test_product_of_two_sparse_tensors_and_edge_shapes():
    t, n = _pair()
    t2 = torch.sparse_coo_tensor(torch.tensor([[0, 2, 1], [2, 1, 1]]),
                                 torch.tensor([2.0, -1.0, 5.0], dtype=torch.float64), (3, 3))
    n2 = ng.sparse_coo_tensor([[0, 2, 1], [2, 1, 1]], np.array([2.0, -1.0, 5.0]), (3, 3))
    # the values agree; PyTorch's result also stores a zero where only one operand stores
    np.testing.assert_array_equal((n * n2).to_dense().numpy(), (t * t2).to_dense().numpy())
    empty = ng.sparse_coo_tensor(ng.zeros((2, 0), dtype=ng.int64), ng.zeros(0, dtype=ng.float64),
                                 (3, 3))
    assert (n * empty)._nnz() == 0 and (empty * n)._nnz() == 0
    hybrid_t = torch.sparse_coo_tensor(torch.tensor([[0, 2, 0]]),
                                       torch.arange(6.0, dtype=torch.float64).reshape(3, 2), (3, 2))
    hybrid_n = ng.sparse_coo_tensor([[0, 2, 0]], np.arange(6.0).reshape(3, 2), (3, 2))
    _same_sparse(hybrid_n.coalesce(), hybrid_t.coalesce())
    for dim in (0, 1):
        tr, nr = torch.sparse.sum(hybrid_t, dim), ng.sparse.sum(hybrid_n, dim)
        np.testing.assert_array_equal(
            (nr.to_dense() if nr.is_sparse else nr).numpy(),
            (tr.to_dense() if tr.is_sparse else tr).numpy())
    with pytest.raises(ng.ShapeError, match="sparse matrix"):
        ng.sparse.mm(hybrid_n, ng.ones((2, 2), dtype=ng.float64))


def test_sums():
    t, n = _pair()
    assert float(ng.sparse.sum(n)) == float(torch.sparse.sum(t))
    for dim in (0, 1, (0, 1)):
        tr, nr = torch.sparse.sum(t, dim), ng.sparse.sum(n, dim)
        if tr.is_sparse:
            _same_sparse(nr, tr.coalesce())
        else:
            assert float(nr) == float(tr)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_over_stored_entries(dim):
    v = np.array(VAL)
    tv, nv = torch.tensor(v, requires_grad=True), ng.tensor(v, requires_grad=True)
    ts = torch.sparse_coo_tensor(torch.tensor(IDX), tv, (3, 3))
    ns = ng.sparse_coo_tensor(IDX, nv, (3, 3))
    for tf, nf in [(torch.sparse.softmax, ng.sparse.softmax),
                   (torch.sparse.log_softmax, ng.sparse.log_softmax)]:
        tr, nr = tf(ts, dim), nf(ns, dim)
        _same_sparse(nr, tr.coalesce())
    w = np.array([1.0, 2.0, -1.0, 0.5])
    # PyTorch 2.13's backward mishandles a negative dim (it gives another gradient for -1
    # than for 1 on a matrix): the reference takes the dim counted from the front
    (torch.sparse.softmax(ts, dim % 2).coalesce().values() * torch.tensor(w)).sum().backward()
    (ng.sparse.softmax(ns, dim).values() * ng.tensor(w)).sum().backward()
    np.testing.assert_allclose(nv.grad.numpy(), tv.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_gradcheck_through_values_and_dense():
    idx = np.array(IDX)

    def f(v, d):
        return ng.sparse.addmm(d[:, :1] * 0 + 1, ng.sparse_coo_tensor(idx, v, (3, 3)), d,
                               beta=0.5, alpha=2.0).sin().sum() + ng.sparse.sum(
            ng.sparse.softmax(ng.sparse_coo_tensor(idx, v, (3, 3)), 1), 0).to_dense()[2]

    v = ng.tensor(np.array(VAL) * 0.3, requires_grad=True)
    d = ng.tensor(np.linspace(-1, 1, 6).reshape(3, 2), requires_grad=True)
    assert ng.gradcheck(f, v, d)


def test_jit_and_grad_compose():
    a = ng.sparse_coo_tensor(IDX, np.array(VAL), (3, 3)).coalesce()

    def loss(w, x):
        return ng.sparse.mm(a, x @ w).tanh().sum()

    x = ng.tensor(np.linspace(-1, 1, 12).reshape(3, 4))
    w = ng.tensor(np.linspace(0.5, -0.5, 8).reshape(4, 2))
    g_eager = ng.grad(loss)(w, x)
    g_jit = ng.jit(ng.grad(loss))(w, x)
    np.testing.assert_array_equal(g_jit.numpy(), g_eager.numpy())


def test_vmap_over_dense_operands_of_a_sparse_one():
    """A sparse matrix closed over inside vmap, on either side of a product or times a batched
    dense tensor: each example's result, as a Python loop gives."""
    a = ng.sparse_coo_tensor(IDX, np.array(VAL), (3, 3))
    xs = ng.tensor(np.arange(27.0).reshape(3, 3, 3) / 7)
    for f in (lambda x: a @ x, lambda x: x @ a, lambda x: ng.mm(x, a), lambda x: ng.matmul(a, x),
              lambda x: (x * a).to_dense(), lambda x: x + a):
        np.testing.assert_allclose(ng.vmap(f)(xs).numpy(),
                                   np.stack([f(x).numpy() for x in xs]), rtol=1e-14)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="size is inconsistent"):
        ng.sparse_coo_tensor(IDX, VAL, (2, 3))
    with pytest.raises(ng.ShapeError, match="columns but values"):
        ng.sparse_coo_tensor(IDX, VAL[:3], (3, 3))
    with pytest.raises(ng.DTypeError, match="integers"):
        ng.sparse_coo_tensor([[0.5], [1.0]], [1.0])
    with pytest.raises(ValueError, match="negative"):
        ng.sparse_coo_tensor([[0], [-1]], [1.0], (2, 2))
    _, n = _pair()
    with pytest.raises(TypeError, match=r"exp: not defined on a sparse COO tensor.*to_dense"):
        ng.exp(n)
    with pytest.raises(TypeError, match="to_dense"):
        ng.tensor(n)
    with pytest.raises(ng.ShapeError, match="cannot be"):
        ng.sparse.mm(n, ng.ones((2, 2), dtype=ng.float64))
    with pytest.raises(ng.DTypeError, match="float64 but mat2 is float32"):
        ng.sparse.mm(n, ng.ones((3, 2)))


# --- Kipf and Welling's GCN as pygcn writes it: a normalised sparse adjacency, torch.spmm -------
def _normalised_adjacency(lib, edges, n):
    i = lib.tensor(np.concatenate([edges, edges[::-1], np.stack([np.arange(n)] * 2)], 1))
    adj = lib.sparse_coo_tensor(i, lib.ones(i.shape[1], dtype=lib.float64), (n, n)).coalesce()
    deg = lib.sparse.sum(adj, 1).to_dense()
    dinv = deg.pow(-0.5)
    rows, cols = adj.indices()
    return lib.sparse_coo_tensor(adj.indices(), dinv[rows] * adj.values() * dinv[cols], (n, n))


def _gcn_run(lib, feats, edges, labels, w):
    n = feats.shape[0]
    adj = _normalised_adjacency(lib, edges, n)
    x = lib.tensor(feats)
    w1 = lib.tensor(w[0], requires_grad=True)
    w2 = lib.tensor(w[1], requires_grad=True)
    opt = (torch.optim.Adam if lib is torch else ng.optim.Adam)([w1, w2], lr=0.01,
                                                               weight_decay=5e-4)
    y = lib.tensor(labels)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        h = lib.relu(lib.spmm(adj, lib.mm(x, w1)))
        out = lib.sparse.mm(adj, h @ w2)
        loss = lib.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses, w1.detach().numpy().copy()


def test_gcn_with_a_sparse_adjacency_trains_as_pytorch():
    rng = np.random.default_rng(0)
    n = 12
    edges = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 3],
                      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 5, 9]])
    feats = rng.standard_normal((n, 6))
    labels = rng.integers(0, 3, n)
    w = [rng.standard_normal((6, 8)) * 0.4, rng.standard_normal((8, 3)) * 0.4]
    lt, wt = _gcn_run(torch, feats, edges, labels, w)
    ln, wn = _gcn_run(ng, feats, edges, labels, w)
    np.testing.assert_allclose(ln, lt, rtol=1e-12)
    np.testing.assert_allclose(wn, wt, rtol=1e-10, atol=1e-13)


# --- pyGAT's sparse attention layer: a custom autograd.Function around a sparse product -------
def _sp_gat(lib, x_np, edge_np, w_np, a_np):
    F = lib.nn.functional

    class SpecialSpmmFunction(lib.autograd.Function):
        """Special function for only sparse region backpropagation layer."""

        @staticmethod
        def forward(ctx, indices, values, shape, b):
            assert indices.requires_grad is False
            a = lib.sparse_coo_tensor(indices, values, shape)
            ctx.save_for_backward(a, b)
            ctx.N = shape[0]
            return lib.matmul(a, b)

        @staticmethod
        def backward(ctx, grad_output):
            a, b = ctx.saved_tensors
            grad_values = grad_b = None
            if ctx.needs_input_grad[1]:
                grad_a_dense = grad_output.matmul(b.t())
                edge_idx = a._indices()[0, :] * ctx.N + a._indices()[1, :]
                grad_values = grad_a_dense.view(-1)[edge_idx]
            if ctx.needs_input_grad[3]:
                grad_b = a.t().matmul(grad_output)
            return None, grad_values, None, grad_b

    def special_spmm(indices, values, shape, b):
        return SpecialSpmmFunction.apply(indices, values, shape, b)

    x = lib.tensor(x_np)
    edge = lib.tensor(edge_np)
    W = lib.tensor(w_np, requires_grad=True)
    a = lib.tensor(a_np, requires_grad=True)
    N = x.size()[0]
    h = lib.mm(x, W)
    edge_h = lib.cat((h[edge[0, :], :], h[edge[1, :], :]), dim=1).t()
    edge_e = lib.exp(-F.leaky_relu(a.mm(edge_h).squeeze(), 0.2))
    ones = lib.ones(size=(N, 1), dtype=lib.float64)
    e_rowsum = special_spmm(edge, edge_e, lib.Size([N, N]), ones)
    h_prime = special_spmm(edge, edge_e, lib.Size([N, N]), h)
    h_prime = h_prime.div(e_rowsum)
    out = F.elu(h_prime)
    out.pow(2).sum().backward()
    return out.detach().numpy(), W.grad.numpy(), a.grad.numpy()


def test_pygat_sparse_attention_layer_matches_pytorch():
    rng = np.random.default_rng(1)
    n = 7
    edge = np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 2],
                     [1, 2, 3, 4, 5, 6, 0, 0, 1, 2, 3, 4, 5, 6, 5]])
    x, w, a = rng.standard_normal((n, 5)), rng.standard_normal((5, 4)), rng.standard_normal((1, 8))
    ref = _sp_gat(torch, x, edge, w, a)
    got = _sp_gat(ng, x, edge, w, a)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)


# --- CSR -----------------------------------------------------------------------------------
CROW, COL, CVAL = [0, 2, 3, 5], [0, 2, 1, 0, 2], [1.0, 2.0, 3.0, 4.0, 5.0]  # sorted in rows


def test_csr_construction_conversions_and_products():
    tv = torch.tensor(CVAL, dtype=torch.float64, requires_grad=True)
    nv = ng.tensor(np.array(CVAL), requires_grad=True)
    tc = torch.sparse_csr_tensor(torch.tensor(CROW), torch.tensor(COL), tv, (3, 3))
    nc = ng.sparse_csr_tensor(CROW, COL, nv, (3, 3))
    assert nc.is_sparse_csr and not nc.is_sparse and nc.layout is ng.sparse_csr
    assert not ng.zeros(2).is_sparse_csr
    np.testing.assert_array_equal(nc.to_dense().detach().numpy(), tc.to_dense().detach().numpy())
    np.testing.assert_array_equal(nc.to_sparse().to_dense().detach().numpy(),
                                  tc.to_sparse().to_dense().detach().numpy())
    d = np.arange(6.0).reshape(3, 2)
    td, nd = torch.tensor(d, requires_grad=True), ng.tensor(d, requires_grad=True)
    (tc @ td).pow(2).sum().backward()
    (nc @ nd).pow(2).sum().backward()
    np.testing.assert_allclose(nd.grad.numpy(), td.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(nv.grad.numpy(), tv.grad.numpy(), rtol=1e-14)
    vec = np.array([1.0, 1.0, 3.0])
    np.testing.assert_allclose(ng.matmul(nc.detach(), ng.tensor(vec)).numpy(),
                               torch.matmul(tc.detach(), torch.tensor(vec)).numpy())
    np.testing.assert_allclose(ng.mm(nc.detach(), nd.detach()).numpy(),
                               torch.mm(tc.detach(), td.detach()).numpy())
    for tr, nr in [(torch.sin(tc.detach()), ng.sin(nc.detach())), (tc.detach() * 2, nc * 2)]:
        assert nr.layout is ng.sparse_csr and tr.layout is torch.sparse_csr
        np.testing.assert_allclose(nr.to_dense().detach().numpy(), tr.to_dense().numpy())
    x = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
    tx, nx = torch.tensor(x).to_sparse_csr(), ng.tensor(x).to_sparse_csr()
    for a, b in [(nx.crow_indices(), tx.crow_indices()), (nx.col_indices(), tx.col_indices()),
                 (nx.values(), tx.values())]:
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    back = ng.tensor(x).to_sparse().to_sparse_csr()
    np.testing.assert_array_equal(back.crow_indices().numpy(), tx.crow_indices().numpy())
    holes = [0, 2, 2, 3, 3, 5]  # empty rows 1 and 3
    tz = torch.sparse_csr_tensor(torch.tensor(holes), torch.tensor(COL), torch.tensor(CVAL),
                                 (5, 3))
    nz = ng.sparse_csr_tensor(holes, COL, CVAL, (5, 3))
    np.testing.assert_array_equal(nz.to_dense().numpy(), tz.to_dense().numpy())


def test_csr_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="crow_indices must start at 0"):
        ng.sparse_csr_tensor([0, 2, 1, 5], COL, CVAL)
    with pytest.raises(ng.ShapeError, match="column indices but"):
        ng.sparse_csr_tensor(CROW, COL, CVAL[:4])
    with pytest.raises(ValueError, match="does not fit"):
        ng.sparse_csr_tensor(CROW, COL, CVAL, (3, 2))
    with pytest.raises(NotImplementedError, match="values require grad"):
        ng.sparse_csr_tensor(CROW, COL, CVAL, requires_grad=True)
    with pytest.raises(ValueError, match="sorted and distinct"):
        ng.sparse_csr_tensor(CROW, [2, 0, 1, 0, 2], CVAL, check_invariants=True)
    ng.sparse_csr_tensor(CROW, [2, 0, 1, 0, 2], CVAL)  # not checked by default, as PyTorch's
    c = ng.sparse_csr_tensor(CROW, COL, CVAL)
    assert tuple(c.shape) == (3, 3)
    with pytest.raises(TypeError, match="exp: not defined.*to_dense"):
        ng.exp(c)
