"""Character-level language models: a vocabulary of characters, the Python documentation
text that ships with CPython as the default corpus, a recurrent model (embedding, LSTM or
GRU, linear read-out) trained by truncated backpropagation through time, a causal
Transformer trained on fixed context windows, their loss in nats per character, and
sampling."""

import inspect
import math
import time
from typing import NamedTuple

import torch

from .layers import (
    GRU,
    LSTM,
    CrossEntropyLoss,
    Embedding,
    Layer,
    LayerNorm,
    LearnedPositionalEncoding,
    Linear,
    TransformerEncoder,
    TransformerEncoderLayer,
    generate_square_subsequent_mask,
)
from .optimizers import Adam, clip_grad_norm_

__all__ = [
    "MODEL_KINDS",
    "CharLanguageModel",
    "CharTransformerModel",
    "LanguageModelRun",
    "Vocabulary",
    "evaluate_language_model",
    "generate",
    "load_language_model",
    "perplexity",
    "plot_language_run",
    "python_docs_text",
    "save_language_model",
    "train_language_model",
]

RECURRENT = {"lstm": LSTM, "gru": GRU}
MODEL_KINDS = (*RECURRENT, "transformer")
# What each kind trains with when the caller does not say: epochs, batch size (parallel
# streams), window, learning rate and the model's options.
RECURRENT_DEFAULTS = {
    "epochs": 5, "batch_size": 32, "window": 64, "learn_rate": 4e-3,
    "model": dict(embedding_dim=64, hidden_size=256, num_layers=1),
}
TRAINING_DEFAULTS = {
    "lstm": RECURRENT_DEFAULTS,
    "gru": RECURRENT_DEFAULTS,
    "transformer": {
        "epochs": 6, "batch_size": 16, "window": 128, "learn_rate": 6e-3,
        "model": dict(d_model=128, nhead=4, num_layers=2, dim_feedforward=512),
    },
}


def python_docs_text():
    """The Python documentation topics that ship with every CPython (``pydoc_data.topics``),
    joined in sorted key order with newlines: English prose with code, offline everywhere."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


class Vocabulary:
    """The characters of a text, in sorted order; ids are positions in that order."""

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        if not self.chars:
            raise ValueError("Vocabulary: the text holds no characters")
        self.index = {char: i for i, char in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def __repr__(self):
        return f"Vocabulary({len(self)} characters)"

    def unknown(self, text):
        """The characters of ``text`` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text):
        """The ids of ``text`` (int64); ValueError naming the characters not in the vocabulary."""
        missing = self.unknown(text)
        if missing:
            raise ValueError(f"characters not in the vocabulary: {', '.join(repr(char) for char in missing)}")
        return torch.tensor([self.index[char] for char in text], dtype=torch.long)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids.tolist())


