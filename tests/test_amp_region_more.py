"""CPU autocast against PyTorch for the composite ops on its float32 and promote lists (pools,
pads, grid sampling, unpooling, quantiles, linear algebra, FFTs), ``nan_to_num`` in bfloat16
and float16, and the dtype and shape of the gradients an ``autograd.Function`` returns."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:torch.*is deprecated:UserWarning")

RNG = np.random.default_rng(3)
A2 = RNG.random((3, 3)).astype(np.float32)
A3 = RNG.random((1, 2, 7)).astype(np.float32)
A4 = RNG.random((1, 2, 6, 6)).astype(np.float32)
A5 = RNG.random((1, 2, 4, 4, 4)).astype(np.float32)
_M = RNG.random((3, 3))
SPD = (_M @ _M.T + 3 * np.eye(3)).astype(np.float32)
R43 = RNG.random((4, 3)).astype(np.float32)
G2 = (RNG.random((1, 3, 3, 2)) * 2 - 1).astype(np.float32)
G3 = (RNG.random((1, 2, 2, 2, 3)) * 2 - 1).astype(np.float32)
SIG = RNG.random(16).astype(np.float32)
LP = np.log(RNG.dirichlet(np.ones(3), size=(5, 1))).astype(np.float32)


def _lib(L):
    return "torch" if L is torch else "ng"


def _b(L, a):
    """``a`` as a bfloat16 tensor of library ``L``."""
    return L.tensor(a).to(L.bfloat16)


def _values(t) -> np.ndarray:
    t = t.detach()
    if "complex" in str(t.dtype):
        return np.asarray(t.numpy()).astype(np.complex128)
    if "int" in str(t.dtype):
        return np.asarray(t.numpy()).astype(np.float64)
    return np.asarray(t.float().numpy()).astype(np.float64)


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _both(fn, dtype: str = "bfloat16", region: bool = True, tol: float = 2e-5):
    """``fn(L)`` in both libraries inside a CPU autocast region of ``dtype`` (or outside one);
    the dtypes match and the values agree to ``tol`` (float32 rounding by default)."""
    outs = []
    for L in (torch, ng):
        if region:
            with L.autocast("cpu", dtype=getattr(L, dtype)):
                outs.append(fn(L))
        else:
            outs.append(fn(L))
    t, n = outs
    assert _dtype(n) == _dtype(t)
    np.testing.assert_allclose(_values(n), _values(t), rtol=tol, atol=tol / 10)
    return _dtype(n)


def _F(L):
    return L.nn.functional


# name -> (function of the library, PyTorch's dtype inside a bfloat16 region)
CASES = {
    "trace": (lambda L: L.trace(_b(L, A2)), "float32"),
    "trace_method": (lambda L: _b(L, A2).trace(), "float32"),
    "avg_pool3d": (lambda L: _F(L).avg_pool3d(_b(L, A5), 2, padding=1), "float32"),
    "avg_pool2d": (lambda L: _F(L).avg_pool2d(_b(L, A4), 2), "bfloat16"),
    "max_pool3d": (lambda L: _F(L).max_pool3d(_b(L, A5), 2), "float32"),
    "max_pool3d_indices": (lambda L: _F(L).max_pool3d(_b(L, A5), 2, return_indices=True)[0],
                           "bfloat16"),
    "MaxPool3d": (lambda L: L.nn.MaxPool3d(2)(_b(L, A5)), "float32"),
    "adaptive_avg_pool3d": (lambda L: _F(L).adaptive_avg_pool3d(_b(L, A5), 3), "float32"),
    "adaptive_max_pool3d": (lambda L: _F(L).adaptive_max_pool3d(_b(L, A5), 3), "float32"),
    "fractional_max_pool2d": (lambda L: _F(L).fractional_max_pool2d(
        _b(L, A4), 2, output_size=3, _random_samples=_b(L, [[[0.3, 0.6], [0.2, 0.9]]])),
        "float32"),
    "lp_pool3d": (lambda L: _F(L).lp_pool3d(_b(L, A5), 2, 2), "float32"),
    "local_response_norm_4d": (lambda L: _F(L).local_response_norm(_b(L, A4), 2), "float32"),
    "local_response_norm_3d": (lambda L: _F(L).local_response_norm(_b(L, A3), 2),
                               "bfloat16"),
    "pad_reflect_1d": (lambda L: _F(L).pad(_b(L, A3), (2, 1), mode="reflect"), "float32"),
    "pad_reflect_2d": (lambda L: _F(L).pad(_b(L, A4), (1, 2, 2, 1), mode="reflect"),
                       "float32"),
    "pad_reflect_3d": (lambda L: _F(L).pad(_b(L, A5), (1,) * 6, mode="reflect"), "bfloat16"),
    "pad_replicate_1d": (lambda L: _F(L).pad(_b(L, A3), (1, 2), mode="replicate"), "float32"),
    "pad_replicate_2d": (lambda L: _F(L).pad(_b(L, A4), (1, 1, 0, 2), mode="replicate"),
                         "float32"),
    "pad_replicate_3d": (lambda L: _F(L).pad(_b(L, A5), (1, 1, 2, 0, 1, 1), mode="replicate"),
                         "float32"),
    "pad_circular": (lambda L: _F(L).pad(_b(L, A4), (1, 1, 1, 1), mode="circular"),
                     "bfloat16"),
    "pad_constant": (lambda L: _F(L).pad(_b(L, A4), (1, 1)), "bfloat16"),
    "ReflectionPad2d": (lambda L: L.nn.ReflectionPad2d(1)(_b(L, A4)), "float32"),
    "grid_sample": (lambda L: _F(L).grid_sample(_b(L, A4), _b(L, G2), align_corners=False),
                    "float32"),
    "grid_sample_3d": (lambda L: _F(L).grid_sample(_b(L, A5), _b(L, G3), align_corners=True),
                       "float32"),
    "grid_sample_mixed": (lambda L: _F(L).grid_sample(_b(L, A4), L.tensor(G2),
                                                      align_corners=False), "float32"),
    "max_unpool1d": (lambda L: _F(L).max_unpool1d(
        *_F(L).max_pool1d(_b(L, A3[..., :6]), 2, return_indices=True), 2), "float32"),
    "max_unpool2d": (lambda L: _F(L).max_unpool2d(
        *_F(L).max_pool2d(_b(L, A4), 2, return_indices=True), 2), "float32"),
    "max_unpool3d": (lambda L: _F(L).max_unpool3d(
        *_F(L).max_pool3d(_b(L, A5), 2, return_indices=True), 2), "float32"),
    "quantile": (lambda L: L.quantile(_b(L, A2), 0.3, dim=1), "float32"),
    "quantile_q_tensor": (lambda L: L.quantile(_b(L, A2), _b(L, [0.25, 0.5])), "float32"),
    "nanquantile": (lambda L: L.nanquantile(_b(L, A2), 0.7), "float32"),
    "inverse": (lambda L: L.inverse(_b(L, SPD)), "float32"),
    "linalg_inv": (lambda L: L.linalg.inv(_b(L, SPD)), "float32"),
    "linalg_inv_ex": (lambda L: L.linalg.inv_ex(_b(L, SPD))[0], "float32"),
    "pinverse": (lambda L: L.pinverse(_b(L, R43)), "float32"),
    "cholesky": (lambda L: L.linalg.cholesky(_b(L, SPD)), "float32"),
    "cholesky_solve": (lambda L: L.cholesky_solve(
        _b(L, R43[:3]), L.linalg.cholesky(L.tensor(SPD)).to(L.bfloat16)), "float32"),
    "cholesky_inverse": (lambda L: L.cholesky_inverse(
        L.linalg.cholesky(L.tensor(SPD)).to(L.bfloat16)), "float32"),
    "solve": (lambda L: L.linalg.solve(_b(L, SPD), L.tensor(R43[:3])), "float32"),
    "lstsq": (lambda L: L.linalg.lstsq(_b(L, R43), _b(L, R43[:, :2]))[0], "float32"),
    "triangular_solve": (lambda L: L.triangular_solve(_b(L, R43[:3]), _b(L, SPD))[0],
                         "float32"),
    "qr_r": (lambda L: L.linalg.qr(_b(L, R43))[1].abs(), "float32"),
    "svdvals": (lambda L: L.linalg.svdvals(_b(L, R43)), "float32"),
    "eigvalsh": (lambda L: L.linalg.eigvalsh(_b(L, SPD)), "float32"),
    "eigvals": (lambda L: L.linalg.eigvals(_b(L, SPD)).real, "float32"),
    "cond": (lambda L: L.linalg.cond(_b(L, SPD)), "float32"),
    "matrix_rank": (lambda L: L.linalg.matrix_rank(_b(L, SPD)), "int64"),
    "tensorsolve": (lambda L: L.linalg.tensorsolve(_b(L, SPD), _b(L, R43[0])), "float32"),
    "lu": (lambda L: L.lu(_b(L, SPD))[0], "float32"),
    "lu_solve": (lambda L: L.lu_solve(_b(L, R43[:3]), *L.linalg.lu_factor(L.tensor(SPD))),
                 "float32"),
    "svd_no_uv": (lambda L: L.svd(_b(L, R43), compute_uv=False)[2], "float32"),
    "geqrf": (lambda L: L.geqrf(_b(L, R43))[0], "float32"),
    "householder_product": (lambda L: L.linalg.householder_product(
        *L.geqrf(L.tensor(R43))), "float32"),
    "ormqr": (lambda L: L.ormqr(*(t.to(L.bfloat16) for t in L.geqrf(L.tensor(R43))),
                                _b(L, R43)), "float32"),
    "fft": (lambda L: L.fft.fft(_b(L, SIG)), "complex64"),
    "rfft": (lambda L: L.fft.rfft(_b(L, SIG)), "complex64"),
    "irfft": (lambda L: L.fft.irfft(_b(L, SIG)), "float32"),
    "fft2": (lambda L: L.fft.fft2(_b(L, A4)), "complex64"),
    "fftshift": (lambda L: L.fft.fftshift(_b(L, SIG)), "bfloat16"),
    "stft": (lambda L: L.stft(_b(L, SIG), 8, window=_b(L, np.hanning(8)),
                              return_complex=True), "complex64"),
    "polar": (lambda L: L.polar(_b(L, A2), _b(L, A2)), "complex64"),
    "view_as_complex": (lambda L: L.view_as_complex(_b(L, R43[:, :2])), "complex64"),
    "ctc_loss": (lambda L: _F(L).ctc_loss(_b(L, LP), L.tensor([[1, 2]]), [5], [2]),
                 "float32"),
    "index_copy_promote": (lambda L: L.tensor(A2).index_copy(
        0, L.tensor([2, 0]), _b(L, A2[:2])), "float32"),
    "index_copy_promote_source": (lambda L: _b(L, A2).index_copy(
        0, L.tensor([1]), L.tensor(A2[:1])), "float32"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_region_dtype_and_values_match_pytorch(name):
    fn, expected = CASES[name]
    assert _both(fn) == expected


@pytest.mark.parametrize("name", ["trace", "avg_pool3d", "pad_replicate_2d", "grid_sample",
                                  "max_unpool2d", "quantile", "inverse", "fft"])
def test_float16_region_matches_pytorch(name):
    fn = CASES[name][0]
    half = {"trace": lambda L: L.trace(L.tensor(A2).half()),
            "inverse": lambda L: L.inverse(L.tensor(SPD).half()),
            "quantile": lambda L: L.quantile(L.tensor(A2).half(), 0.3, dim=1)}
    assert _both(half.get(name, fn), dtype="float16") in ("float32", "complex64")


@pytest.mark.parametrize("name", ["trace", "max_pool3d", "adaptive_avg_pool3d",
                                  "pad_reflect_2d", "pad_replicate_3d", "grid_sample",
                                  "max_unpool2d"])
def test_outside_a_region_the_input_dtype_is_kept(name):
    # (bfloat16 arithmetic in either library: equal up to a bfloat16 rounding)
    assert _both(CASES[name][0], region=False, tol=1e-2) == "bfloat16"


def test_outside_a_region_quantile_and_inverse_refuse_bfloat16():
    x = _b(ng, A2)
    with pytest.raises(ng.errors.DTypeError, match="quantile"):
        ng.quantile(x, 0.5)
    with pytest.raises(ng.errors.DTypeError, match="linalg.inv"):
        ng.linalg.inv(_b(ng, SPD))


def test_promote_leaves_float64_and_a_bfloat16_float16_mix_refused():
    # PyTorch's promote rule ignores float64 and refuses bfloat16 with float16: index_copy
    # then refuses the mix itself
    for src in (A2[:1].astype(np.float64), A2[:1]):
        for L in (torch, ng):
            s = L.tensor(src) if src.dtype == np.float64 else L.tensor(src).half()
            err = RuntimeError if L is torch else ng.errors.DTypeError
            with L.autocast("cpu", dtype=L.bfloat16), pytest.raises(err):
                _b(L, A2).index_copy(0, L.tensor([0]), s)


def test_householder_product_keeps_float32_products_inside_a_region():
    # its matrix products run in float32, not in the region's bfloat16 (PyTorch's float32 op)
    assert _both(lambda L: L.linalg.householder_product(*L.geqrf(L.tensor(R43)))) == "float32"


GRAD_CASES = {
    "trace": (A2, lambda L, x: L.trace(x)),
    "avg_pool3d": (A5, lambda L, x: _F(L).avg_pool3d(x, 2, padding=1)),
    "pad_reflect_2d": (A4, lambda L, x: _F(L).pad(x, (1, 2, 2, 1), mode="reflect")),
    "grid_sample": (A4, lambda L, x: _F(L).grid_sample(x, _b(L, G2), align_corners=False)),
    "quantile": (A2, lambda L, x: L.quantile(x, 0.3, dim=1)),
    "inverse": (SPD, lambda L, x: L.inverse(x)),
    "max_unpool2d": (A4, lambda L, x: _F(L).max_unpool2d(
        *_F(L).max_pool2d(x, 2, return_indices=True), 2)),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_region_gradients_match_pytorch(name):
    src, fn = GRAD_CASES[name]
    grads = []
    for L in (torch, ng):
        x = _b(L, src).requires_grad_()
        with L.autocast("cpu", dtype=L.bfloat16):
            y = fn(L, x)
        w = L.tensor(np.linspace(-1, 1, y.numel(), dtype=np.float32).reshape(tuple(y.shape)))
        (y.float() * w).sum().backward()
        grads.append(x.grad)
    t, n = grads
    assert _dtype(n) == _dtype(t) == "bfloat16"
    np.testing.assert_allclose(_values(n), _values(t), rtol=1e-2, atol=1e-2)


# --- nan_to_num in low precision -------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kwargs", [{}, {"posinf": 1e30}, {"neginf": 5.0}, {"nan": 1e30},
                                    {"nan": 2.0, "posinf": -1.0, "neginf": 3.0}])
def test_nan_to_num_low_precision_matches_pytorch(dtype, kwargs):
    data = np.array([np.nan, np.inf, -np.inf, 1.5, -2.0], np.float32)
    outs = [L.nan_to_num(L.tensor(data).to(getattr(L, dtype)), **kwargs) for L in (torch, ng)]
    assert _dtype(outs[1]) == _dtype(outs[0]) == dtype
    np.testing.assert_array_equal(_values(outs[1]), _values(outs[0]))


def test_nan_to_num_bfloat16_method_and_gradient():
    x = ng.tensor([np.inf, 1.0, -np.inf]).to(ng.bfloat16).requires_grad_()
    y = x.nan_to_num()
    assert np.isfinite(_values(y)).all() and _values(y)[0] == float(ng._backend.finfo(
        ng.bfloat16).max)
    y.float().sum().backward()
    np.testing.assert_array_equal(_values(x.grad), [0.0, 1.0, 0.0])


# --- autograd.Function gradients of another dtype ---------------------------------------------
def _fn_class(L, make_grad):
    class Fn(L.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return make_grad(L, g)

    return Fn


@pytest.mark.parametrize("gdt", ["bfloat16", "float64", "float16", "int64"])
@pytest.mark.parametrize("xdt", ["float32", "bfloat16"])
def test_function_gradient_is_cast_to_the_input_dtype(gdt, xdt):
    res = []
    for L in (torch, ng):
        fn = _fn_class(L, lambda L, g: (g * 3).to(getattr(L, gdt)))
        x = L.tensor(A2).to(getattr(L, xdt)).requires_grad_()
        y = fn.apply(x).float().sum() + (x.float() * 5).sum()  # two paths summed into x
        (gx,) = L.autograd.grad(y, x)
        y = fn.apply(x).float().sum() + (x.float() * 5).sum()
        y.backward()
        res.append((gx, x.grad))
    for t, n in zip(*res):
        assert _dtype(n) == _dtype(t) == xdt
        np.testing.assert_array_equal(_values(n), _values(t))


def test_function_gradient_cast_is_recorded_for_create_graph():
    res = []
    for L in (torch, ng):
        class Sq(L.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return (2 * g * x).to(L.bfloat16)

        x = L.tensor(A2).requires_grad_()
        (gx,) = L.autograd.grad(Sq.apply(x).sum(), x, create_graph=True)
        assert gx.requires_grad
        (ggx,) = L.autograd.grad(gx.sum(), x)
        res.append((gx, ggx))
    for t, n in zip(*res):
        assert _dtype(n) == _dtype(t) == "float32"
        np.testing.assert_array_equal(_values(n), _values(t))


def test_function_under_autocast_returning_bfloat16_gradients_matches_pytorch():
    res = []
    for L in (torch, ng):
        class Lin(L.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                xb, wb = x.to(L.bfloat16), w.to(L.bfloat16)
                ctx.save_for_backward(xb, wb)
                return xb @ wb.t()

            @staticmethod
            def backward(ctx, g):
                xb, wb = ctx.saved_tensors
                g = g.to(L.bfloat16)
                return g @ wb, g.t() @ xb

        x = L.tensor(R43).requires_grad_()
        w = L.tensor(A2).requires_grad_()
        with L.autocast("cpu", dtype=L.bfloat16):
            y = Lin.apply(x, w)
            loss = y.float().sum() + (x @ w.t()).float().sum()
        gx, gw = L.autograd.grad(loss, (x, w))
        res.append((y, gx, gw))
    for t, n in zip(*res):
        assert _dtype(n) == _dtype(t)
        np.testing.assert_allclose(_values(n), _values(t), rtol=1e-2, atol=1e-2)
    assert _dtype(res[1][1]) == "float32"


@pytest.mark.parametrize("shape", [(4,), (3,), (1, 3)])
def test_function_gradient_of_a_shape_that_does_not_sum_down_raises(shape):
    fn = _fn_class(ng, lambda L, g: L.ones(*shape))
    x = ng.tensor(np.ones((2, 3), np.float32)).requires_grad_()
    with pytest.raises(ng.errors.ShapeError, match=r"Fn\.backward.*gradient 0 of shape"):
        fn.apply(x).sum().backward()
    tfn = _fn_class(torch, lambda L, g: L.ones(*shape))
    with pytest.raises(RuntimeError, match="invalid gradient"):
        tfn.apply(torch.ones(2, 3, requires_grad=True)).sum().backward()


def test_function_gradient_that_sums_down_matches_pytorch():
    res = []
    for L in (torch, ng):
        fn = _fn_class(L, lambda L, g: L.ones(5, 2, 3).to(L.bfloat16))
        x = L.ones(2, 3, requires_grad=True)
        (gx,) = L.autograd.grad(fn.apply(x).sum(), x)
        res.append(gx)
    assert _dtype(res[1]) == _dtype(res[0]) == "float32"
    np.testing.assert_array_equal(_values(res[1]), _values(res[0]))


def test_function_complex_gradient_for_a_real_input_raises():
    fn = _fn_class(ng, lambda L, g: g.to(L.complex64))
    x = ng.tensor(A2).requires_grad_()
    with pytest.raises(ng.errors.GradError, match="Fn.backward.*complex"):
        fn.apply(x).sum().backward()
