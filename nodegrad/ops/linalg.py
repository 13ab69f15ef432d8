"""Products (matmul, einsum) and the linear-algebra primitives behind ``ng.linalg``.

The notes' rules: for C = A B, dA = dC Bᵀ and dB = Aᵀ dC. Batch axes broadcast; the engine sums
them back to each operand's shape. Decompositions follow the standard matrix rules (as
PyTorch's ``FunctionsManual``), every one batched over leading axes. Complex inputs: inv,
solve, solve_triangular and det are holomorphic (their rules serve conjugated, see
:mod:`.complex`); the decompositions declare complex rules of their own (conjugate transposes,
PyTorch's phase checks), and their JVPs branch on the input's dtype.
"""

from __future__ import annotations

import math

import string

from .. import _backend as B
from ..batching import front, rank_up, size_of, values
from ..errors import GradError, LinAlgError, ShapeError
from ..primitive import REGISTRY, primitive
from ..tensor import Tensor
from .elementwise import astype, logical_and, where
from .index import getitem
from .shape import concatenate, expand_dims, reshape, swapaxes


def _mT(x):
    return swapaxes(x, -1, -2)


# complex matrices: conj, real and imag are ops/complex.py's primitives, looked up when a
# complex rule runs (that module imports this one's dependents)
def _conj(x):
    return REGISTRY["conj"](x) if x.dtype.kind == "c" else x


def _re(x):
    return REGISTRY["real"](x) if x.dtype.kind == "c" else x


def _mH(x):
    """The conjugate transpose of the last two axes (the transpose for real x)."""
    return _conj(swapaxes(x, -1, -2))


def _phase_check(op: str, d, what: str = "eigenvectors") -> None:
    """PyTorch's check that a loss does not depend on the eigen/singular vectors' phases (they
    are unique only up to e^{iφ}): the imaginary parts of diag(Vᴴ V̄) must vanish."""
    v = values(REGISTRY["imag"](d))
    if v.size and bool((abs(v) > 1e-2).any()):
        raise GradError(f"{op}: The {what} in the complex case are specified up to "
                        "multiplication by e^{i phi}. The specified loss function depends on "
                        "this quantity, so it is ill-defined.")


def _matmul_da(g, ans, a, b):
    if b.ndim == 1:
        return g * b if a.ndim == 1 else expand_dims(g, -1) * b
    if a.ndim == 1:
        return reshape(matmul(b, expand_dims(g, -1)), g.shape[:-1] + (b.shape[-2],))
    if b.shape[-1] == 1 and a.ndim > 2 and b.ndim > 2:  # stacked outer products (a vmap'ed
        return g * _mT(b)                                # layer's weights): a broadcast multiply
    return matmul(g, _mT(b))


def _matmul_db(g, ans, a, b):
    if a.ndim == 1:
        return g * a if b.ndim == 1 else expand_dims(a, -1) * expand_dims(g, -2)
    if b.ndim == 1:
        return reshape(matmul(_mT(a), expand_dims(g, -1)), g.shape[:-1] + (a.shape[-1],))
    if a.shape[-2] == 1 and a.ndim > 2 and b.ndim > 2:  # stacked outer products (vmap'ed
        return _mT(a) * g                                # layers): a broadcast multiply
    if b.ndim == 2 and a.ndim > 2:  # shared weight (x @ W over a batch): one GEMM
        k, rows = a.shape[-1], math.prod(a.shape[:-1])  # (no -1: k or n may be 0)
        return matmul(_mT(reshape(a, (rows, k))), reshape(g, (rows, g.shape[-1])))
    return matmul(_mT(a), g)


def _matmul_fwd(xp, a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: both operands need at least one dimension")
    return B.matmul(a, b)


def _matmul_batch(vals, bdims):
    """Example operands promoted to matrices, batch axis first, batch dims aligned; 1-d rules
    undone afterwards."""
    n = size_of(vals, bdims)
    ops, ones = [], []
    for v, b, pos in zip(vals, bdims, (-2, -1)):
        nd = v.ndim - (b is not None)
        ones.append(nd == 1)
        v = front(v, b)
        if nd == 1:
            k = v.shape[-1]
            lead = () if b is None else (n,)
            v = reshape(v, lead + ((1, k) if pos == -2 else (k, 1)))
        ops.append((v, None if b is None else 0, max(nd, 2)))
    r = max(o[2] for o in ops)
    a, b = (v if bd is None else rank_up(v, bd, r) for v, bd, _ in ops)
    out = matmul(a, b)
    if ones[0] or ones[1]:
        shape = out.shape[:-2] + ((out.shape[-2],) if not ones[0] else ()) + (
            (out.shape[-1],) if not ones[1] else ())
        out = reshape(out, shape)
    return out, 0


def _matmul_raw(needs, g, ans, a, b):
    """The rules above on host matrices (``vjp_raw``); None (the rules) for other ranks."""
    if a.ndim != 2 or b.ndim != 2:
        return None
    return B.matmul(g, b.T) if needs[0] else None, B.matmul(a.T, g) if needs[1] else None


matmul = primitive("matmul", _matmul_fwd, (_matmul_da, _matmul_db), kind="linalg",
                   jvp="multilinear", batch=_matmul_batch, operands="all", vjp_raw=_matmul_raw,
                   doc="Matrix product with NumPy's rules (1-d operands, broadcast batches).")


def outer(a, b):
    """Outer product of two vectors."""
    return expand_dims(reshape(a, (-1,)), -1) * reshape(b, (-1,))


# --- einsum ----------------------------------------------------------------------------------
def _parse(subscripts: str, shapes: list) -> tuple[list, str]:
    """Explicit subscripts with every '...' spelled out in unused letters."""
    spec = subscripts.replace(" ", "")
    if "->" in spec:
        ins, out = spec.split("->")
    else:
        ins, out = spec, None
    terms = ins.split(",")
    if len(terms) != len(shapes):
        raise ShapeError(f"einsum: {len(terms)} operand subscripts for {len(shapes)} operands")
    free = [c for c in string.ascii_letters if c not in spec]
    nell = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(free[:nell])
    new_terms = []
    for t, s in zip(terms, shapes):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[nell - k:] if k else "")
        if len(t) != len(s):
            raise ShapeError(f"einsum: subscripts {t!r} do not match an operand of shape {s}")
        new_terms.append(t)
    if out is None:
        counts = {}
        for t in new_terms:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        out = out.replace("...", ell)
    return new_terms, out


