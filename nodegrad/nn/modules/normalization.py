"""``torch.nn.modules.normalization``: layer, group, RMS and local response norms."""

from ..layers.norm import CrossMapLRN2d, LayerNorm  # noqa: F401
from ..layers.sample_norm import GroupNorm, LocalResponseNorm, RMSNorm  # noqa: F401
