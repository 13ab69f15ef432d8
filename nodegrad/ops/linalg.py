"""Products: matmul (batched, with NumPy's 1-d rules) and einsum.

The notes' rules: for C = A B, dA = dC Bᵀ and dB = Aᵀ dC. Batch axes broadcast; the engine sums
them back to each operand's shape.
"""

from __future__ import annotations

import string

from ..errors import ShapeError
from ..primitive import primitive
from ..batching import front, rank_up, size_of
from .shape import expand_dims, reshape, swapaxes


def _mT(x):
    return swapaxes(x, -1, -2)


def _matmul_da(g, ans, a, b):
    if b.ndim == 1:
        return g * b if a.ndim == 1 else expand_dims(g, -1) * b
    if a.ndim == 1:
        return reshape(matmul(b, expand_dims(g, -1)), g.shape[:-1] + (b.shape[-2],))
    return matmul(g, _mT(b))


def _matmul_db(g, ans, a, b):
    if a.ndim == 1:
        return g * a if b.ndim == 1 else expand_dims(a, -1) * expand_dims(g, -2)
    if b.ndim == 1:
        return reshape(matmul(_mT(a), expand_dims(g, -1)), g.shape[:-1] + (a.shape[-1],))
    if a.shape[-2] == 1 and a.ndim > 2 and b.ndim > 2:  # stacked outer products (vmap'ed
        return _mT(a) * g                                # layers): a broadcast multiply
    if b.ndim == 2 and a.ndim > 2:  # shared weight (x @ W over a batch): one GEMM
        k = a.shape[-1]
        return matmul(_mT(reshape(a, (-1, k))), reshape(g, (-1, g.shape[-1])))
    return matmul(_mT(a), g)


def _matmul_fwd(xp, a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: both operands need at least one dimension")
    return xp.matmul(a, b)


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


matmul = primitive("matmul", _matmul_fwd, (_matmul_da, _matmul_db), kind="linalg",
                   jvp="multilinear", batch=_matmul_batch, operands="all",
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


def _einsum_vjp(needs, g, ans, *ops, terms, out):
    grads = []
    for i, need in enumerate(needs):
        if not need:
            grads.append(None)
            continue
        t = terms[i]
        if len(set(t)) != len(t):
            raise ShapeError(f"einsum: no gradient for repeated subscripts in {t!r} (a diagonal)")
        others = [ops[j] for j in range(len(ops)) if j != i]
        oterms = [terms[j] for j in range(len(ops)) if j != i]
        have = set(out).union(*oterms) if oterms else set(out)
        kept = "".join(c for c in t if c in have)
        gi = einsum(",".join([out] + oterms) + "->" + kept, g, *others)
        if kept != t:  # letters summed only inside operand i: broadcast back over them
            shape = tuple(ops[i].shape[t.index(c)] if c in kept else 1 for c in t)
            gi = reshape(gi, shape).expand(*ops[i].shape)
        grads.append(gi)
    return grads


def _einsum_batch(vals, bdims, terms, out):
    c = next(ch for ch in string.ascii_letters if ch not in "".join(terms) + out)
    ops = [v if b is None else front(v, b) for v, b in zip(vals, bdims)]
    ts = tuple(t if b is None else c + t for t, b in zip(terms, bdims))
    return _einsum(*ops, terms=ts, out=c + out), 0


_einsum = primitive("einsum", lambda xp, *ops, terms, out: xp.einsum(
    ",".join(terms) + "->" + out, *ops, optimize=len(ops) > 2),
    vjp_all=_einsum_vjp, kind="linalg", jvp="multilinear", batch=_einsum_batch, operands="all",
    doc="Einstein summation.")


def einsum(subscripts: str, *operands):
    """NumPy's einsum (with '...'); differentiable in every operand."""
    terms, out = _parse(subscripts, [tuple(o.shape) for o in operands])
    return _einsum(*operands, terms=tuple(terms), out=out)
