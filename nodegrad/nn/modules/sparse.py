"""``torch.nn.modules.sparse``: ``Embedding`` and ``EmbeddingBag``."""

from ..layers.linear import Embedding  # noqa: F401
from ..layers.linear_extra import EmbeddingBag  # noqa: F401
