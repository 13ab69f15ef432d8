"""``torch.nn.modules.batchnorm``: batch normalisation and its base ``_BatchNorm``."""

from ..layers.norm import _BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d  # noqa: F401
from ..layers.sync_norm import SyncBatchNorm  # noqa: F401
