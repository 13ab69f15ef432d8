"""nodegrad: reverse-mode autodiff on n-d arrays, PyTorch-style and JAX-style on one engine.

>>> import nodegrad as ng
>>> x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad
tensor([2., 4., 6.])
"""

import builtins as _py  # this module's globals shadow int, bool, float, max, ... (ng's own)
import math as _math

from . import (_backend, autograd, cuda, data, diagnostics, distributions, fft, lax, linalg,
               models, nn, onnx, optim, prune, special, train, utils)
from ._backend import Device as device  # torch.device: a device name with .type and .index
from ._backend import cuda_available
from . import profiler  # noqa: E402  (torch.profiler)
from .autodiff import (detect_anomaly, enable_grad, inference_mode, is_anomaly_check_nan_enabled,
                       is_anomaly_enabled, is_grad_enabled, is_inference_mode_enabled, no_grad,
                       set_grad_enabled)
from .diagnostics.graph import draw_graph
from .dtypes import result_type
from .errors import (AnomalyError, BackendUnavailable, DeviceError, DTypeError, GradError,
                     InplaceError, ShapeError)
from .func.custom import custom_jvp, custom_vjp
from .func import (grad, hessian, hvp, jacfwd, jacrev, jvp, linearize, remat, tree_flatten,
                   tree_leaves, tree_map, tree_structure, tree_unflatten, value_and_grad, vjp,
                   vmap)
from .io import CheckpointError, load, save
from .jit import disable_jit, jit
from ._compile import compile  # noqa: A004  (torch.compile's name)
from .ops import *  # noqa: F403  (every primitive as ng.name)
from .ops.numpy_arrays import shape  # noqa: E402  (np.shape; nodegrad.ops.shape stays the module)
from .linalg_ldl import geqrf, orgqr, ormqr  # noqa: E402  (PyTorch top-level Householder QR)
from .ops.complex import (adjoint, angle, complex, conj, conj_physical, imag,  # noqa: A004
                          is_conj, polar, real, resolve_conj, view_as_complex, view_as_real)
from .fft import istft, stft  # noqa: E402  (torch.stft / torch.istft)
from .primitive import REGISTRY as primitives
from .random import (Generator, default_generator, manual_seed, normal, rand, randint, randn,
                     randperm, uniform)
from .random import (bernoulli, multinomial, normal_, rand_like, randint_like, randn_like,
                     uniform_)
from .tensor import (Tensor, arange, as_tensor, bool_, default_device, empty, empty_like, eye,
                     bfloat16, float16, float32, float64, from_dlpack, from_numpy, full, full_like,
                     get_default_device, int32, int64, linspace, ones, ones_like,
                     set_default_device, tensor, zeros, zeros_like)
from .testing import gradcheck

# PyTorch's top-level names for functions of nn.functional with the same arguments (torch's
# top-level losses, batch_norm, instance_norm and embedding differ from F's: not here)
from .nn.functional import (avg_pool1d, bilinear, cdist,  # noqa: E402
                            channel_shuffle, conv1d, conv2d, conv3d, conv_transpose1d,
                            conv_transpose2d, conv_transpose3d, cosine_similarity, max_pool1d,
                            max_pool1d_with_indices, max_pool2d, max_pool3d, pairwise_distance,
                            pdist, pixel_shuffle, pixel_unshuffle, prelu, rms_norm, rrelu_)
from .dtypes import finfo, iinfo  # noqa: E402
from .linalg_lu import lu_unpack  # noqa: E402
from .linalg_lu import torch_lu as lu  # noqa: E402
from .linalg_lu import torch_lu_solve as lu_solve  # noqa: E402

from .autograd import set_anomaly_enabled  # noqa: E402
from .dtypes import (can_cast, get_default_dtype, set_default_dtype,  # noqa: E402
                     set_default_tensor_type)
from .dtypes import torch_promote_types as promote_types  # noqa: E402
from .random import (binomial, get_rng_state, initial_seed, poisson, seed,  # noqa: E402
                     set_rng_state)
from .tensor import set_printoptions  # noqa: E402
from .tensor import torch_range as range  # noqa: E402,A004  (torch.range; not starred)
from .ops.methods import register as _register  # noqa: E402

from . import version  # noqa: E402  (torch.version)
from .version import __version__  # noqa: E402
dtype = _backend.np.dtype


# --- PyTorch's top-level names with torch's own arguments where they differ from F's ------------
def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction: _py.int | str = 0):
    """``torch.binary_cross_entropy_with_logits``: nn.functional's loss with torch's low-level
    argument order (weight, pos_weight, reduction) and reduction as an int (0 none, torch's
    default for this top-level form, 1 mean, 2 sum; the names are taken too)."""
    names = {0: "none", 1: "mean", 2: "sum"}
    red = reduction if isinstance(reduction, _py.bool) else names.get(reduction, reduction)
    if red not in ("none", "mean", "sum"):
        raise ValueError(f"binary_cross_entropy_with_logits: reduction must be 0, 1 or 2 "
                         f"(none, mean, sum), got {reduction!r}")
    return nn.functional.binary_cross_entropy_with_logits(input, target, weight, red,
                                                          pos_weight)


def adaptive_max_pool1d(input, output_size):
    """``torch.adaptive_max_pool1d``: (values, indices), unlike nn.functional's default."""
    return nn.functional.adaptive_max_pool1d(input, output_size, return_indices=True)