def _undiagonal(t: str, terms, out: str, x) -> tuple[str, list]:
    """A repeated letter (a diagonal, 'ii') renamed at each later place, with an identity matrix
    tying the new letter to the old: the gradient lands on the diagonal, zero elsewhere."""
    if len(set(t)) == len(t):
        return t, []
    used = set("".join(terms) + out)
    free = (c for c in string.ascii_letters if c not in used)
    new, eyes = "", []
    for k, c in enumerate(t):
        if c in new:
            d = next(free)
            eye = Tensor._of(x.backend.xp.eye(x.shape[k], dtype=x.dtype))
            eyes.append((c + d, eye))
            c = d
        new += c
    return new, eyes


def _on_diagonals(t: str, eyes: list, x) -> Tensor:
    """Where every repeated letter of operand ``x`` (renamed in ``t`` by :func:`_undiagonal`)
    takes one value: the places its gradient can reach."""
    xp = x.backend.xp
    mask = xp.ones((1,) * len(t), dtype=bool)
    for (c, d), _ in eyes:
        p, q = t.index(c), t.index(d)
        n = x.shape[p]
        ar = xp.arange(n)
        mask = mask & (ar.reshape([n if k == p else 1 for k in range(len(t))])
                       == ar.reshape([n if k == q else 1 for k in range(len(t))]))
    return Tensor._of(mask)


def _einsum_vjp(needs, g, ans, *ops, terms, result):
    out = result
    grads = []
    for i, need in enumerate(needs):
        if not need:
            grads.append(None)
            continue
        others = [ops[j] for j in range(len(ops)) if j != i]
        oterms = [terms[j] for j in range(len(ops)) if j != i]
        t, eyes = _undiagonal(terms[i], terms, out, ops[i])
        oterms += [e for e, _ in eyes]
        others += [m for _, m in eyes]
        have = set(out).union(*oterms) if oterms else set(out)
        kept = "".join(c for c in t if c in have)
        gi = einsum(",".join([out] + oterms) + "->" + kept, g, *others)
        if kept != t:  # letters summed only inside operand i: size 1 until broadcast below
            gi = reshape(gi, tuple(gi.shape[kept.index(c)] if c in kept else 1 for c in t))
        if tuple(gi.shape) != tuple(ops[i].shape):  # and letters broadcast from size 1 in
            # another operand (the engine sums those of size 1 in operand i back)
            gi = gi.expand(*B.np.broadcast_shapes(tuple(gi.shape), tuple(ops[i].shape)))
        if eyes:  # off a diagonal the gradient is 0, not the identity's 0 times an inf
            gi = where(_on_diagonals(t, eyes, ops[i]), gi, 0)
        grads.append(gi)
    return grads


def _einsum_batch(vals, bdims, terms, result):
    out = result
    c = next(ch for ch in string.ascii_letters if ch not in "".join(terms) + out)
    ops = [v if b is None else front(v, b) for v, b in zip(vals, bdims)]
    ts = tuple(t if b is None else c + t for t, b in zip(terms, bdims))
    return _einsum(*ops, terms=ts, result=c + out), 0


_einsum = primitive("einsum", lambda xp, *ops, terms, result: xp.einsum(
    ",".join(terms) + "->" + result, *ops, optimize=len(ops) > 2),
    vjp_all=_einsum_vjp, kind="linalg", jvp="multilinear", batch=_einsum_batch, operands="all",
    doc="Einstein summation.")


def _sublists(args: tuple) -> tuple[str, tuple]:
    """einsum's sublist form ``(x, [0, 1], y, [1, 2], [0, 2])`` as a subscript string and the
    operands: integers 0..51 become letters in their order (so an implicit output sorts as the
    integers do), ``...`` stays."""
    letters = string.ascii_uppercase + string.ascii_lowercase
    out = args[-1] if len(args) % 2 else None

    def spell(sub) -> str:
        if not isinstance(sub, list | tuple):
            raise TypeError("einsum: a sublist must be a list of integers, got "
                            f"{type(sub).__name__}")
        s = ""
        for k in sub:
            if k is Ellipsis:
                s += "..."
            elif isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(letters):
                s += letters[k]
            else:
                raise ValueError(f"einsum: sublist entries must be integers in [0, 52) or "
                                 f"Ellipsis, got {k!r}")
        return s

    pairs = args[:len(args) - len(args) % 2]
    spec = ",".join(spell(sub) for sub in pairs[1::2])
    return spec + ("" if out is None else "->" + spell(out)), tuple(pairs[0::2])


def einsum(subscripts: str, *operands):
    """NumPy's einsum (with '...'); differentiable in every operand. The operands come as
    separate arguments or, as PyTorch also takes them, as one list or tuple; the sublist form
    ``einsum(x, [0, 1], y, [1, 2], [0, 2])`` (NumPy's and PyTorch's) is read too."""
    if not isinstance(subscripts, str):
        subscripts, operands = _sublists((subscripts, *operands))
    if len(operands) == 1 and isinstance(operands[0], list | tuple):
        operands = tuple(operands[0])
    try:
        shapes = [tuple(o.shape) for o in operands]
    except AttributeError:
        bad = next(o for o in operands if not hasattr(o, "shape"))
        raise TypeError(f"einsum: operands must be tensors, got {type(bad).__name__}") from None
    terms, out = _parse(subscripts, shapes)
    if _sums_alone(terms, out, shapes) and all(getattr(o, "dtype", B.np.dtype("f")).kind in "biu"
                                       for o in operands):
        operands = tuple(astype(o, B.np.int64) for o in operands)
    return _einsum(*operands, terms=tuple(terms), result=out)


def _sums_alone(terms, out: str, shapes: list) -> bool:
    """Whether a letter is summed within one operand alone (in no other and not kept): PyTorch
    sums it first, which takes integer and bool operands to int64 (``'ij->'`` of int8 counts
    past 127, ``'ii->'`` of bools counts); letters shared by operands keep their dtype, and so
    do, beside other operands, letters of length 1 (squeezed, not summed)."""
    return any(c not in out and all(c not in u for j, u in enumerate(terms) if j != i)
               and (len(terms) == 1 or s[k] != 1)
               for i, (t, s) in enumerate(zip(terms, shapes)) for k, c in enumerate(t))



