"""The primitives, by family. Importing this package also attaches Tensor's methods."""

from . import methods as _methods  # noqa: F401  (attaches operators and methods to Tensor)
from .elementwise import (
                          abs,
                          add,
                          astype,
                          bitwise_and,
                          bitwise_not,
                          bitwise_or,
                          bitwise_xor,
                          ceil,
                          clip,
                          cos,
                          divide,
                          equal,
                          erf,
                          exp,
                          expm1,
                          floor,
                          floor_divide,
                          gelu,
                          greater,
                          greater_equal,
                          isfinite,
                          isinf,
                          isnan,
                          leaky_relu,
                          left_shift,
                          less,
                          less_equal,
                          log,
                          log1p,
                          logical_and,
                          logical_not,
                          logical_or,
                          logical_xor,
                          maximum,
                          minimum,
                          multiply,
                          negative,
                          not_equal,
                          power,
                          relu,
                          remainder,
                          right_shift,
                          round,
                          sigmoid,
                          sign,
                          sin,
                          softplus,
                          sqrt,
                          square,
                          subtract,
                          tan,
                          tanh,
                          trunc,
)
from .index import getitem, index_update, take_along_axis
from .index import (  # PyTorch's indexing ops
                          argwhere,
                          gather,
                          index_add,
                          index_copy,
                          index_fill,
                          index_select,
                          masked_fill,
                          masked_scatter,
                          masked_select,
                          nonzero,
                          put,
                          scatter,
                          scatter_add,
                          scatter_reduce,
                          take,
                          where,
)
from .arrange import (  # PyTorch's rearranging ops, NumPy's pad modes
                          atleast_1d,
                          atleast_2d,
                          atleast_3d,
                          block_diag,
                          cartesian_prod,
                          diag,
                          diagflat,
                          diag_embed,
                          diagonal,
                          dstack,
                          fliplr,
                          flipud,
                          hstack,
                          meshgrid,
                          movedim,
                          narrow,
                          pad,
                          repeat,
                          repeat_interleave,
                          roll,
                          rot90,
                          tile,
                          trace,
                          tril,
                          triu,
                          unbind,
                          unflatten,
                          vstack,
)
from .linalg import einsum, matmul, outer
from .conv import conv, conv_transpose
from .nn import linear, log_softmax, logsumexp, softmax
from .attention import attention
from .reduce import all, any, argmax, argmin, max, mean, min, std, sum, var
from .shape import (
                          broadcast_to,
                          cat,
                          chunk,
                          clone,
                          concatenate,
                          copy,
                          expand,
                          expand_dims,
                          flatten,
                          flip,
                          moveaxis,
                          permute,
                          ravel,
                          reshape,
                          split,
                          squeeze,
                          stack,
                          sum_to,
                          swapaxes,
                          to_device,
                          transpose,
                          unsqueeze,
)
from .window import sliding_window_view

__all__ = [
    "abs",
    "add",
    "all",
    "any",
    "attention",
    "argmax",
    "argmin",
    "astype",
    "bitwise_and",
    "bitwise_not",
    "bitwise_or",
    "bitwise_xor",
    "broadcast_to",
    "cat",
    "ceil",
    "chunk",
    "clip",
    "clone",
    "concatenate",
    "copy",
    "cos",
    "divide",
    "einsum",
    "equal",
    "erf",
    "exp",
    "expand",
    "expand_dims",
    "expm1",
    "flatten",
    "flip",
    "floor",
    "floor_divide",
    "gelu",
    "getitem",
    "greater",
    "greater_equal",
    "index_update",
    "isfinite",
    "isinf",
    "isnan",
    "leaky_relu",
    "left_shift",
    "less",
    "less_equal",
    "linear",
    "conv",
    "conv_transpose",
    "log",
    "log1p",
    "log_softmax",
    "logical_and",
    "logical_not",
    "logical_or",
    "logical_xor",
    "logsumexp",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "moveaxis",
    "multiply",
    "negative",
    "not_equal",
    "outer",
    "pad",
    "permute",
    "power",
    "ravel",
    "relu",
    "remainder",
    "right_shift",
    "reshape",
    "round",
    "sigmoid",
    "sign",
    "sin",
    "sliding_window_view",
    "softmax",
    "softplus",
    "split",
    "sqrt",
    "square",
    "squeeze",
    "stack",
    "std",
    "subtract",
    "sum",
    "sum_to",
    "swapaxes",
    "take_along_axis",
    "tan",
    "tanh",
    "to_device",
    "transpose",
    "trunc",
    "unsqueeze",
    "var",
    "where",
    # PyTorch's indexing ops
    "argwhere",
    "gather",
    "index_add",
    "index_copy",
    "index_fill",
    "index_select",
    "masked_fill",
    "masked_scatter",
    "masked_select",
    "nonzero",
    "put",
    "scatter",
    "scatter_add",
    "scatter_reduce",
    "take",
    # PyTorch's rearranging ops
    "atleast_1d",
    "atleast_2d",
    "atleast_3d",
    "block_diag",
    "cartesian_prod",
    "diag",
    "diagflat",
    "diag_embed",
    "diagonal",
    "dstack",
    "fliplr",
    "flipud",
    "hstack",
    "meshgrid",
    "movedim",
    "narrow",
    "repeat",
    "repeat_interleave",
    "roll",
    "rot90",
    "tile",
    "trace",
    "tril",
    "triu",
    "unbind",
    "unflatten",
    "vstack",
]

