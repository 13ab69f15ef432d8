"""The primitives, by family. Importing this package also attaches Tensor's methods."""

from . import methods as _methods  # noqa: F401  (attaches operators and methods to Tensor)
from .elementwise import (abs, add, astype, ceil, clip, cos, divide, equal, erf, exp, expm1,
                          floor, floor_divide, gelu, greater, greater_equal, isfinite, isinf,
                          isnan, leaky_relu, less, less_equal, log, log1p, logical_and,
                          logical_not, logical_or, logical_xor, maximum, minimum, multiply,
                          negative, not_equal, power, relu, remainder, round, sigmoid, sign, sin,
                          softplus, sqrt, square, subtract, tan, tanh, trunc, where)
from .index import getitem, index_update, take_along_axis
from .linalg import einsum, matmul, outer
from .nn import log_softmax, logsumexp, softmax
from .reduce import all, any, argmax, argmin, max, mean, min, std, sum, var
from .shape import (broadcast_to, cat, chunk, clone, concatenate, copy, expand, expand_dims,
                    flatten, flip, moveaxis, pad, permute, ravel, reshape, split, squeeze, stack,
                    sum_to, swapaxes, to_device, transpose, unsqueeze)
from .window import sliding_window_view