# === linear algebra: solves, determinants, decompositions ====================================
# Every primitive below acts on the last two axes and is batched over the leading ones. A
# decomposition with several outputs (slogdet, qr, eigh, svd) returns ONE flat array (each
# output's trailing part flattened and concatenated) that ``nodegrad.linalg`` splits with
# differentiable slices: one node holds one factorisation, and its VJP reads the cotangents of
# all outputs from one flat cotangent (zeros for unused outputs).
def _tri(x, upper: bool = False, k: int = 0):
    """x with the entries outside its lower (``upper``: upper) triangle, from diagonal k, zeroed."""
    xp = x.backend.xp
    m, n = x.shape[-2], x.shape[-1]
    mask = 1 - xp.tri(m, n, k - 1, dtype=x.dtype) if upper else xp.tri(m, n, k, dtype=x.dtype)
    return x * Tensor._of(mask)


def _eye(x, n: int | None = None):
    return Tensor._of(x.backend.xp.eye(x.shape[-1] if n is None else n, dtype=x.dtype))


def _diag(x):
    return einsum("...ii->...i", x)


def _diag_embed(v):
    return expand_dims(v, -1) * _eye(v)


def _sym(x):
    return (x + _mT(x)) * 0.5


def _size(t) -> int:
    """The number of entries of t's trailing matrix."""
    return t.shape[-1] * t.shape[-2]


def _lead(t) -> tuple:
    return tuple(t.shape[:-1])


def _pack(xp, *arrays, nd: tuple):
    """Concatenate arrays whose last ``nd[i]`` axes are the output part, flattened."""
    parts = [a.reshape(a.shape[:a.ndim - k] + (B.np.prod(a.shape[a.ndim - k:], dtype=int),))
             for a, k in zip(arrays, nd)]
    return xp.concatenate(parts, axis=-1)


def _unpack(t, shapes):
    """The outputs packed by ``_pack``: one differentiable slice and reshape per shape."""
    out, i = [], 0
    lead = _lead(t)
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        out.append(reshape(t[..., i:i + n], lead + tuple(s)))
        i += n
    return out


NO_CONVERGENCE = "the algorithm did not converge (is every entry finite?)"


def _call(op: str, what: str, fn, *a, **k):
    """fn(*a, **k), with LAPACK's failures raised as :class:`LinAlgError` naming the op (NumPy's
    own is a ValueError)."""
    try:
        return fn(*a, **k)
    except B.np.linalg.LinAlgError as e:
        raise LinAlgError(f"{op}: {what} ({e})") from None


def _bcast2(xp, a, b):
    lead = B.np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return xp.broadcast_to(a, lead + a.shape[-2:]), xp.broadcast_to(b, lead + b.shape[-2:])


def _batch1(name: str):
    """Batch rule of a one-matrix op: batch axis first, the op is batched over leading axes."""
    def rule(vals, bdims, **params):
        return globals()[name](front(vals[0], bdims[0]), **params), 0
    return rule


def _batch2(name: str):
    """Batch rule of a two-matrix op: batch axes first, leading axes aligned to broadcast."""
    def rule(vals, bdims, **params):
        r = max(v.ndim - (b is not None) for v, b in zip(vals, bdims))
        args = [v if b is None else rank_up(v, b, r) for v, b in zip(vals, bdims)]
        return globals()[name](*args, **params), 0
    return rule


def _right(x, r, upper: bool):
    """x R⁻¹ for a triangular R (a solve from the right)."""
    return _mT(solve_triangular(_mT(r), _mT(x), upper=not upper, unitriangular=False))


# --- inv, solve, solve_triangular -----------------------------------------------------------
inv = primitive(
    "inv", lambda xp, a: _call("inv", "the matrix is singular", xp.linalg.inv, a),
    lambda g, ans, a: -matmul(matmul(_mT(ans), g), _mT(ans)), saves="out", kind="linalg",
    jvp=lambda ts, ans, a: -matmul(matmul(ans, ts[0]), ans), batch=_batch1("inv"),
    complex="holomorphic", doc="Matrix inverse: d(A⁻¹) = −A⁻¹ dA A⁻¹.")


def _solve_fwd(xp, a, b):
    a, b = _bcast2(xp, a, b)
    return _call("solve", "the matrix is singular", xp.linalg.solve, a, b)


def _solve_vjp(needs, g, ans, a, b):
    gb = solve(_mT(a), g)
    return (-matmul(gb, _mT(ans)) if needs[0] else None, gb if needs[1] else None)


def _solve_jvp(ts, ans, a, b):
    rhs = ts[1]
    if ts[0] is not None:
        rhs = -matmul(ts[0], ans) if rhs is None else rhs - matmul(ts[0], ans)
    return solve(a, rhs)


solve = primitive("solve", _solve_fwd, vjp_all=_solve_vjp, saves="both", kind="linalg",
                  jvp=_solve_jvp, batch=_batch2("solve"), complex="holomorphic",
                  doc="X with A X = B (B a matrix): dB̄ = A⁻ᵀ X̄, Ā = −B̄ Xᵀ.")


def _tri_np(xp, a, upper, unitriangular):
    t = xp.triu(a) if upper else xp.tril(a)
    if unitriangular:
        n = a.shape[-1]
        t = t * (1 - xp.eye(n, dtype=a.dtype)) + xp.eye(n, dtype=a.dtype)
    return t


def _solve_tri_fwd(xp, a, b, upper, unitriangular):
    a, b = _bcast2(xp, a, b)
    return _call("solve_triangular", "the triangular matrix has a zero on its diagonal",
                 xp.linalg.solve, _tri_np(xp, a, upper, unitriangular), b)


def _solve_tri_vjp(needs, g, ans, a, b, upper, unitriangular):
    gb = solve_triangular(_mT(a), g, upper=not upper, unitriangular=unitriangular)
    ga = None
    if needs[0]:
        ga = -_tri(matmul(gb, _mT(ans)), upper, (1 if upper else -1) if unitriangular else 0)
    return (ga, gb if needs[1] else None)


