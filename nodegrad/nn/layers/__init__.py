"""Layers by family."""

from .activation import (ELU, GELU, LeakyReLU, LogSoftmax, PReLU, ReLU, SiLU, Sigmoid, Softmax,
                         Softplus, Tanh)
from .attention import MultiheadAttention, TransformerEncoderLayer
from .container import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from .conv import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, Conv1d, Conv2d,
                   GlobalAvgPool, MaxPool1d, MaxPool2d)
from .dropout import Dropout
from .linear import Embedding, Flatten, Identity, Linear
from .norm import BatchNorm1d, BatchNorm2d, LayerNorm
from .parallel import DataParallel
from .sync_norm import SyncBatchNorm
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell, RNNCellBase
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss,
                   MSELoss, NLLLoss)

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "SyncBatchNorm",
    "Conv1d",
    "Conv2d",
    "CrossEntropyLoss",
    "DataParallel",
    "Dropout",
    "ELU",
    "Embedding",
    "Flatten",
    "GELU",
    "GRU",
    "GRUCell",
    "GlobalAvgPool",
    "HuberLoss",
    "Identity",
    "KLDivLoss",
    "L1Loss",
    "LSTM",
    "LSTMCell",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool1d",
    "MaxPool2d",
    "ModuleDict",
    "ModuleList",
    "MultiheadAttention",
    "NLLLoss",
    "PReLU",
    "ParameterList",
    "RNN",
    "RNNBase",
    "RNNCell",
    "RNNCellBase",
    "ReLU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
    "TransformerEncoderLayer",
]

# --- convolution, pooling and resampling beyond Conv1d/2d --------------------------------------
from .conv import Conv3d  # noqa: E402
from .conv_transpose import ConvTranspose1d, ConvTranspose2d  # noqa: E402
from .pool import (AdaptiveMaxPool1d, AdaptiveMaxPool2d, AvgPool3d, Fold, LPPool1d,  # noqa: E402
                   LPPool2d, MaxPool3d, MaxUnpool1d, MaxUnpool2d, PixelShuffle, PixelUnshuffle,
                   Unfold, Upsample, UpsamplingBilinear2d, UpsamplingNearest2d)

__all__ += [
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AvgPool3d", "Conv3d", "ConvTranspose1d",
    "ConvTranspose2d", "Fold", "LPPool1d", "LPPool2d", "MaxPool3d", "MaxUnpool1d", "MaxUnpool2d",
    "PixelShuffle", "PixelUnshuffle", "Unfold", "Upsample", "UpsamplingBilinear2d",
    "UpsamplingNearest2d",
]

# --- per-sample norms, dropout variants, bilinear, bags, unflatten, transformers ---------------
from .dropout import AlphaDropout, Dropout1d, Dropout2d, Dropout3d  # noqa: E402
from .linear_extra import Bilinear, EmbeddingBag, Unflatten  # noqa: E402
from .sample_norm import (GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d,  # noqa: E402
                          LocalResponseNorm, RMSNorm)
from .transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer,  # noqa: E402
                          TransformerEncoder)

__all__ += [
    "AlphaDropout", "Bilinear", "Dropout1d", "Dropout2d", "Dropout3d", "EmbeddingBag",
    "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm",
    "RMSNorm", "Transformer", "TransformerDecoder", "TransformerDecoderLayer",
    "TransformerEncoder", "Unflatten",
]

from .activation import (CELU, GLU, SELU, Hardshrink, Hardsigmoid, Hardswish,  # noqa: E402
                         Hardtanh, LogSigmoid, Mish, ReLU6, Softmin, Softshrink, Softsign,
                         Tanhshrink, Threshold)

__all__ += ["CELU", "GLU", "SELU", "Hardshrink", "Hardsigmoid", "Hardswish", "Hardtanh",
            "LogSigmoid", "Mish", "ReLU6", "Softmin", "Softshrink", "Softsign", "Tanhshrink",
            "Threshold"]

# --- distances and margin, ranking, count and sequence losses --------------------------------
from .distance import CosineSimilarity, PairwiseDistance  # noqa: E402
from .loss import (CosineEmbeddingLoss, CTCLoss, GaussianNLLLoss, HingeEmbeddingLoss,  # noqa: E402
                   MarginRankingLoss, MultiLabelSoftMarginLoss, MultiMarginLoss, PoissonNLLLoss,
                   SoftMarginLoss, TripletMarginLoss)

__all__ += ["CosineSimilarity", "PairwiseDistance", "CosineEmbeddingLoss", "CTCLoss",
            "GaussianNLLLoss", "HingeEmbeddingLoss", "MarginRankingLoss",
            "MultiLabelSoftMarginLoss", "MultiMarginLoss", "PoissonNLLLoss", "SoftMarginLoss",
            "TripletMarginLoss"]

# --- padding layers and small PyTorch layers ----------------------------------------------------
from .activation import RReLU, Softmax2d  # noqa: E402
from .loss import SmoothL1Loss  # noqa: E402
from .norm import BatchNorm3d  # noqa: E402
from .padding import (CircularPad1d, CircularPad2d, CircularPad3d, ConstantPad1d,  # noqa: E402
                      ConstantPad2d, ConstantPad3d, ReflectionPad1d, ReflectionPad2d,
                      ReflectionPad3d, ReplicationPad1d, ReplicationPad2d, ReplicationPad3d,
                      ZeroPad1d, ZeroPad2d, ZeroPad3d)
from .pool import ChannelShuffle  # noqa: E402
from .conv import AdaptiveAvgPool3d  # noqa: E402
from .conv_transpose import ConvTranspose3d  # noqa: E402
from .pool import AdaptiveMaxPool3d, LPPool3d, MaxUnpool3d  # noqa: E402

__all__ += ["ParameterDict", "RReLU"]
__all__ += ["AdaptiveAvgPool3d", "AdaptiveMaxPool3d", "ConvTranspose3d", "LPPool3d",
            "MaxUnpool3d"]
__all__ += ["BatchNorm3d", "ChannelShuffle", "CircularPad1d", "CircularPad2d", "CircularPad3d",
            "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ReflectionPad1d",
            "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d",
            "ReplicationPad3d", "SmoothL1Loss", "Softmax2d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d"]
from . import lazy as _lazy  # noqa: E402
from .lazy import *  # noqa: E402, F403

__all__ += _lazy.__all__

# --- fractional pooling, feature alpha dropout, adaptive softmax, more losses -------------------
from .adaptive_softmax import AdaptiveLogSoftmaxWithLoss  # noqa: E402
from .dropout import FeatureAlphaDropout  # noqa: E402
from .loss import MultiLabelMarginLoss, NLLLoss2d, TripletMarginWithDistanceLoss  # noqa: E402
from .loss import LinearCrossEntropyLoss  # noqa: E402
from .norm import CrossMapLRN2d  # noqa: E402
from .pool import FractionalMaxPool2d, FractionalMaxPool3d  # noqa: E402

__all__ += ["AdaptiveLogSoftmaxWithLoss", "FeatureAlphaDropout", "FractionalMaxPool2d",
            "FractionalMaxPool3d", "CrossMapLRN2d",
            "MultiLabelMarginLoss", "NLLLoss2d", "TripletMarginWithDistanceLoss"]

__all__ += ["LinearCrossEntropyLoss"]
