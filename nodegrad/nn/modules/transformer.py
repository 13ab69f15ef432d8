"""``torch.nn.modules.transformer``: the transformer modules."""

from ..layers.attention import TransformerEncoderLayer  # noqa: F401
from ..layers.transformer import (Transformer, TransformerDecoder,  # noqa: F401
                                  TransformerDecoderLayer, TransformerEncoder)