def _solve_tri_jvp(ts, ans, a, b, upper, unitriangular):
    rhs = ts[1]
    if ts[0] is not None:
        k = (1 if upper else -1) if unitriangular else 0
        d = -matmul(_tri(ts[0], upper, k), ans)
        rhs = d if rhs is None else rhs + d
    return solve_triangular(a, rhs, upper=upper, unitriangular=unitriangular)


solve_triangular = primitive(
    "solve_triangular", _solve_tri_fwd, vjp_all=_solve_tri_vjp, saves="both", kind="linalg",
    jvp=_solve_tri_jvp, batch=_batch2("solve_triangular"), complex="holomorphic",
    doc="X with T X = B, T the lower/upper triangle of A (unit diagonal if asked).")


# --- det, slogdet ---------------------------------------------------------------------------
def _singular(a) -> bool:
    """True if some matrix of the batch is singular to working precision (decides the rule)."""
    v = values(a)
    if v.size == 0:
        return False
    xp = a.backend.xp
    s = xp.linalg.svd(v, compute_uv=False)
    return bool((s[..., -1] <= s[..., 0] * xp.finfo(v.dtype).eps ** 0.5).any())


MINORS_MAX = 6
"""Size up to which a singular matrix's cofactors are its minors' determinants (n² of them)."""


def _cofactor(a, d):
    """∂ det A / ∂A: det(A)·A⁻ᵀ, or for singular matrices (PyTorch's finite gradient) the
    cofactors: up to MINORS_MAX, the signed determinants of the minors, whose own derivatives
    are again cofactors, so the second derivative is finite at any rank; above, from the SVD
    A = U S Vᵀ: det(U) det(Vᵀ) U diag(∏_{j≠i} s_j) Vᵀ, whose derivative needs distinct
    singular values (NaN at rank n - 2 and below)."""
    if not _singular(a):
        return expand_dims(expand_dims(d, -1), -1) * _mT(inv(a))
    n = a.shape[-1]
    if n <= MINORS_MAX:
        np, xp = B.np, a.backend.xp
        keep = xp.asarray(np.array([[k for k in range(n) if k != i] for i in range(n)],
                                   dtype=np.int64).reshape(n, n - 1))
        minors = getitem(a, (Ellipsis, keep[:, None, :, None], keep[None, :, None, :]))
        sign = xp.asarray(1 - 2 * (np.add.outer(np.arange(n), np.arange(n)) % 2), a.dtype)
        return det(minors) * sign
    u, s, vh = _unpack(svd(a, full_matrices=False), _svd_shapes(a.shape, False))
    n = s.shape[-1]
    eye = _eye(s)
    p = s * 0 + 1
    for j in range(n):  # the product of the other singular values, zeros included
        p = p * where(eye[j] > 0, 1.0, s[..., j:j + 1])
    sign = det(u) * det(vh)
    # complex A: det(A)·A⁻ᵀ = det(U) det(Vᴴ) conj(U diag(p) Vᴴ)
    return expand_dims(expand_dims(sign, -1), -1) * _conj(matmul(u * expand_dims(p, -2), vh))


det = primitive(
    "det", lambda xp, a: xp.linalg.det(a),
    lambda g, ans, a: expand_dims(expand_dims(g, -1), -1) * _cofactor(a, ans), saves="both",
    kind="linalg", jvp=lambda ts, ans, a: (_cofactor(a, ans) * ts[0]).sum(axis=(-2, -1)),
    batch=_batch1("det"), complex="holomorphic",
    doc="Determinant; its gradient is the cofactor matrix (finite when "
    "singular, as in PyTorch).")


def _slogdet_fwd(xp, a):
    sign, logabs = xp.linalg.slogdet(a)
    return xp.stack([sign, logabs], axis=-1)


def _slogdet_inv(a):
    """A⁻¹ for the rules of log|det A|, whose derivative A⁻ᵀ is infinite where A is singular."""
    try:
        return inv(a)
    except LinAlgError:
        raise LinAlgError("slogdet: A is singular, so the derivative of log|det A| (A⁻ᵀ) is "
                          "infinite; no finite gradient exists there") from None


def _slogdet_cjvp(ts, ans, a):
    """Complex A: w = tr(A⁻¹ dA); d sign = i sign Im w, d log|det| = Re w."""
    w = (_mT(_slogdet_inv(a)) * ts[0]).sum(axis=(-2, -1))
    ds = slogdet(a)[..., 0] * REGISTRY["imag"](w) * 1j
    return concatenate([expand_dims(ds, -1), expand_dims(_re(w) + 0j, -1)], -1)


def _slogdet_jvp(ts, ans, a):
    if a.dtype.kind == "c":
        return _slogdet_cjvp(ts, ans, a)
    dl = (_mT(_slogdet_inv(a)) * ts[0]).sum(axis=(-2, -1))
    return concatenate([expand_dims(dl * 0, -1), expand_dims(dl, -1)], -1)


def _slogdet_cvjp(g, ans, a):
    """Complex A (sign = det/|det| complex, log|det| real): d log det = tr(A⁻¹ dA) = w, so
    d log|det| = Re w and d sign = i sign Im w; Ā = c A⁻ᴴ with c = ḡ_log − i Im(conj(ḡ_sign)
    sign), as PyTorch's."""
    gs, gl, sign = g[..., 0], _re(g[..., 1]), slogdet(a)[..., 0]
    c = gl - REGISTRY["imag"](_conj(gs) * sign) * 1j
    return expand_dims(expand_dims(c, -1), -1) * _mH(_slogdet_inv(a))


slogdet = primitive(
    "slogdet", _slogdet_fwd,
    lambda g, ans, a: expand_dims(expand_dims(g[..., 1], -1), -1) * _mT(_slogdet_inv(a)),
    saves="inputs", kind="linalg", jvp=_slogdet_jvp, batch=_batch1("slogdet"),
    complex=(_slogdet_cvjp,),
    doc="(sign, log|det|) packed as (..., 2); d log|det A| = tr(A⁻¹ dA), the sign is constant.")


# --- cholesky -------------------------------------------------------------------------------
def _phi(x):
    """The lower triangle with the diagonal halved (Φ of the Cholesky rules)."""
    return _tri(x) - _diag_embed(_diag(x)) * 0.5