# --- the wider operator surface: elementwise, activations, scans, reductions, sorting ---------
from .activation import (  # noqa: E402
    celu, glu, hardshrink, hardsigmoid, hardswish, hardtanh, logsigmoid, mish, relu6, selu,
    silu,
    softmin, softshrink, softsign, tanhshrink, threshold,
)
from .elementwise import (  # noqa: E402
    acos, acosh, allclose, asin, asinh, atan, atan2, atanh, clamp_min, clamp_max, copysign,
    cosh, deg2rad, exp2, fmod, frac, hypot, isclose, lerp, log2, log10, logaddexp, logaddexp2,
    nan_to_num, rad2deg, reciprocal, rsqrt, sinc, sinh, trunc_divide, xlogy,
)
from .elementwise import div as divide  # noqa: E402, F811  (PyTorch's rounding_mode too)
from .reduce import (  # noqa: E402
    amax, amin, aminmax, count_nonzero, matrix_norm, nanmean, nansum, norm, std_mean, var_mean,
    vector_norm,
)
from .scan import cummax, cummin, cumprod, cumsum, logcumsumexp, prod  # noqa: E402
from .sort import (  # noqa: E402
    argsort, bucketize, kthvalue, median, quantile, searchsorted, sort, topk, unique,
)

__all__ += [  # noqa: PLE0605
    "acos", "acosh", "allclose", "asin", "asinh", "atan", "atan2", "atanh", "clamp_min",
    "clamp_max", "copysign", "cosh", "deg2rad", "exp2", "fmod", "frac", "hypot", "isclose",
    "lerp", "log2", "log10", "logaddexp", "logaddexp2", "nan_to_num", "rad2deg", "reciprocal",
    "rsqrt", "sinc", "sinh", "trunc_divide", "xlogy",
    "celu", "glu", "hardshrink", "hardsigmoid", "hardswish", "hardtanh", "logsigmoid", "mish",
    "silu",
    "relu6", "selu", "softmin", "softshrink", "softsign", "tanhshrink", "threshold",
    "cummax", "cummin", "cumprod", "cumsum", "logcumsumexp",
    "amax", "amin", "aminmax", "count_nonzero", "matrix_norm", "nanmean", "nansum", "norm",
    "prod", "std_mean", "var_mean", "vector_norm",
    "argsort", "bucketize", "kthvalue", "median", "quantile", "searchsorted", "sort", "topk",
    "unique",
]

# --- PyTorch's wider surface, one family per module (each also attaches its Tensor methods) -----
from . import products as _products  # noqa: E402
from . import special as _special  # noqa: E402
from . import slicing as _slicing  # noqa: E402
from . import numpy_stats as _numpy_stats  # noqa: E402
from . import numpy_arrays as _numpy_arrays  # noqa: E402
from . import numpy_math as _numpy_math  # noqa: E402
from . import aliases as _aliases  # noqa: E402  (last: in-place forms of every family's methods)
from .products import *  # noqa: E402, F403
from .special import *  # noqa: E402, F403
from .slicing import *  # noqa: E402, F403
from .numpy_stats import *  # noqa: E402, F403
from .numpy_arrays import *  # noqa: E402, F403
from .numpy_math import *  # noqa: E402, F403
from .aliases import *  # noqa: E402, F403
from .aliases import clip  # noqa: E402, F811  (min=/max= and NumPy's a_min/a_max)

__all__ += (_products.__all__ + _special.__all__ + _slicing.__all__  # noqa: PLE0605
            + _numpy_stats.__all__ + _numpy_arrays.__all__ + _numpy_math.__all__
            + _aliases.__all__)

# PyTorch's memory formats: accepted by the casts, contiguous() and clone(); one layout here
from ..tensor import (MemoryFormat, channels_last, channels_last_3d,  # noqa: E402
                      contiguous_format, legacy_contiguous_format, preserve_format)

__all__ += ["MemoryFormat", "channels_last", "channels_last_3d", "contiguous_format",
            "legacy_contiguous_format", "preserve_format"]

# PyTorch's dim= (and two-tensor max/min, two-axis transpose) on the NumPy-named functions
from . import dim_forms as _dim_forms  # noqa: E402

globals().update(_dim_forms.forms(globals()))