adaptive_avg_pool1d = nn.functional.adaptive_avg_pool1d
from .nn.functional_torch import *  # noqa: E402, F403  (torch.embedding, torch.kl_div, ...)
from .settings import *  # noqa: E402, F403  (set_float32_matmul_precision, ...)
_register({"prelu": nn.functional.prelu})  # x.prelu(weight), as Tensor.prelu


from .lax import torch_cond as cond  # noqa: E402  (torch.cond; linalg.cond is the number)
from .lax import torch_while_loop as while_loop  # noqa: E402
from .linalg_lowrank import pca_lowrank, svd_lowrank  # noqa: E402
from . import amp  # noqa: E402  (torch.amp)

# torch.jit.ScriptModule: in eager PyTorch a Module whose script_method methods run as written
jit.ScriptModule = nn.Module
from . import accelerator, backends, quasirandom, signal, testing  # noqa: E402  (torch.*)
from . import library  # noqa: E402  (torch.library: custom ops)
from . import compiler  # noqa: E402  (torch.compiler's queries)
from .ops.foreach import namespace as _foreach_namespace  # noqa: E402

globals().update(_foreach_namespace())  # torch._foreach_add_ and the rest
from .ops import sparse  # noqa: E402  (torch.sparse)
from .ops.sparse import (SparseCsrTensor, SparseTensor, sparse_coo,  # noqa: E402
                         sparse_coo_tensor, sparse_csr, sparse_csr_tensor, spmm)

_register({"to_sparse": sparse.to_sparse, "to_sparse_coo": sparse.to_sparse,
           "to_sparse_csr": sparse.to_sparse_csr, "sparse_mask": sparse.sparse_mask})
from .ops.quantize import (fake_quantize_per_channel_affine,  # noqa: E402
                           fake_quantize_per_tensor_affine)
from .amp import autocast, get_autocast_dtype, is_autocast_enabled  # noqa: E402
from .threads import (are_deterministic_algorithms_enabled, get_num_threads,  # noqa: E402
                      is_deterministic_algorithms_warn_only_enabled, set_num_threads,
                      use_deterministic_algorithms)


# --- out=: PyTorch's and NumPy's keyword on the functions that take it in either (primitives take
# it in Primitive.__call__; these Python functions through one wrapper, here only, so that code
# inside nodegrad calls them without it) ----------------------------------------------------------
from .tensor import take_out as _take_out  # noqa: E402

_take_out(globals(), """
    add addbmm addcdiv addcmul addmm addmv addr all amax amin aminmax angle any argmax argmin
    around baddbmm bernoulli bitwise_count bitwise_invert bitwise_left_shift
    bitwise_right_shift bmm bucketize cat cholesky cholesky_inverse cholesky_solve clamp clip
    column_stack complex concat concatenate conj conj_physical conjugate cross cummax cummin
    cumprod cumsum deg2rad degrees diag diff div divide divmod dot dstack einsum empty
    empty_like empty_permuted empty_strided eye fabs fix float_power frac frexp full gather
    geqrf ger hamming_window heaviside histc histogram histogramdd hstack index_select inner
    inverse invert isneginf isposinf kron kthvalue ldexp linspace logcumsumexp logit logspace
    logsumexp lu_solve lu_unpack masked_select matrix_power matvec max mean min mm mod mode
    modf msort multinomial mv mvlgamma nan_to_num nanmean nanmedian nanquantile nansum
    narrow_copy nonzero normal ones ones_like ormqr outer polar polygamma positive prod qr
    rad2deg radians rand rand_like randint randn randn_like randperm renorm rint round
    row_stack searchsorted sgn signbit sort spacing stack std std_mean sub subtract sum svd
    take take_along_dim topk trace triangular_solve tril triu var var_mean vdot vecdot vecmat
    vstack where zeros zeros_like
""")


# PyTorch's keyword names where nodegrad's differ (ng.mul(a, other=b), x.div(other=y)): last, so
# that every function and method defined above is covered
from .ops import keywords as _keywords  # noqa: E402

_keywords.apply(globals(), Tensor)


def _assert(condition, message: str) -> None:
    """``torch._assert``: ``assert condition, message`` as a function, which torchvision's
    models call to check their inputs (a one-element tensor counts by its truth value)."""
    assert condition, message


# --- constants and PyTorch's dtype names (last: ``float``, ``int`` and ``bool`` shadow the
# builtins from here to the end of this file) --------------------------------------------------
pi, e, inf, nan = _math.pi, _math.e, _math.inf, _math.nan
newaxis = None
uint8, int8, int16 = (_backend.np.dtype(n) for n in ("uint8", "int8", "int16"))
# PyTorch's wide unsigned types: NumPy arrays of them compute as NumPy's (a mix with a signed
# type no integer dtype holds is refused by name, as PyTorch refuses their promotion)
uint16, uint32, uint64 = (_backend.np.dtype(n) for n in ("uint16", "uint32", "uint64"))
half, double, short, long = float16, float64, int16, int64
complex64, complex128 = (_backend.np.dtype(n) for n in ("complex64", "complex128"))
cfloat, cdouble = complex64, complex128
float, int, bool = float32, int32, bool_  # noqa: A001  (torch.float, torch.int, torch.bool)

# ``from nodegrad import *`` gives every public name but these five, so a star import never
# changes what float, int, bool, compile and range mean in the importing module (torch's star
# import does)
__all__ = [_name for _name in globals() if not _name.startswith("_")
           and _name not in ("float", "int", "bool", "compile", "range")]