def _lower(ans, upper: bool):
    """The lower factor L of a Cholesky result (Uᴴ for ``upper``)."""
    return _mH(ans) if upper else ans


def _cholesky_vjp(g, ans, a, upper=False):
    ans, g = _lower(ans, upper), _lower(g, upper)
    linv = solve_triangular(ans, _eye(ans), upper=False, unitriangular=False)
    ga = matmul(matmul(_mT(linv), _phi(matmul(_mT(ans), g))), linv)
    return _sym(ga)


def _cholesky_cjvp(da, ans):
    """Complex A, the transpose of the VJP: with Y = L⁻¹ dA L⁻ᴴ, dL = L (strictly lower
    herm(Y) + diag(Y)/2); the diagonal keeps Im Y (PyTorch's gradient does not project it)."""
    y = solve_triangular(ans, da, upper=False, unitriangular=False)
    y = _mH(solve_triangular(ans, _mH(y), upper=False, unitriangular=False))
    return matmul(ans, _tri((y + _mH(y)) * 0.5, k=-1) + _diag_embed(_diag(y)) * 0.5)


def _cholesky_jvp(ts, ans, a, upper=False):
    ans = _lower(ans, upper)
    if a.dtype.kind == "c":
        return _lower(_cholesky_cjvp(ts[0], ans), upper)
    x = solve_triangular(ans, _sym(ts[0]), upper=False, unitriangular=False)  # L⁻¹ dA
    x = _mT(solve_triangular(ans, _mT(x), upper=False, unitriangular=False))  # L⁻¹ dA L⁻ᵀ
    return _lower(matmul(ans, _phi(x)), upper)


def _cholesky_fwd(xp, a, upper=False):
    if upper:  # A's upper triangle is the lower one of Aᴴ, and U = Lᴴ
        a = xp.conj(xp.swapaxes(a, -1, -2))
    out = _call("cholesky", "the matrix is not positive-definite", xp.linalg.cholesky, a)
    if out.size and bool(xp.isnan(xp.diagonal(out, 0, -2, -1)).any()):
        # LAPACK's reference potrf stops at a NaN pivot (PyTorch raises there); some optimised
        # builds carry the NaN through the factor instead
        raise LinAlgError("cholesky: the matrix is not positive-definite (a NaN in the "
                          "triangle read)")
    return xp.conj(xp.swapaxes(out, -1, -2)) if upper else out


def _cholesky_cvjp(g, ans, a, upper=False):
    """Hermitian A = L Lᴴ, PyTorch's rule: with P = tril(Lᴴ L̄), Ā = L⁻ᴴ (P + P₋ᴴ)/2 L⁻¹
    (P₋ its strictly lower part): Hermitian off the diagonal, which keeps P's imaginary part;
    for ``upper`` the same rule of L = Uᴴ and its cotangent Ūᴴ."""
    ans, g = _lower(ans, upper), _lower(g, upper)
    linv = solve_triangular(ans, _eye(ans), upper=False, unitriangular=False)
    p = _tri(matmul(_mH(ans), g))
    return matmul(matmul(_mH(linv), (p + _mH(_tri(p, k=-1))) * 0.5), linv)


cholesky = primitive(
    "cholesky", _cholesky_fwd, _cholesky_vjp, saves="out", kind="linalg", jvp=_cholesky_jvp,
    batch=_batch1("cholesky"), complex=(_cholesky_cvjp,),
    doc="Cholesky factor: lower L with A = L Lᴴ (the lower triangle read), or (``upper``) U "
        "with A = Uᴴ U (the upper triangle read); PyTorch's gradient rule.")


# --- qr -------------------------------------------------------------------------------------
def _qr_shapes(shape, mode):
    m, n = shape[-2], shape[-1]
    k = m if mode == "complete" else min(m, n)
    return (m, k), (k, n)


def _qr_fwd(xp, a, mode):
    q, r = xp.linalg.qr(a, mode=mode)
    return _pack(xp, q, r, nd=(2, 2))


def _geqrf_fwd(xp, a):
    """LAPACK's Householder QR (a, tau) packed; NumPy's raw ``h`` is LAPACK's column-major
    ``a`` transposed, hence the swap."""
    h, tau = xp.linalg.qr(a, mode="raw")
    return _pack(xp, xp.swapaxes(h, -1, -2), tau, nd=(2, 1))


geqrf = primitive("geqrf", _geqrf_fwd, None, kind="linalg", batch=_batch1("geqrf"),
                  doc="(a, tau) of LAPACK's geqrf, packed; no gradient, as in PyTorch.")


def _copyltu(m):
    return _tri(m) + _mT(_tri(m, k=-1))


def _qr_vjp_tall(gq, gr, q, r):
    """m >= n: Ā = (Q̄ + Q copyltu(M)) R⁻ᴴ with M = R R̄ᴴ − Q̄ᴴ Q; for complex A the strict lower
    triangle is mirrored conjugated and only Re of the diagonal counts (R's is real)."""
    if q.dtype.kind != "c":
        m = matmul(r, _mT(gr)) - matmul(_mT(gq), q)
        return _right(gq + matmul(q, _copyltu(m)), _mT(r), upper=False)
    m = matmul(r, _mH(gr)) - matmul(_mH(gq), q)
    return _right(gq + matmul(q, _copyltu_c(m)), _mH(r), upper=False)


def _copyltu_c(m):
    """copyltu for complex M: the strict lower triangle mirrored conjugated, Re of the diagonal
    (R's diagonal is real, so only Re reaches it)."""
    low = _tri(m, k=-1)
    return low + _mH(low) + _diag_embed(_re(_diag(m)))


def _qr_vjp(g, ans, a, mode):
    """Real and complex A (the complex rule is this one: conjugate transposes throughout)."""
    m, n = a.shape[-2], a.shape[-1]
    if mode == "complete" and m > n:
        raise GradError("qr: mode='complete' with more rows than columns is not differentiable "
                        "(as in PyTorch); use mode='reduced'")
    shapes = _qr_shapes(a.shape, mode)
    q, r = _unpack(ans, shapes)
    gq, gr = _unpack(g, shapes)
    if m >= n:
        return _qr_vjp_tall(gq, gr, q, r)
    u, v = r[..., :m], r[..., m:]
    gu, gv = gr[..., :m], gr[..., m:]
    y = matmul(q, v)
    gx = _qr_vjp_tall(gq + matmul(y, _mH(gv) if q.dtype.kind == "c" else _mT(gv)), gu, q, u)
    return concatenate([gx, matmul(q, gv)], -1)


