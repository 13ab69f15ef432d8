"""Classic PyTorch NLP and recommender programs, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as its
tutorial writes it: the Bi-LSTM CRF and the LSTM part-of-speech tagger, the N-gram and CBOW
word-embedding models, word2vec skip-gram with negative sampling, matrix factorisation and
neural collaborative filtering, the EmbeddingBag text classifier and a character CNN. Both runs
start from PyTorch's seeded initial weights and see the same data in float64, so every recorded
value (losses, predictions, final weights) must agree to rounding.
"""

# the tutorials' own spelling (super(Cls, self), unused loop names) is kept as they write it
# ruff: noqa: UP008, B007

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, arrays, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10


@contextmanager
def float64(lib):
    """The tutorials create tensors with the default dtype: make it float64 for the run."""
    before = lib.get_default_dtype()
    lib.set_default_dtype(lib.float64)
    try:
        yield
    finally:
        lib.set_default_dtype(before)


def seeded(lib, build, seed: int = 0):
    """``build(lib)`` holding PyTorch's initial weights for ``seed`` (same keys and shapes)."""
    torch.manual_seed(seed)
    with float64(torch):
        ref = build(torch)
    init = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    model = build(lib)
    if lib is ng:
        assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
            [(k, v.shape) for k, v in init.items()]
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def both(fn, *args, tol: float = TOL):
    """``fn`` run with PyTorch and with nodegrad under float64; their records must agree."""
    with float64(torch):
        ref = fn(torch, *args)
    with float64(ng):
        got = fn(ng, *args)
    assert_same(arr(got), arr(ref), tol)
    return got


# 1. "Advanced: Making Dynamic Decisions and the Bi-LSTM CRF" ---------------------------------
START_TAG, STOP_TAG = "<START>", "<STOP>"
CRF_DATA = [("the wall street journal reported today that apple corporation made money".split(),
             "B I I I O O O B I O O".split()),
            ("georgia tech is a university in georgia".split(), "B I O O O O B".split())]


