"""``torch.nn.modules.rnn``: the recurrent layers and cells and their bases."""

from ..layers.recurrent import (GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell,  # noqa: F401
                                RNNCellBase)