def _qr_jvp_tall(da, q, r):
    z = _right(da, r, upper=True)  # dA R⁻¹
    c = matmul(_mT(q), z)
    low = _tri(c, k=-1)
    cw = c - low + _mT(low)  # C − Ω, upper triangular
    return z - matmul(q, cw), matmul(cw, r)


def _qr_jvp_tall_c(da, q, r):
    """Complex m >= n: C = Qᴴ dA R⁻¹, Ω = low − lowᴴ + i Im diag C (skew-Hermitian),
    dR = (C − Ω) R, dQ = dA R⁻¹ − Q (C − Ω)."""
    z = _right(da, r, upper=True)
    c = matmul(_mH(q), z)
    low = _tri(c, k=-1)
    cw = c - low + _mH(low) - _diag_embed(REGISTRY["imag"](_diag(c)) * 1j)
    return z - matmul(q, cw), matmul(cw, r)


def _qr_jvp(ts, ans, a, mode):
    m, n = a.shape[-2], a.shape[-1]
    cplx = a.dtype.kind == "c"
    tall, h = (_qr_jvp_tall_c, _mH) if cplx else (_qr_jvp_tall, _mT)
    if mode == "complete" and m > n:
        raise GradError("qr: mode='complete' with more rows than columns is not differentiable "
                        "(as in PyTorch); use mode='reduced'")
    q, r = _unpack(ans, _qr_shapes(a.shape, mode))
    da = ts[0]
    if m >= n:
        dq, dr = tall(da, q, r)
    else:
        u, v = r[..., :m], r[..., m:]
        dq, du = tall(da[..., :m], q, u)
        dv = matmul(h(q), da[..., m:] - matmul(dq, v))
        dr = concatenate([du, dv], -1)
    lead = _lead(dq)[:-1]
    return concatenate([reshape(dq, lead + (_size(dq),)), reshape(dr, lead + (_size(dr),))], -1)


qr = primitive("qr", _qr_fwd, _qr_vjp, saves="out", kind="linalg", jvp=_qr_jvp,
               batch=_batch1("qr"), complex=(_qr_vjp,),
               doc="QR decomposition, Q and R packed flat (see linalg.qr).")


# --- eigh, eigvalsh -------------------------------------------------------------------------
def _eigh_fwd(xp, a, uplo):
    w, v = _call("eigh", NO_CONVERGENCE, xp.linalg.eigh, a, UPLO=uplo)
    return _pack(xp, w, v, nd=(1, 2))


def _gaps(w, num=None):
    """E_ij = w_j − w_i with 1 on the diagonal; where a gap is 0 and ``num`` is 0 too, 1 (so an
    unused output contributes 0, not 0/0, as PyTorch, which skips it)."""
    e = expand_dims(w, -2) - expand_dims(w, -1) + _eye(w)
    if num is None:
        return e
    return where(logical_and(e == 0, num == 0), 1.0, e)


def _eigh_vjp(g, ans, a, uplo):
    n = a.shape[-1]
    w, v = _unpack(ans, ((n,), (n, n)))
    gw, gv = _unpack(g, ((n,), (n, n)))
    vgv = matmul(_mT(v), gv)
    skew = (vgv - _mT(vgv)) * 0.5
    inner = skew / _gaps(w, skew) + _diag_embed(gw)
    return matmul(matmul(v, inner), _mT(v))


def _eigh_cvjp(g, ans, a, uplo):
    """Hermitian A: Ā = V (skew(Vᴴ V̄)/E + diag(w̄)) Vᴴ, after PyTorch's phase check."""
    n = a.shape[-1]
    w, v = _unpack(ans, ((n,), (n, n)))
    gw, gv = _unpack(g, ((n,), (n, n)))
    vh = _mH(v)
    vgv = matmul(vh, gv)
    _phase_check("linalg_eigh_backward", _diag(vgv))
    skew = (vgv - _mH(vgv)) * 0.5
    inner = skew / _gaps(_re(w), skew) + _diag_embed(_re(gw))
    return matmul(matmul(v, inner), vh)


def _eigh_cjvp(ts, ans, a, uplo):
    """Hermitian A: P = Vᴴ herm(dA) V, dw = Re diag P, dV = V (P / E off the diagonal)."""
    n = a.shape[-1]
    w, v = _unpack(ans, ((n,), (n, n)))
    da = ts[0]
    p = matmul(matmul(_mH(v), (da + _mH(da)) * 0.5), v)
    dw = _re(_diag(p)) + 0j
    dv = matmul(v, p * (1 - _eye(p)) / _gaps(_re(w)))
    return concatenate([dw, reshape(dv, _lead(dw) + (_size(dv),))], -1)


def _eigh_jvp(ts, ans, a, uplo):
    if a.dtype.kind == "c":
        return _eigh_cjvp(ts, ans, a, uplo)
    n = a.shape[-1]
    w, v = _unpack(ans, ((n,), (n, n)))
    p = matmul(matmul(_mT(v), _sym(ts[0])), v)
    dw = _diag(p)
    dv = matmul(v, (p - _diag_embed(dw)) / _gaps(w))
    lead = _lead(dw)
    return concatenate([dw, reshape(dv, lead + (_size(dv),))], -1)


eigh = primitive("eigh", _eigh_fwd, _eigh_vjp, saves="out", kind="linalg", jvp=_eigh_jvp,
                 batch=_batch1("eigh"), complex=(_eigh_cvjp,),
                 doc="Symmetric eigendecomposition, (w, V) packed flat (see linalg.eigh).")


def _eigvecs(a, uplo):
    n = a.shape[-1]
    return _unpack(eigh(a, uplo=uplo), ((n,), (n, n)))[1]


def _eigvalsh_vjp(g, ans, a, uplo):
    v = _eigvecs(a, uplo)
    return matmul(v * expand_dims(g, -2), _mH(v))  # V diag(ḡ) Vᴴ (real g, complex V too)