class CharLanguageModel(Layer):
    """Next-character scores: ``Embedding(V, E) -> LSTM or GRU (E -> H, num_layers,
    batch_first) -> Linear(H, V)``.

    forward(ids (N, T), state=None) returns scores (N, T, V) and keeps the recurrent layer's
    final state in ``self.state`` (what the next window of the same streams starts from,
    in truncated backpropagation through time). backward(dscores) runs the three layers'
    backward passes in reverse (the state's gradient is not carried across windows) and
    returns None (the ids have no gradient).
    """

    has_input_gradient = False

    def __init__(self, vocab_size, kind="lstm", embedding_dim=64, hidden_size=256, num_layers=1, dropout=0.0):
        super().__init__()
        if kind not in RECURRENT:
            raise ValueError(f"CharLanguageModel: kind must be one of {sorted(RECURRENT)}, got {kind!r}")
        self.vocab_size = vocab_size
        self.kind = kind
        self.config = dict(
            vocab_size=vocab_size, kind=kind, embedding_dim=embedding_dim, hidden_size=hidden_size,
            num_layers=num_layers, dropout=dropout,
        )
        self.embedding = Embedding(vocab_size, embedding_dim)
        self.recurrent = RECURRENT[kind](embedding_dim, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.readout = Linear(hidden_size, vocab_size)
        self.state = None

    def __repr__(self):
        return f"CharLanguageModel({self.vocab_size}, kind={self.kind!r}, {self.recurrent!r})"

    def named_children(self):
        return [("embedding", self.embedding), ("recurrent", self.recurrent), ("readout", self.readout)]

    def forward(self, ids, state=None, **kw):
        out, self.state = self.recurrent(self.embedding(ids), state)
        return self.readout(out)

    def backward(self, dscores):
        dout = self.readout.backward(dscores)
        if state_given(self.recurrent):
            dx, _ = self.recurrent.backward((dout, None))
        else:
            dx = self.recurrent.backward((dout, None))
        self.embedding.backward(dx)
        return None

    def next_scores(self, history, new):
        """Scores (V,) of the character after ``history`` (1-D ids), of which the state
        already holds all but the last ``new`` (all of them new: start from no state)."""
        state = None if new == len(history) else detached_state(self.state)
        return self(history[-new:].unsqueeze(0), state)[0, -1]


class CharTransformerModel(Layer):
    """Next-character scores from a causal Transformer: ``Embedding(V, d_model) ->
    LearnedPositionalEncoding(window, d_model) -> TransformerEncoder(num_layers x
    TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation='gelu',
    batch_first=True, norm_first=True), norm=LayerNorm(d_model)) -> Linear(d_model, V)``,
    the encoder masked by ``generate_square_subsequent_mask`` so that position t sees
    positions 0..t only.

    forward(ids (N, T), state=None) returns scores (N, T, V), T <= window; nothing is carried
    from one window to the next (``state`` must be None and ``self.state`` stays None).
    backward(dscores) runs the layers' backward passes in reverse and returns None (the ids
    have no gradient).
    """

    has_input_gradient = False

    def __init__(self, vocab_size, d_model=128, nhead=4, num_layers=2, dim_feedforward=512, window=128, dropout=0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.kind = "transformer"
        self.window = window
        self.config = dict(
            vocab_size=vocab_size, kind="transformer", d_model=d_model, nhead=nhead, num_layers=num_layers,
            dim_feedforward=dim_feedforward, window=window, dropout=dropout,
        )
        self.embedding = Embedding(vocab_size, d_model)
        self.position = LearnedPositionalEncoding(window, d_model, batch_first=True)
        block = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = TransformerEncoder(block, num_layers, norm=LayerNorm(d_model))
        self.readout = Linear(d_model, vocab_size)
        self.state = None

    def __repr__(self):
        return f"CharTransformerModel({self.vocab_size}, window={self.window}, {self.encoder!r})"

    def named_children(self):
        return [("embedding", self.embedding), ("position", self.position), ("encoder", self.encoder), ("readout", self.readout)]

    def forward(self, ids, state=None, **kw):
        if state is not None:
            raise ValueError("CharTransformerModel: a Transformer carries no state between windows; state must be None")
        length = ids.shape[-1]
        if length > self.window:
            raise ValueError(f"CharTransformerModel: {length} characters exceed the context window of {self.window}")
        x = self.position(self.embedding(ids))
        mask = generate_square_subsequent_mask(length, dtype=x.dtype)
        return self.readout(self.encoder(x, mask=mask, is_causal=True))

    def backward(self, dscores):
        dx = self.encoder.backward(self.readout.backward(dscores))
        self.embedding.backward(self.position.backward(dx))
        return None

    def next_scores(self, history, new):
        """Scores (V,) of the character after ``history`` (1-D ids), read from its last
        ``window`` ids (``new`` is not needed: nothing is carried between calls)."""
        return self(history[-self.window:].unsqueeze(0))[0, -1]


LANGUAGE_MODELS = {"lstm": CharLanguageModel, "gru": CharLanguageModel, "transformer": CharTransformerModel}


def build_language_model(vocab_size, kind, **options):
    """The model of ``kind`` ('lstm', 'gru' or 'transformer') with ``options`` (its
    constructor's keywords); TypeError naming an option that kind does not take."""
    if kind not in LANGUAGE_MODELS:
        raise ValueError(f"language model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    model_class = LANGUAGE_MODELS[kind]
    accepted = inspect.signature(model_class).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"a {kind} language model does not take {', '.join(unknown)}")
    if model_class is CharLanguageModel:
        options = dict(options, kind=kind)
    return model_class(vocab_size, **options)


def state_given(recurrent):
    """Whether the recurrent layer's latest forward was given an initial state."""
    return recurrent._cache[3]


def detached_state(state):
    """A state to start the next window from: the same values, no link to this window
    (None for none)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(part.clone() for part in state)
    return state.clone()


def streams(ids, count):
    """``ids`` cut into ``count`` equal contiguous streams, (count, length); the tail that
    does not fill a stream is dropped."""
    length = ids.numel() // count
    return ids[: count * length].reshape(count, length)


def window_pair(data, start, window):
    """The streams' characters from ``start`` on (at most ``window``) and the characters
    that follow each of them: (inputs, targets), both (streams, length)."""
    targets = data[:, start + 1:start + window + 1]
    return data[:, start:start + targets.shape[1]], targets


class LanguageModelRun(NamedTuple):
    model: CharLanguageModel
    vocabulary: Vocabulary
    train_loss: list  # nats per character, one per epoch
    test_loss: list
    seconds: float


def evaluate_language_model(model, ids, batch_size=32, window=None):
    """Mean loss in nats per character of predicting each id of ``ids`` from the ones before
    it, in ``batch_size`` parallel streams read window by window, a recurrent model's state
    carried over (a Transformer sees each window on its own). ``window`` defaults to a
    Transformer's context window, and to 128 for a recurrent model."""
    if window is None:
        window = getattr(model, "window", 128)
    model.eval()
    data = streams(ids, batch_size)
    loss_fn = CrossEntropyLoss()
    total, count, state = 0.0, 0, None
    for start in range(0, data.shape[1] - 1, window):
        inputs, targets = window_pair(data, start, window)
        scores = model(inputs, state)
        state = detached_state(model.state)
        total += loss_fn(scores.reshape(-1, model.vocab_size), targets.reshape(-1)).item() * targets.numel()
        count += targets.numel()
    model.train()
    return total / max(count, 1)


def train_language_model(
    text, kind="lstm", epochs=None, batch_size=None, window=None, learn_rate=None, clip=1.0, test_fraction=0.1, seed=0,
    progress=None, **model_options,
):
    """Trains a character model of ``kind`` on ``text``: the last ``test_fraction`` of it is
    the test set (contiguous), the rest is read as ``batch_size`` parallel streams in windows
    of ``window`` characters. A recurrent model carries its state from window to window
    (truncated backpropagation through time); a Transformer sees each window on its own (its
    context is the window). Adam with the learning rate decayed along a cosine to 0 over the
    run, gradients clipped to norm ``clip``. ``epochs``, ``batch_size``, ``window``,
    ``learn_rate`` and the model's options (``embedding_dim``, ``hidden_size``,
    ``num_layers``, ``dropout`` of ``CharLanguageModel``; ``d_model``, ``nhead``,
    ``num_layers``, ``dim_feedforward``, ``dropout`` of ``CharTransformerModel``, whose
    context window is ``window``) default to ``TRAINING_DEFAULTS[kind]``.
    ``progress(epoch, train_loss, test_loss)`` is called after each epoch. Returns a
    LanguageModelRun."""
    if kind not in TRAINING_DEFAULTS:
        raise ValueError(f"train_language_model: kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    defaults = TRAINING_DEFAULTS[kind]
    epochs = defaults["epochs"] if epochs is None else epochs
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    window = defaults["window"] if window is None else window
    learn_rate = defaults["learn_rate"] if learn_rate is None else learn_rate
    options = dict(defaults["model"], **model_options)
    if kind == "transformer":
        options["window"] = window
    torch.manual_seed(seed)
    vocabulary = Vocabulary(text)
    ids = vocabulary.encode(text)
    split = int(len(ids) * (1 - test_fraction))
    train_ids, test_ids = ids[:split], ids[split:]
    model = build_language_model(len(vocabulary), kind, **options)
    optimizer = Adam(model.params(), learn_rate=learn_rate)
    loss_fn = CrossEntropyLoss()
    data = streams(train_ids, batch_size)
    steps_per_epoch = max((data.shape[1] - 1) // window, 1)
    total_steps = epochs * steps_per_epoch
    started = time.perf_counter()
    train_losses, test_losses = [], []
    step = 0
    for epoch in range(1, epochs + 1):
        state, epoch_loss = None, 0.0
        for start in range(0, steps_per_epoch * window, window):
            optimizer.learn_rate = learn_rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            inputs, targets = window_pair(data, start, window)
            scores = model(inputs, state)
            state = detached_state(model.state)
            epoch_loss += loss_fn(scores.reshape(-1, model.vocab_size), targets.reshape(-1)).item()
            optimizer.zero_grad()
            model.backward(loss_fn.backward().reshape(scores.shape))
            clip_grad_norm_(model.params(), clip)
            optimizer.step()
            step += 1
        train_losses.append(epoch_loss / steps_per_epoch)
        test_losses.append(evaluate_language_model(model, test_ids, batch_size, window))
        if progress is not None:
            progress(epoch, train_losses[-1], test_losses[-1])
    return LanguageModelRun(model, vocabulary, train_losses, test_losses, time.perf_counter() - started)


def perplexity(nats):
    """exp(loss): the number of equally likely characters the loss is worth."""
    return math.exp(nats)


def plot_language_run(run):
    """A figure of the train and test loss per epoch, in nats per character."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    epochs = range(1, len(run.train_loss) + 1)
    axes.plot(epochs, run.train_loss, marker="o", label="train")
    axes.plot(epochs, run.test_loss, marker="o", label="test")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (nats per character)")
    axes.set_title(f"character-level {run.model.kind} on {len(run.vocabulary)} characters")
    axes.legend()
    figure.tight_layout()
    return figure


def generate(model, vocabulary, prompt, length, temperature=1.0, seed=0):
    """``prompt`` followed by ``length`` characters drawn one at a time from the model's
    distribution at ``temperature`` (softmax of scores / temperature; 0 picks the most
    likely character); a Transformer reads the last ``window`` characters. ValueError
    naming the prompt's characters that are not in the vocabulary."""
    if not prompt:
        raise ValueError("generate: the prompt must hold at least one character")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature}")
    history = vocabulary.encode(prompt)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    scores = model.next_scores(history, len(history))
    for _ in range(length):
        if temperature == 0:
            next_id = int(scores.argmax())
        else:
            probabilities = torch.softmax(scores.double() / temperature, dim=0)
            next_id = int(torch.multinomial(probabilities, 1, generator=generator))
        history = torch.cat([history, torch.tensor([next_id])])
        scores = model.next_scores(history, 1)
    model.train()
    return vocabulary.decode(history)


def save_language_model(run_or_model, vocabulary, path):
    """The model's configuration, weights and vocabulary in one file (plain tensors, strings
    and numbers: ``load_language_model`` reads it with ``torch.load(weights_only=True)``)."""
    model = run_or_model.model if isinstance(run_or_model, LanguageModelRun) else run_or_model
    torch.save({"format": "nnlab-char-lm-1", "config": model.config, "vocabulary": vocabulary.chars, "state": model.state_dict()}, path)


def load_language_model(path):
    """(model, vocabulary) from a file of ``save_language_model``; ValueError naming the file
    when it is not one."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not an nnlab language model checkpoint ({error})") from None
    if not isinstance(saved, dict) or saved.get("format") != "nnlab-char-lm-1":
        raise ValueError(f"{path}: not an nnlab language model checkpoint (no 'nnlab-char-lm-1' format field)")
    try:
        model = build_language_model(**saved["config"])
        model.load_state_dict(saved["state"])
        vocabulary = Vocabulary(saved["vocabulary"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: a malformed language model checkpoint ({error})") from None
    return model, vocabulary