def bilstm_crf(lib, draws):
    """The tutorial's model; ``init_hidden`` draws its random state from ``draws`` so that
    both libraries see the same numbers."""
    nn = lib.nn

    def argmax(vec):
        _, idx = lib.max(vec, 1)  # the tutorial's own line
        return idx.item()

    def log_sum_exp(vec):
        max_score = vec[0, argmax(vec)]
        max_score_broadcast = max_score.view(1, -1).expand(1, vec.size()[1])
        return max_score + lib.log(lib.sum(lib.exp(vec - max_score_broadcast)))

    class BiLSTM_CRF(nn.Module):
        def __init__(self, vocab_size, tag_to_ix, embedding_dim, hidden_dim):
            super(BiLSTM_CRF, self).__init__()
            self.embedding_dim = embedding_dim
            self.hidden_dim = hidden_dim
            self.vocab_size = vocab_size
            self.tag_to_ix = tag_to_ix
            self.tagset_size = len(tag_to_ix)
            self.word_embeds = nn.Embedding(vocab_size, embedding_dim)
            self.lstm = nn.LSTM(embedding_dim, hidden_dim // 2, num_layers=1,
                                bidirectional=True)
            self.hidden2tag = nn.Linear(hidden_dim, self.tagset_size)
            self.transitions = nn.Parameter(lib.randn(self.tagset_size, self.tagset_size))
            self.transitions.data[tag_to_ix[START_TAG], :] = -10000
            self.transitions.data[:, tag_to_ix[STOP_TAG]] = -10000
            self.hidden = self.init_hidden()

        def init_hidden(self):
            return (lib.tensor(draws.standard_normal((2, 1, self.hidden_dim // 2))),
                    lib.tensor(draws.standard_normal((2, 1, self.hidden_dim // 2))))

        def _forward_alg(self, feats):
            init_alphas = lib.full((1, self.tagset_size), -10000.)
            init_alphas[0][self.tag_to_ix[START_TAG]] = 0.
            forward_var = init_alphas
            for feat in feats:
                alphas_t = []
                for next_tag in range(self.tagset_size):
                    emit_score = feat[next_tag].view(1, -1).expand(1, self.tagset_size)
                    trans_score = self.transitions[next_tag].view(1, -1)
                    next_tag_var = forward_var + trans_score + emit_score
                    alphas_t.append(log_sum_exp(next_tag_var).view(1))
                forward_var = lib.cat(alphas_t).view(1, -1)
            terminal_var = forward_var + self.transitions[self.tag_to_ix[STOP_TAG]]
            alpha = log_sum_exp(terminal_var)
            return alpha

        def _get_lstm_features(self, sentence):
            self.hidden = self.init_hidden()
            embeds = self.word_embeds(sentence).view(len(sentence), 1, -1)
            lstm_out, self.hidden = self.lstm(embeds, self.hidden)
            lstm_out = lstm_out.view(len(sentence), self.hidden_dim)
            lstm_feats = self.hidden2tag(lstm_out)
            return lstm_feats

        def _score_sentence(self, feats, tags):
            score = lib.zeros(1)
            tags = lib.cat([lib.tensor([self.tag_to_ix[START_TAG]], dtype=lib.long), tags])
            for i, feat in enumerate(feats):
                score = score + \
                    self.transitions[tags[i + 1], tags[i]] + feat[tags[i + 1]]
            score = score + self.transitions[self.tag_to_ix[STOP_TAG], tags[-1]]
            return score

        def _viterbi_decode(self, feats):
            backpointers = []
            init_vvars = lib.full((1, self.tagset_size), -10000.)
            init_vvars[0][self.tag_to_ix[START_TAG]] = 0
            forward_var = init_vvars
            for feat in feats:
                bptrs_t = []
                viterbivars_t = []
                for next_tag in range(self.tagset_size):
                    next_tag_var = forward_var + self.transitions[next_tag]
                    best_tag_id = argmax(next_tag_var)
                    bptrs_t.append(best_tag_id)
                    viterbivars_t.append(next_tag_var[0][best_tag_id].view(1))
                forward_var = (lib.cat(viterbivars_t) + feat).view(1, -1)
                backpointers.append(bptrs_t)
            terminal_var = forward_var + self.transitions[self.tag_to_ix[STOP_TAG]]
            best_tag_id = argmax(terminal_var)
            path_score = terminal_var[0][best_tag_id]
            best_path = [best_tag_id]
            for bptrs_t in reversed(backpointers):
                best_tag_id = bptrs_t[best_tag_id]
                best_path.append(best_tag_id)
            start = best_path.pop()
            assert start == self.tag_to_ix[START_TAG]
            best_path.reverse()
            return path_score, best_path

        def neg_log_likelihood(self, sentence, tags):
            feats = self._get_lstm_features(sentence)
            forward_score = self._forward_alg(feats)
            gold_score = self._score_sentence(feats, tags)
            return forward_score - gold_score

        def forward(self, sentence):
            lstm_feats = self._get_lstm_features(sentence)
            score, tag_seq = self._viterbi_decode(lstm_feats)
            return score, tag_seq

    return BiLSTM_CRF


def bilstm_crf_tutorial(lib, epochs=2):
    draws = np.random.default_rng(1)
    def prepare_sequence(seq, to_ix):
        idxs = [to_ix[w] for w in seq]
        return lib.tensor(idxs, dtype=lib.long)

    word_to_ix = {}
    for sentence, tags in CRF_DATA:
        for word in sentence:
            if word not in word_to_ix:
                word_to_ix[word] = len(word_to_ix)
    tag_to_ix = {"B": 0, "I": 1, "O": 2, START_TAG: 3, STOP_TAG: 4}
    model = seeded(lib, lambda lib_: bilstm_crf(lib_, draws)(len(word_to_ix), tag_to_ix, 5, 4))
    optimizer = lib.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
    rec = {}
    with lib.no_grad():
        precheck_sent = prepare_sequence(CRF_DATA[0][0], word_to_ix)
        score, path = model(precheck_sent)
        rec["before"] = [score, path]
    losses = []
    for _epoch in range(epochs):
        for sentence, tags in CRF_DATA:
            model.zero_grad()
            sentence_in = prepare_sequence(sentence, word_to_ix)
            targets = lib.tensor([tag_to_ix[t] for t in tags], dtype=lib.long)
            loss = model.neg_log_likelihood(sentence_in, targets)
            loss.backward()
            optimizer.step()
            losses.append(loss)
    rec["losses"] = losses
    with lib.no_grad():
        rec["after"] = list(model(prepare_sequence(CRF_DATA[1][0], word_to_ix)))
    rec["state"] = arrays(model.state_dict())
    return rec


def test_bilstm_crf_tutorial():
    both(bilstm_crf_tutorial)


def test_top_level_max_with_a_positional_dim_is_pytorchs():
    """``ng.max(x, 1)`` is PyTorch's (values, indices), as ``dim=`` and the method;
    ``axis=`` is NumPy's (values only)."""
    x = np.array([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0]])
    t, n = torch.tensor(x), ng.tensor(x)
    assert_same(arr(list(ng.max(n, 1))), arr(list(torch.max(t, 1))))
    assert_same(arr(list(ng.min(n, 0, True))), arr(list(torch.min(t, 0, True))))
    assert_same(arr(ng.max(n, axis=1)), torch.max(t, 1).values.numpy())
    assert_same(arr(list(ng.max(n, dim=1))), arr(list(torch.max(t, 1))))
    assert_same(arr(list(n.max(1))), arr(list(t.max(1))))


def crf_layer(lib):
    """The batched CRF layer of the pytorch-crf package (``torchcrf.CRF``), as written there."""
    nn = lib.nn

    class CRF(nn.Module):
        def __init__(self, num_tags: int, batch_first: bool = False) -> None:
            super().__init__()
            self.num_tags = num_tags
            self.batch_first = batch_first
            self.start_transitions = nn.Parameter(lib.empty(num_tags))
            self.end_transitions = nn.Parameter(lib.empty(num_tags))
            self.transitions = nn.Parameter(lib.empty(num_tags, num_tags))
            self.reset_parameters()

        def reset_parameters(self) -> None:
            nn.init.uniform_(self.start_transitions, -0.1, 0.1)
            nn.init.uniform_(self.end_transitions, -0.1, 0.1)
            nn.init.uniform_(self.transitions, -0.1, 0.1)

        def forward(self, emissions, tags, mask=None, reduction="sum"):
            if mask is None:
                mask = lib.ones_like(tags, dtype=lib.bool)
            if self.batch_first:
                emissions = emissions.transpose(0, 1)
                tags = tags.transpose(0, 1)
                mask = mask.transpose(0, 1)
            numerator = self._compute_score(emissions, tags, mask)
            denominator = self._compute_normalizer(emissions, mask)
            llh = numerator - denominator
            if reduction == "none":
                return llh
            if reduction == "sum":
                return llh.sum()
            if reduction == "mean":
                return llh.mean()
            assert reduction == "token_mean"
            return llh.sum() / mask.type_as(emissions).sum()

        def decode(self, emissions, mask=None):
            if mask is None:
                mask = emissions.new_ones(emissions.shape[:2], dtype=lib.bool)
            if self.batch_first:
                emissions = emissions.transpose(0, 1)
                mask = mask.transpose(0, 1)
            return self._viterbi_decode(emissions, mask)

        def _compute_score(self, emissions, tags, mask):
            seq_length, batch_size = tags.shape
            mask = mask.type_as(emissions)
            score = self.start_transitions[tags[0]]
            score += emissions[0, lib.arange(batch_size), tags[0]]
            for i in range(1, seq_length):
                score += self.transitions[tags[i - 1], tags[i]] * mask[i]
                score += emissions[i, lib.arange(batch_size), tags[i]] * mask[i]
            seq_ends = mask.long().sum(dim=0) - 1
            last_tags = tags[seq_ends, lib.arange(batch_size)]
            score += self.end_transitions[last_tags]
            return score

        def _compute_normalizer(self, emissions, mask):
            seq_length = emissions.size(0)
            score = self.start_transitions + emissions[0]
            for i in range(1, seq_length):
                broadcast_score = score.unsqueeze(2)
                broadcast_emissions = emissions[i].unsqueeze(1)
                next_score = broadcast_score + self.transitions + broadcast_emissions
                next_score = lib.logsumexp(next_score, dim=1)
                score = lib.where(mask[i].unsqueeze(1), next_score, score)
            score += self.end_transitions
            return lib.logsumexp(score, dim=1)

        def _viterbi_decode(self, emissions, mask):
            seq_length, batch_size = mask.shape
            score = self.start_transitions + emissions[0]
            history = []
            for i in range(1, seq_length):
                broadcast_score = score.unsqueeze(2)
                broadcast_emission = emissions[i].unsqueeze(1)
                next_score = broadcast_score + self.transitions + broadcast_emission
                next_score, indices = next_score.max(dim=1)
                score = lib.where(mask[i].unsqueeze(1), next_score, score)
                history.append(indices)
            score += self.end_transitions
            seq_ends = mask.long().sum(dim=0) - 1
            best_tags_list = []
            for idx in range(batch_size):
                _, best_last_tag = score[idx].max(dim=0)
                best_tags = [best_last_tag.item()]
                for hist in reversed(history[:seq_ends[idx]]):
                    best_last_tag = hist[idx][best_tags[-1]]
                    best_tags.append(best_last_tag.item())
                best_tags.reverse()
                best_tags_list.append(best_tags)
            return best_tags_list

    return CRF


def batched_lstm_crf(lib, steps=3, V=9, T=6, N=4, K=4):
    """A padded batch through an LSTM tagger and the CRF layer: masks from the lengths,
    ``-crf(...)`` as the loss under Adam, Viterbi paths of each length."""
    r = np.random.default_rng(7)
    lens = np.array([6, 3, 5, 1])
    words = r.integers(1, V, (N, T)) * (np.arange(T) < lens[:, None])
    tags = r.integers(0, K, (N, T)) * (np.arange(T) < lens[:, None])

    def build(lib_):
        class Tagger(lib_.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = lib_.nn.Embedding(V, 5, padding_idx=0)
                self.lstm = lib_.nn.LSTM(5, 3, batch_first=True, bidirectional=True)
                self.fc = lib_.nn.Linear(6, K)
                self.crf = crf_layer(lib_)(K, batch_first=True)

            def forward(self, x):
                out, _ = self.lstm(self.embed(x))
                return self.fc(out)
        return Tagger()

    model = seeded(lib, build)
    optimizer = lib.optim.Adam(model.parameters(), lr=0.05)
    x, y = lib.tensor(words), lib.tensor(tags)
    mask = lib.arange(T).unsqueeze(0) < lib.tensor(lens).unsqueeze(1)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        emissions = model(x)
        reduction = ("mean", "token_mean", "sum")[step % 3]
        loss = -model.crf(emissions, y, mask=mask, reduction=reduction)
        loss.backward()
        optimizer.step()
        losses.append(loss)
    with lib.no_grad():
        emissions = model(x)
        rec = {"llh": model.crf(emissions, y, mask, reduction="none"),
               "paths": model.crf.decode(emissions, mask),
               "full": model.crf.decode(emissions)}
    assert [len(p) for p in rec["paths"]] == lens.tolist()
    return {"losses": losses, **rec, "state": arrays(model.state_dict())}


def test_pytorch_crf_layer_on_a_padded_batch():
    both(batched_lstm_crf)


# 2. "Sequence Models and Long Short-Term Memory Networks": the POS tagger ------------------
TAG_DATA = [("The dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
            ("Everybody read that book".split(), ["NN", "V", "DET", "NN"])]


def pos_tagger(lib, epochs=3):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    word_to_ix = {}
    for sent, tags in TAG_DATA:
        for word in sent:
            if word not in word_to_ix:
                word_to_ix[word] = len(word_to_ix)
    tag_to_ix = {"DET": 0, "NN": 1, "V": 2}

    def build(lib_):
        class LSTMTagger(lib_.nn.Module):
            def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
                super(LSTMTagger, self).__init__()
                self.hidden_dim = hidden_dim
                self.word_embeddings = lib_.nn.Embedding(vocab_size, embedding_dim)
                self.lstm = lib_.nn.LSTM(embedding_dim, hidden_dim)
                self.hidden2tag = lib_.nn.Linear(hidden_dim, tagset_size)

            def forward(self, sentence):
                embeds = self.word_embeddings(sentence)
                lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
                tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
                tag_scores = lib_.nn.functional.log_softmax(tag_space, dim=1)
                return tag_scores
        return LSTMTagger(6, 6, len(word_to_ix), len(tag_to_ix))

    def prepare_sequence(seq, to_ix):
        return lib.tensor([to_ix[w] for w in seq], dtype=lib.long)

    model = seeded(lib, build)
    assert F is lib.nn.functional
    loss_function = nn.NLLLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    with lib.no_grad():
        first = model(prepare_sequence(TAG_DATA[0][0], word_to_ix))
    losses = []
    for _epoch in range(epochs):
        for sentence, tags in TAG_DATA:
            model.zero_grad()
            sentence_in = prepare_sequence(sentence, word_to_ix)
            targets = prepare_sequence(tags, tag_to_ix)
            tag_scores = model(sentence_in)
            loss = loss_function(tag_scores, targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    with lib.no_grad():
        last = model(prepare_sequence(TAG_DATA[0][0], word_to_ix))
    return {"first": first, "losses": losses, "last": last, "pred": last.argmax(1),
            "state": arrays(model.state_dict())}


def test_lstm_pos_tagger_tutorial():
    both(pos_tagger)


# "NLP From Scratch: Classifying Names with a Character-Level RNN" ----------------------------
NAMES = [("Abbas", "Arabic"), ("Nakamura", "Japanese"), ("Smith", "English"),
         ("Sato", "Japanese"), ("Khoury", "Arabic"), ("Jones", "English")]


def names_rnn(lib, epochs=2):
    import string
    all_letters = string.ascii_letters + " .,;'"
    n_letters = len(all_letters)
    all_categories = ["Arabic", "English", "Japanese"]

    def letterToIndex(letter):
        return all_letters.find(letter)

    def lineToTensor(line):
        tensor = lib.zeros(len(line), 1, n_letters)
        for li, letter in enumerate(line):
            tensor[li][0][letterToIndex(letter)] = 1
        return tensor

    def build(lib_):
        class RNN(lib_.nn.Module):
            def __init__(self, input_size, hidden_size, output_size):
                super(RNN, self).__init__()
                self.hidden_size = hidden_size
                self.i2h = lib_.nn.Linear(input_size + hidden_size, hidden_size)
                self.i2o = lib_.nn.Linear(input_size + hidden_size, output_size)
                self.softmax = lib_.nn.LogSoftmax(dim=1)

            def forward(self, input, hidden):
                combined = lib_.cat((input, hidden), 1)
                hidden = self.i2h(combined)
                output = self.i2o(combined)
                output = self.softmax(output)
                return output, hidden

            def initHidden(self):
                return lib_.zeros(1, self.hidden_size)
        return RNN(n_letters, 8, len(all_categories))

    rnn = seeded(lib, build)
    criterion = lib.nn.NLLLoss()
    learning_rate = 0.05

    def train(category_tensor, line_tensor):
        hidden = rnn.initHidden()
        rnn.zero_grad()
        for i in range(line_tensor.size()[0]):
            output, hidden = rnn(line_tensor[i], hidden)
        loss = criterion(output, category_tensor)
        loss.backward()
        for p in rnn.parameters():
            p.data.add_(p.grad.data, alpha=-learning_rate)
        return output, loss.item()

    def categoryFromOutput(output):
        top_n, top_i = output.topk(1)
        category_i = top_i[0].item()
        return all_categories[category_i], category_i

    losses, guesses = [], []
    for _epoch in range(epochs):
        for line, category in NAMES:
            category_tensor = lib.tensor([all_categories.index(category)], dtype=lib.long)
            output, loss = train(category_tensor, lineToTensor(line))
            losses.append(loss)
            guesses.append(categoryFromOutput(output)[0])
    confusion = lib.zeros(len(all_categories), len(all_categories))
    with lib.no_grad():
        for line, category in NAMES:
            hidden = rnn.initHidden()
            line_tensor = lineToTensor(line)
            for i in range(line_tensor.size()[0]):
                output, hidden = rnn(line_tensor[i], hidden)
            guess_i = categoryFromOutput(output)[1]
            confusion[all_categories.index(category)][guess_i] += 1
    for i in range(len(all_categories)):
        confusion[i] = confusion[i] / confusion[i].sum()
    return {"losses": losses, "guesses": guesses, "confusion": confusion,
            "state": arrays(rnn.state_dict())}


def test_char_rnn_name_classifier_tutorial():
    both(names_rnn)


# 3. "Word Embeddings: Encoding Lexical Semantics": N-gram model and CBOW ----------------------
SONNET = """When forty winters shall besiege thy brow, And dig deep trenches in thy beauty's
field, Thy youth's proud livery so gazed on now, Will be a totter'd weed of small worth held:
Then being asked, where all thy beauty lies""".split()


def ngram_tutorial(lib, CONTEXT_SIZE=2, EMBEDDING_DIM=4):
    nn, F = lib.nn, lib.nn.functional
    ngrams = [([SONNET[i - j - 1] for j in range(CONTEXT_SIZE)], SONNET[i])
              for i in range(CONTEXT_SIZE, len(SONNET))][:12]
    vocab = sorted(set(SONNET))
    word_to_ix = {word: i for i, word in enumerate(vocab)}

    def build(lib_):
        class NGramLanguageModeler(lib_.nn.Module):
            def __init__(self, vocab_size, embedding_dim, context_size):
                super(NGramLanguageModeler, self).__init__()
                self.embeddings = lib_.nn.Embedding(vocab_size, embedding_dim)
                self.linear1 = lib_.nn.Linear(context_size * embedding_dim, 16)
                self.linear2 = lib_.nn.Linear(16, vocab_size)

            def forward(self, inputs):
                embeds = self.embeddings(inputs).view((1, -1))
                out = lib_.nn.functional.relu(self.linear1(embeds))
                out = self.linear2(out)
                log_probs = lib_.nn.functional.log_softmax(out, dim=1)
                return log_probs
        return NGramLanguageModeler(len(vocab), EMBEDDING_DIM, CONTEXT_SIZE)

    losses = []
    loss_function = nn.NLLLoss()
    model = seeded(lib, build)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.001)
    assert F is lib.nn.functional
    for _epoch in range(2):
        total_loss = 0
        for context, target in ngrams:
            context_idxs = lib.tensor([word_to_ix[w] for w in context], dtype=lib.long)
            model.zero_grad()
            log_probs = model(context_idxs)
            loss = loss_function(log_probs, lib.tensor([word_to_ix[target]], dtype=lib.long))
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        losses.append(total_loss)
    return {"losses": losses, "beauty": model.embeddings.weight[word_to_ix["beauty"]],
            "state": arrays(model.state_dict())}


def cbow_exercise(lib, CONTEXT_SIZE=2):
    raw_text = SONNET
    vocab = set(raw_text)
    word_to_ix = {word: i for i, word in enumerate(sorted(vocab))}
    data = []
    for i in range(CONTEXT_SIZE, len(raw_text) - CONTEXT_SIZE):
        context = ([raw_text[i - j - 1] for j in range(CONTEXT_SIZE)]
                   + [raw_text[i + j + 1] for j in range(CONTEXT_SIZE)])
        data.append((context, raw_text[i]))

    def build(lib_):
        class CBOW(lib_.nn.Module):
            def __init__(self, vocab_size, embedding_dim):
                super().__init__()
                self.embeddings = lib_.nn.Embedding(vocab_size, embedding_dim)
                self.linear = lib_.nn.Linear(embedding_dim, vocab_size)

            def forward(self, inputs):
                embeds = sum(self.embeddings(inputs)).view((1, -1))
                return lib_.nn.functional.log_softmax(self.linear(embeds), dim=-1)
        return CBOW(len(vocab), 5)

    def make_context_vector(context, word_to_ix):
        idxs = [word_to_ix[w] for w in context]
        return lib.tensor(idxs, dtype=lib.long)

    model = seeded(lib, build)
    loss_function = lib.nn.NLLLoss()
    optimizer = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for context, target in data[:10]:
        model.zero_grad()
        log_probs = model(make_context_vector(context, word_to_ix))
        loss = loss_function(log_probs, lib.tensor([word_to_ix[target]]))
        loss.backward()
        optimizer.step()
        losses.append(loss)
    return {"losses": losses, "state": arrays(model.state_dict())}


def test_ngram_language_model_tutorial():
    both(ngram_tutorial)


def test_cbow_exercise_sums_embeddings_with_python_sum():
    both(cbow_exercise)


# 4. word2vec: skip-gram with negative sampling -------------------------------------------------
def skipgram(lib, epochs=3, V=12, D=4, B=6, K=3, lazy=False):
    """The common skip-gram module: two tables, a clamped log-sigmoid of the positive score and
    of ``bmm(negatives, centre)``; the negatives are drawn once in NumPy and fed to both."""
    r = np.random.default_rng(2)
    pos_u, pos_v = r.integers(0, V, (2, epochs, B))
    neg_v = r.integers(0, V, (epochs, B, K))

    def build(lib_):
        F = lib_.nn.functional

        class SkipGramModel(lib_.nn.Module):
            def __init__(self, emb_size, emb_dimension):
                super(SkipGramModel, self).__init__()
                self.emb_size = emb_size
                self.emb_dimension = emb_dimension
                # nodegrad's gradients are dense: its SparseAdam takes them as they are
                sparse = lazy and lib_ is torch
                self.u_embeddings = lib_.nn.Embedding(emb_size, emb_dimension, sparse=sparse)
                self.v_embeddings = lib_.nn.Embedding(emb_size, emb_dimension, sparse=sparse)
                initrange = 1.0 / self.emb_dimension
                lib_.nn.init.uniform_(self.u_embeddings.weight.data, -initrange, initrange)
                lib_.nn.init.uniform_(self.v_embeddings.weight.data, -initrange, initrange)

            def forward(self, pos_u, pos_v, neg_v):
                emb_u = self.u_embeddings(pos_u)
                emb_v = self.v_embeddings(pos_v)
                emb_neg_v = self.v_embeddings(neg_v)
                score = lib_.sum(lib_.mul(emb_u, emb_v), dim=1)
                score = lib_.clamp(score, max=10, min=-10)
                score = -F.logsigmoid(score)
                neg_score = lib_.bmm(emb_neg_v, emb_u.unsqueeze(2)).squeeze()
                neg_score = lib_.clamp(neg_score, max=10, min=-10)
                neg_score = -lib_.sum(F.logsigmoid(-neg_score), dim=1)
                return lib_.mean(score + neg_score)
        return SkipGramModel(V, D)

    model = seeded(lib, build)
    if lazy:
        optimizer = lib.optim.SparseAdam(list(model.parameters()), lr=0.01)
    else:
        optimizer = lib.optim.Adam(model.parameters(), lr=0.01)
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    losses = []
    for e in range(epochs):
        u, v, n = (lib.tensor(pos_u[e]), lib.tensor(pos_v[e]), lib.tensor(neg_v[e]))
        optimizer.zero_grad()
        loss = model.forward(u, v, n)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    embedding = model.u_embeddings.weight.cpu().detach().numpy()
    return {"losses": losses, "embedding": embedding, "state": arrays(model.state_dict())}


@pytest.mark.parametrize("lazy", [False, True])
def test_word2vec_skipgram_negative_sampling(lazy):
    both(partial(skipgram, lazy=lazy))


def test_sparse_adam_moves_only_the_rows_looked_up_as_torch():
    """Lazy Adam: a row's parameters and moments change only on steps that look it up."""
    w = np.random.default_rng(0).standard_normal((10, 4))

    def run(lib):
        e = lib.nn.Embedding(10, 4, sparse=lib is torch)
        b = lib.nn.Embedding(10, 1, sparse=lib is torch)
        with lib.no_grad():
            e.weight.copy_(lib.tensor(w))
            b.weight.copy_(lib.tensor(w[:, :1]))
        opt = lib.optim.SparseAdam(list(e.parameters()) + list(b.parameters()), lr=0.1,
                                   betas=(0.8, 0.9), maximize=True)
        out = []
        for idx in ([1, 2, 2], [3, 1], [7, 8, 9, 1]):
            opt.zero_grad()
            i = lib.tensor(idx)
            loss = -(e(i).pow(2).sum(1) + b(i).squeeze(1)).logsumexp(0)
            loss.backward()
            opt.step()
            out += [e.weight, b.weight]
        st = opt.state_dict()["state"][0]
        out += [lib.as_tensor(st["exp_avg"]).to_dense() if lib is torch else st["exp_avg"],
                int(st["step"])]
        return out
    with float64(torch), float64(ng):
        got, ref = run(ng), run(torch)
    assert_same(arr(got), arr(ref))
    assert np.all(arr(got[-4])[[0, 4, 5, 6]] == w[[0, 4, 5, 6]])


def test_sparse_adam_resumes_from_a_torch_state_dict():
    e = torch.nn.Embedding(5, 2, sparse=True).double()
    o = torch.optim.SparseAdam(list(e.parameters()), lr=0.1)
    e(torch.tensor([1, 3])).sum().backward()
    o.step()
    n = ng.nn.Embedding(5, 2).double()
    n.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in e.state_dict().items()})
    on = ng.optim.SparseAdam(list(n.parameters()), lr=0.1)
    on.load_state_dict(o.state_dict())
    for opt, mod, lib in ((o, e, torch), (on, n, ng)):
        opt.zero_grad()
        mod(lib.tensor([1, 4])).pow(2).sum().backward()
        opt.step()
    assert_same(arr(n.weight), arr(e.weight))


def test_sparse_adam_refuses_bad_input():
    with pytest.raises(ValueError, match="SparseAdam: parameters need at least one dim"):
        ng.optim.SparseAdam([ng.nn.Parameter(ng.tensor(1.0))])
    with pytest.raises(ValueError, match="lr"):
        ng.optim.SparseAdam([ng.nn.Parameter(ng.zeros(3))], lr=-1.0)


def test_sparse_embeddings_are_refused_clearly():
    """Gradients are dense: ``sparse=True`` (and so ``optim.SparseAdam``) is refused up front,
    naming the layer, rather than training differently."""
    with pytest.raises(NotImplementedError, match="Embedding: sparse=True"):
        ng.nn.Embedding(10, 4, sparse=True)
    with pytest.raises((ValueError, NotImplementedError), match="EmbeddingBag: sparse=True"):
        ng.nn.EmbeddingBag(10, 4, sparse=True)


# 5. recommenders: matrix factorisation with biases, and NCF ---------------------------------
N_USERS, N_ITEMS = 7, 9


def ratings(n=30):
    r = np.random.default_rng(3)
    return (r.integers(0, N_USERS, n), r.integers(0, N_ITEMS, n),
            r.integers(1, 6, n).astype(np.float64))


def matrix_factorization(lib, epochs=4, batch=10):
    nn = lib.nn
    users, items, stars = ratings()

    def build(lib_):
        class MatrixFactorization(lib_.nn.Module):
            def __init__(self, n_users, n_items, n_factors=3):
                super().__init__()
                self.user_factors = lib_.nn.Embedding(n_users, n_factors)
                self.item_factors = lib_.nn.Embedding(n_items, n_factors)
                self.user_bias = lib_.nn.Embedding(n_users, 1)
                self.item_bias = lib_.nn.Embedding(n_items, 1)
                self.user_factors.weight.data.uniform_(0, 0.05)
                self.item_factors.weight.data.uniform_(0, 0.05)
                lib_.nn.init.zeros_(self.user_bias.weight)
                lib_.nn.init.zeros_(self.item_bias.weight)

            def forward(self, user, item):
                pred = self.user_bias(user) + self.item_bias(item)
                pred += (self.user_factors(user) * self.item_factors(item)).sum(1, keepdim=True)
                return pred.squeeze()
        return MatrixFactorization(N_USERS, N_ITEMS)

    model = seeded(lib, build)
    loss_func = nn.MSELoss()
    optimizer = lib.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    losses = []
    for _epoch in range(epochs):
        for i in range(0, len(users), batch):
            user = lib.LongTensor(users[i:i + batch])
            item = lib.LongTensor(items[i:i + batch])
            rating = lib.FloatTensor(stars[i:i + batch]).to(lib.float64)
            optimizer.zero_grad()
            prediction = model(user, item)
            loss = loss_func(prediction, rating)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    with lib.no_grad():
        all_scores = model(lib.arange(N_USERS).repeat_interleave(N_ITEMS),
                           lib.arange(N_ITEMS).repeat(N_USERS)).view(N_USERS, N_ITEMS)
    return {"losses": losses, "scores": all_scores, "state": arrays(model.state_dict())}


def ncf(lib, epochs=3, k=3):
    """Neural collaborative filtering: GMF and MLP towers concatenated into one logit, trained
    with BCEWithLogitsLoss on implicit feedback plus sampled negatives; hit ratio@k by topk."""
    nn = lib.nn
    users, items, _ = ratings()
    r = np.random.default_rng(4)
    neg_items = r.integers(0, N_ITEMS, (epochs, len(users)))
    test_items = r.integers(0, N_ITEMS, N_USERS)

    def build(lib_):
        class NCF(lib_.nn.Module):
            def __init__(self, user_num, item_num, factor_num=4, num_layers=2, dropout=0.0):
                super(NCF, self).__init__()
                self.embed_user_GMF = lib_.nn.Embedding(user_num, factor_num)
                self.embed_item_GMF = lib_.nn.Embedding(item_num, factor_num)
                self.embed_user_MLP = lib_.nn.Embedding(
                    user_num, factor_num * (2 ** (num_layers - 1)))
                self.embed_item_MLP = lib_.nn.Embedding(
                    item_num, factor_num * (2 ** (num_layers - 1)))
                MLP_modules = []
                for i in range(num_layers):
                    input_size = factor_num * (2 ** (num_layers - i))
                    MLP_modules.append(lib_.nn.Dropout(p=dropout))
                    MLP_modules.append(lib_.nn.Linear(input_size, input_size // 2))
                    MLP_modules.append(lib_.nn.ReLU())
                self.MLP_layers = lib_.nn.Sequential(*MLP_modules)
                self.predict_layer = lib_.nn.Linear(factor_num * 2, 1)
                lib_.nn.init.normal_(self.embed_user_GMF.weight, std=0.01)
                lib_.nn.init.normal_(self.embed_user_MLP.weight, std=0.01)
                lib_.nn.init.normal_(self.embed_item_GMF.weight, std=0.01)
                lib_.nn.init.normal_(self.embed_item_MLP.weight, std=0.01)
                for m in self.MLP_layers:
                    if isinstance(m, lib_.nn.Linear):
                        lib_.nn.init.xavier_uniform_(m.weight)
                lib_.nn.init.kaiming_uniform_(self.predict_layer.weight, a=1,
                                              nonlinearity="sigmoid")
                for m in self.modules():
                    if isinstance(m, lib_.nn.Linear) and m.bias is not None:
                        lib_.nn.init.zeros_(m.bias)

            def forward(self, user, item):
                output_GMF = self.embed_user_GMF(user) * self.embed_item_GMF(item)
                interaction = lib_.cat((self.embed_user_MLP(user),
                                        self.embed_item_MLP(item)), -1)
                output_MLP = self.MLP_layers(interaction)
                concat = lib_.cat((output_GMF, output_MLP), -1)
                prediction = self.predict_layer(concat)
                return prediction.view(-1)
        return NCF(N_USERS, N_ITEMS)

    model = seeded(lib, build)
    loss_function = nn.BCEWithLogitsLoss()
    optimizer = lib.optim.Adam(model.parameters(), lr=0.01)
    losses, hrs = [], []
    for e in range(epochs):
        model.train()
        user = lib.tensor(np.concatenate([users, users]))
        item = lib.tensor(np.concatenate([items, neg_items[e]]))
        label = lib.cat([lib.ones(len(users)), lib.zeros(len(users))]).float().double()
        model.zero_grad()
        prediction = model(user, item)
        loss = loss_function(prediction, label)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        model.eval()
        with lib.no_grad():
            hits = 0
            for u in range(N_USERS):
                predictions = model(lib.full((N_ITEMS,), u, dtype=lib.long),
                                    lib.arange(N_ITEMS))
                _, indices = lib.topk(predictions, k)
                recommends = lib.take(lib.arange(N_ITEMS), indices).cpu().numpy().tolist()
                hits += int(test_items[u] in recommends)
            hrs.append(hits / N_USERS)
    return {"losses": losses, "hr": hrs, "state": arrays(model.state_dict())}


def test_matrix_factorization_with_biases():
    both(matrix_factorization)


def test_neural_collaborative_filtering_hit_ratio():
    both(ncf)


# 6. text classification: the EmbeddingBag model, and a character CNN --------------------------
NEWS = [(1, "stocks rally as markets rise"), (2, "team wins the final match"),
        (1, "bank shares fall on rates"), (3, "new phone chip is fast"),
        (2, "coach praises the team"), (3, "software update fixes bugs"),
        (1, "markets fall as rates rise"), (2, "match ends in a draw")]


def text_classification(lib, EPOCHS=3, BATCH_SIZE=3):
    vocab = {w: i for i, w in enumerate(sorted({w for _, t in NEWS for w in t.split()}))}

    def text_pipeline(x):
        return [vocab[w] for w in x.split()]

    def label_pipeline(x):
        return int(x) - 1

    def collate_batch(batch):
        label_list, text_list, offsets = [], [], [0]
        for _label, _text in batch:
            label_list.append(label_pipeline(_label))
            processed_text = lib.tensor(text_pipeline(_text), dtype=lib.int64)
            text_list.append(processed_text)
            offsets.append(processed_text.size(0))
        label_list = lib.tensor(label_list, dtype=lib.int64)
        offsets = lib.tensor(offsets[:-1]).cumsum(dim=0)
        text_list = lib.cat(text_list)
        return label_list, text_list, offsets

    def build(lib_):
        class TextClassificationModel(lib_.nn.Module):
            def __init__(self, vocab_size, embed_dim, num_class):
                super(TextClassificationModel, self).__init__()
                self.embedding = lib_.nn.EmbeddingBag(vocab_size, embed_dim, sparse=False)
                self.fc = lib_.nn.Linear(embed_dim, num_class)
                self.init_weights()

            def init_weights(self):
                initrange = 0.5
                self.embedding.weight.data.uniform_(-initrange, initrange)
                self.fc.weight.data.uniform_(-initrange, initrange)
                self.fc.bias.data.zero_()

            def forward(self, text, offsets):
                embedded = self.embedding(text, offsets)
                return self.fc(embedded)
        return TextClassificationModel(len(vocab), 6, 3)

    DataLoader = lib.utils.data.DataLoader
    train_dataloader = DataLoader(NEWS[:6], batch_size=BATCH_SIZE, shuffle=False,
                                  collate_fn=collate_batch)
    valid_dataloader = DataLoader(NEWS[6:], batch_size=BATCH_SIZE, shuffle=False,
                                  collate_fn=collate_batch)
    model = seeded(lib, build)
    criterion = lib.nn.CrossEntropyLoss()
    optimizer = lib.optim.SGD(model.parameters(), lr=5)
    scheduler = lib.optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.1)
    rec = {"loss": [], "acc": [], "val": [], "lr": []}

    def train(dataloader):
        model.train()
        total_acc, total_count = 0, 0
        for idx, (label, text, offsets) in enumerate(dataloader):
            optimizer.zero_grad()
            predicted_label = model(text, offsets)
            loss = criterion(predicted_label, label)
            loss.backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            total_acc += (predicted_label.argmax(1) == label).sum().item()
            total_count += label.size(0)
            rec["loss"].append(loss.item())
        rec["acc"].append(total_acc / total_count)

    def evaluate(dataloader):
        model.eval()
        total_acc, total_count = 0, 0
        with lib.no_grad():
            for idx, (label, text, offsets) in enumerate(dataloader):
                predicted_label = model(text, offsets)
                total_acc += (predicted_label.argmax(1) == label).sum().item()
                total_count += label.size(0)
        return total_acc / total_count

    total_accu = None
    for _epoch in range(1, EPOCHS + 1):
        train(train_dataloader)
        accu_val = evaluate(valid_dataloader)
        if total_accu is not None and total_accu > accu_val:
            scheduler.step()
        else:
            total_accu = accu_val
        rec["val"].append(accu_val)
        rec["lr"].append(scheduler.get_last_lr()[0])
    scheduler.step()
    rec["lr"].append(scheduler.get_last_lr()[0])
    with lib.no_grad():
        text = lib.tensor(text_pipeline("markets rise on fast chip"))
        rec["predict"] = model(text, lib.tensor([0])).argmax(1).item() + 1
    rec["state"] = arrays(model.state_dict())
    return rec


def char_cnn(lib, adaptive, epochs=3):
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    L = 24
    texts = [t for _, t in NEWS]
    labels = [y - 1 for y, _ in NEWS]

    def encode(s):
        ids = [alphabet.index(c) for c in s[:L]]
        return ids + [len(alphabet) - 1] * (L - len(ids))

    def build(lib_):
        F = lib_.nn.functional

        class CharCNN(lib_.nn.Module):
            def __init__(self, n_chars, n_classes, n_filters=5):
                super().__init__()
                self.conv1 = lib_.nn.Conv1d(n_chars, n_filters, kernel_size=3, padding=1)
                self.conv2 = lib_.nn.Conv1d(n_filters, n_filters, kernel_size=3)
                self.pool = lib_.nn.MaxPool1d(2)
                self.dropout = lib_.nn.Dropout(0.0)
                self.fc = lib_.nn.Linear(n_filters, n_classes)

            def forward(self, x):
                x = F.one_hot(x, num_classes=len(alphabet)).double().transpose(1, 2)
                x = self.pool(F.relu(self.conv1(x)))
                x = F.relu(self.conv2(x))
                if adaptive:
                    x = F.adaptive_max_pool1d(x, 1).squeeze(2)
                else:
                    x = lib_.max(x, dim=2)[0]
                return self.fc(self.dropout(x))
        return CharCNN(len(alphabet), 3)

    model = seeded(lib, build)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    x, y = lib.tensor([encode(t) for t in texts]), lib.tensor(labels)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss)
    return {"losses": losses, "pred": model(x).argmax(dim=1), "state": arrays(model.state_dict())}


def test_embedding_bag_text_classification_tutorial():
    rec = both(text_classification)
    assert rec["lr"][-1] < rec["lr"][0]


@pytest.mark.parametrize("adaptive", [False, True])
def test_char_cnn_max_over_time(adaptive):
    both(char_cnn, adaptive)