def _eigvalsh_jvp(ts, ans, a, uplo):
    v = _eigvecs(a, uplo)
    if v.dtype.kind == "c":
        da = ts[0]
        return _re((_conj(v) * matmul((da + _mH(da)) * 0.5, v)).sum(axis=-2))
    return (v * matmul(_sym(ts[0]), v)).sum(axis=-2)


eigvalsh = primitive(
    "eigvalsh", lambda xp, a, uplo: _call("eigvalsh", NO_CONVERGENCE, xp.linalg.eigvalsh, a,
                                          UPLO=uplo), _eigvalsh_vjp,
    saves="inputs", kind="linalg", batch=_batch1("eigvalsh"), jvp=_eigvalsh_jvp,
    doc="Eigenvalues of a symmetric matrix (ascending); finite gradient V diag(ḡ) Vᵀ.")


# --- svd, svdvals, pinv ---------------------------------------------------------------------
def _svd_shapes(shape, full):
    m, n = shape[-2], shape[-1]
    k = min(m, n)
    return ((m, m) if full else (m, k)), (k,), ((n, n) if full else (k, n))


def _svd_fwd(xp, a, full_matrices):
    u, s, vh = _call("svd", NO_CONVERGENCE, xp.linalg.svd, a, full_matrices=full_matrices)
    return _pack(xp, u, s, vh, nd=(2, 1, 2))


def _svd_vjp(g, ans, a, full_matrices):
    """Real and complex A (the complex rule is this one: conjugate transposes, Hermitian
    skews, and the phase term i Im diag(Uᴴ Ū) / S on the diagonal, after PyTorch's phase
    check)."""
    m, n = a.shape[-2], a.shape[-1]
    k = min(m, n)
    shapes = _svd_shapes(a.shape, full_matrices)
    u, s, vh = _unpack(ans, shapes)
    gu, gs, gvh = _unpack(g, shapes)
    if full_matrices:  # the extra columns are not unique: they get no gradient (PyTorch)
        u, gu, vh, gvh = u[..., :k], gu[..., :k], vh[..., :k, :], gvh[..., :k, :]
    cplx = a.dtype.kind == "c"
    adj = _mH if cplx else _mT
    if cplx:
        s, gs = _re(s), _re(gs)
    ugu = matmul(adj(u), gu)
    vgv = matmul(vh, adj(gvh))
    diag = gs
    if cplx:
        _phase_check("svd_backward", _diag(ugu) + _diag(vgv), "singular vectors")
        diag = gs + REGISTRY["imag"](_diag(ugu)) * 1j / where(s == 0, 1.0, s)
    ugu = ugu - adj(ugu)
    vgv = vgv - adj(vgv)
    num = ugu * expand_dims(s, -2) + expand_dims(s, -1) * vgv
    ga = num / _gaps(s * s, num) + _diag_embed(diag)
    if m > k:
        gusinv = gu / expand_dims(s, -2)
        ga = matmul(matmul(u, ga) + gusinv - matmul(u, matmul(adj(u), gusinv)), vh)
    elif n > k:
        sinvgvh = gvh / expand_dims(s, -1)
        ga = matmul(u, matmul(ga, vh) + sinvgvh - matmul(matmul(sinvgvh, adj(vh)), vh))
    else:
        ga = matmul(matmul(u, ga), vh)
    return ga


def _svd_jvp(ts, ans, a, full_matrices):
    if a.dtype.kind == "c":
        raise GradError("svd: forward-mode differentiation of a complex svd is not supported "
                        "(its reverse mode is)")
    m, n = a.shape[-2], a.shape[-1]
    k = min(m, n)
    u, s, vh = _unpack(ans, _svd_shapes(a.shape, full_matrices))
    if full_matrices:  # the extra columns are not unique: zero tangent, as the VJP ignores them
        u, vh = u[..., :k], vh[..., :k, :]
    da = ts[0]
    v = _mT(vh)
    dp = matmul(matmul(_mT(u), da), v)
    ds = _diag(dp)
    f = (1 - _eye(s)) / _gaps(s * s)
    si, sj = expand_dims(s, -1), expand_dims(s, -2)
    du = matmul(u, f * (dp * sj + si * _mT(dp)))
    dv = matmul(v, f * (si * dp + _mT(dp) * sj))
    if m > n:
        du = du + (matmul(da, v) - matmul(u, dp)) / sj
    elif n > m:
        dv = dv + (matmul(_mT(da), u) - matmul(v, _mT(dp))) / sj
    if full_matrices:
        xp = ds.backend.xp
        du = concatenate([du, Tensor._of(xp.zeros(du.shape[:-1] + (m - k,), dtype=du.dtype))], -1)
        dv = concatenate([dv, Tensor._of(xp.zeros(dv.shape[:-1] + (n - k,), dtype=dv.dtype))], -1)
    lead = _lead(ds)
    return concatenate([reshape(du, lead + (_size(du),)), ds,
                        reshape(_mT(dv), lead + (_size(dv),))], -1)


svd = primitive("svd", _svd_fwd, _svd_vjp, saves="out", kind="linalg", jvp=_svd_jvp,
                batch=_batch1("svd"), complex=(_svd_vjp,),
                doc="Singular value decomposition, (U, S, Vh) packed flat (see linalg.svd).")


def _svd_parts(a):
    return _unpack(svd(a, full_matrices=False), _svd_shapes(a.shape, False))


def _svdvals_vjp(g, ans, a):
    u, _, vh = _svd_parts(a)
    return matmul(u * expand_dims(g, -2), vh)


def _svdvals_jvp(ts, ans, a):
    u, _, vh = _svd_parts(a)
    if u.dtype.kind == "c":  # ds = Re diag(Uᴴ dA V)
        return _re((_conj(u) * matmul(ts[0], _mH(vh))).sum(axis=-2))
    return (u * matmul(ts[0], _mT(vh))).sum(axis=-2)


svdvals = primitive("svdvals", lambda xp, a: _call("svdvals", NO_CONVERGENCE, xp.linalg.svd, a,
                                                   compute_uv=False), _svdvals_vjp,
                    saves="inputs", kind="linalg", jvp=_svdvals_jvp, batch=_batch1("svdvals"),
                    doc="Singular values (descending); finite gradient U diag(ḡ) Vᵀ.")


