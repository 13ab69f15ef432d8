"""nodegrad: reverse-mode autodiff on n-d arrays, PyTorch-style and JAX-style on one engine.

>>> import nodegrad as ng
>>> x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad
tensor([2., 4., 6.])
"""

from . import (_backend, autograd, data, diagnostics, distributions, lax, linalg, models, nn,
               onnx, optim, prune, special, train)
from ._backend import cuda_available
from .autodiff import (detect_anomaly, enable_grad, inference_mode, is_anomaly_enabled,
                       is_grad_enabled, is_inference_mode_enabled, no_grad, set_grad_enabled)
from .diagnostics.graph import draw_graph
from .dtypes import result_type
from .errors import (AnomalyError, BackendUnavailable, DeviceError, DTypeError, GradError,
                     InplaceError, ShapeError)
from .func.custom import custom_vjp
from .func import (grad, hessian, hvp, jacfwd, jacrev, jvp, linearize, tree_flatten, tree_map,
                   tree_unflatten, value_and_grad, vjp, vmap)
from .io import CheckpointError, load, save
from .jit import disable_jit, jit
from .ops import *  # noqa: F403  (every primitive as ng.name)
from .primitive import REGISTRY as primitives
from .random import (Generator, default_generator, manual_seed, normal, rand, randint, randn,
                     randperm, uniform)
from .random import (bernoulli, multinomial, normal_, rand_like, randint_like, randn_like,
                     uniform_)
from .tensor import (Tensor, arange, as_tensor, bool_, default_device, empty, empty_like, eye,
                     float16, float32, float64, from_dlpack, from_numpy, full, full_like,
                     get_default_device, int32, int64, linspace, ones, ones_like,
                     set_default_device, tensor, zeros, zeros_like)
from .testing import gradcheck

# PyTorch's top-level names for functions of nn.functional with the same arguments (torch's
# top-level losses, batch_norm, instance_norm and embedding differ from F's: not here)
from .nn.functional import (alpha_dropout, avg_pool1d, bilinear, cdist,  # noqa: E402
                            channel_shuffle, conv1d, conv2d, conv3d, conv_transpose1d,
                            conv_transpose2d, conv_transpose3d, cosine_similarity, dropout,
                            feature_alpha_dropout, group_norm, layer_norm, max_pool1d,
                            max_pool1d_with_indices, max_pool2d, max_pool3d, pairwise_distance,
                            pdist, pixel_shuffle, pixel_unshuffle, prelu, rms_norm, rrelu,
                            rrelu_)
from .dtypes import finfo, iinfo  # noqa: E402
from .linalg_lu import lu_unpack  # noqa: E402
from .linalg_lu import torch_lu as lu  # noqa: E402
from .linalg_lu import torch_lu_solve as lu_solve  # noqa: E402

__version__ = "0.1.0"
dtype = _backend.np.dtype