def _pinv_fwd(xp, a, atol, rtol):
    m, n = a.shape[-2], a.shape[-1]
    if m == 0 or n == 0:
        return xp.zeros(a.shape[:-2] + (n, m), dtype=a.dtype)
    u, s, vh = _call("pinv", NO_CONVERGENCE, xp.linalg.svd, a, full_matrices=False)
    cut = xp.maximum(atol, rtol * s[..., :1])
    keep = s > cut
    sinv = xp.where(keep, 1 / xp.where(keep, s, 1), 0).astype(a.dtype)
    if a.dtype.kind == "c":
        vh, u = xp.conj(vh), xp.conj(u)
    return xp.matmul(xp.swapaxes(vh, -1, -2) * sinv[..., None, :], xp.swapaxes(u, -1, -2))


def _pinv_vjp(g, x, a, atol, rtol):
    xt, gt = _mT(x), _mT(g)
    xxt, xtx = matmul(x, xt), matmul(xt, x)
    return (-matmul(matmul(xt, g), xt) + matmul(gt, xxt) - matmul(matmul(a, x), matmul(gt, xxt))
            + matmul(xtx, gt) - matmul(matmul(xtx, gt), matmul(x, a)))


def _pinv_cvjp(g, x, a, atol, rtol):
    """Complex A: the constant-rank rule with conjugate transposes,
    Ā = −Xᴴ ḡ Xᴴ + (I − A X) ḡᴴ X Xᴴ + Xᴴ X ḡᴴ (I − X A)."""
    xt, gt = _mH(x), _mH(g)
    xxt, xtx = matmul(x, xt), matmul(xt, x)
    return (-matmul(matmul(xt, g), xt) + matmul(gt, xxt) - matmul(matmul(a, x), matmul(gt, xxt))
            + matmul(xtx, gt) - matmul(matmul(xtx, gt), matmul(x, a)))


def _pinv_cjvp(ts, x, a, atol, rtol):
    """Complex A: dX = −X dA X + X Xᴴ dAᴴ (I − A X) + (I − X A) dAᴴ Xᴴ X."""
    da = ts[0]
    dat, xt = _mH(da), _mH(x)
    return (-matmul(matmul(x, da), x)
            + matmul(matmul(x, xt), dat - matmul(dat, matmul(a, x)))
            + matmul(dat - matmul(matmul(x, a), dat), matmul(xt, x)))


def _pinv_jvp(ts, x, a, atol, rtol):
    if a.dtype.kind == "c":
        return _pinv_cjvp(ts, x, a, atol, rtol)
    da = ts[0]
    dat = _mT(da)
    xt = _mT(x)
    return (-matmul(matmul(x, da), x)
            + matmul(matmul(x, xt), dat - matmul(dat, matmul(a, x)))
            + matmul(dat - matmul(matmul(x, a), dat), matmul(xt, x)))


pinv = primitive("pinv", _pinv_fwd, _pinv_vjp, saves="both", kind="linalg", jvp=_pinv_jvp,
                 batch=_batch1("pinv"), complex=(_pinv_cvjp,),
                 doc="Moore–Penrose pseudo-inverse (singular values ≤ max(atol, rtol·σ₁) cut); "
                     "gradient by the constant-rank rule.")



# --- eig ------------------------------------------------------------------------------------
def _eig_fwd(xp, a):
    if xp is not B.np and not hasattr(xp.linalg, "eig"):  # no general eig on the device:
        return xp.asarray(_eig_fwd(B.np, B.backend_of(a).to_host(a)))  # LAPACK's on the host
    w, v = _call("eig", NO_CONVERGENCE, xp.linalg.eig, a)
    ct = B.np.complex128 if a.dtype in (B.np.float64, B.np.complex128) else B.np.complex64
    return _pack(xp, w.astype(ct, copy=False), v.astype(ct, copy=False), nd=(1, 2))


def _eig_vjp(g, ans, a):
    """PyTorch's ``linalg_eig_backward``: with E_ij = conj(λ_j − λ_i),
    Ā = V⁻ᴴ ((Vᴴ V̄ − Vᴴ V diag(Re diag(Vᴴ V̄))) / E + diag(λ̄)) Vᴴ, the off-diagonal part
    only where it is non-zero (an unused V gives none, even at repeated eigenvalues). The loss
    must not depend on the eigenvectors' phases (checked, as PyTorch). A is kept (saves
    "both") so that a real A gets the real part."""
    n = a.shape[-1]
    w, v = _unpack(ans, ((n,), (n, n)))
    gw, gv = _unpack(g, ((n,), (n, n)))
    vh = _mH(v)
    vgv = matmul(vh, gv)
    d = _diag(vgv)
    _phase_check("linalg_eig_backward", d)
    off = vgv - matmul(vh, v * expand_dims(_re(d), -2))
    off = off * (1 - _eye(off))
    e = _conj(expand_dims(w, -2) - expand_dims(w, -1)) + _eye(w)
    inner = off / where(off == 0, 1.0, e) + _diag_embed(gw)
    return solve(vh, matmul(inner, vh))


def _eig_jvp(ts, ans, a):
    """dλ = diag(V⁻¹ dA V); dV = V (P / E off the diagonal), each column's change kept
    orthogonal to it in Re (its norm stays 1), as PyTorch's ``linalg_eig_jvp``."""
    n = a.shape[-1]
    w, v = _unpack(ans, ((n,), (n, n)))
    p = solve(v, matmul(ts[0], v))
    dw = _diag(p)
    e = expand_dims(w, -2) - expand_dims(w, -1) + _eye(w)
    dv = matmul(v, p * (1 - _eye(p)) / e)
    dv = dv - v * expand_dims(_re(_diag(matmul(_mH(v), dv))), -2)
    lead = _lead(dw)
    return concatenate([dw, reshape(dv, lead + (_size(dv),))], -1)


eig = primitive("eig", _eig_fwd, _eig_vjp, saves="both", kind="linalg", jvp=_eig_jvp,
                batch=_batch1("eig"), complex=(_eig_vjp,),
                doc="Eigendecomposition of a general square matrix, (λ, V) packed flat and "
                    "complex (see linalg.eig).")
