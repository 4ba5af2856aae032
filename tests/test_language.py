"""The character-level language model: vocabulary, the bundled corpus, the model's
backward against torch's Embedding + LSTM/GRU + Linear under autograd, training,
evaluation, sampling, saving, and the two commands."""

import math
import os
import subprocess
import sys

import pytest
import torch

from nnlab import language
from nnlab.layers import CrossEntropyLoss
from reference import assert_close

TEXT = "the quick brown fox jumps over the lazy dog; " * 40


def nnlab(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "nnlab", *args], capture_output=True, text=True, timeout=240, env=env)


def test_vocabulary_round_trip_and_unknown_characters():
    vocabulary = language.Vocabulary("banana!")
    assert vocabulary.chars == "!abn"
    ids = vocabulary.encode("nab!")
    assert ids.tolist() == [3, 1, 2, 0]
    assert vocabulary.decode(ids) == "nab!"
    with pytest.raises(ValueError, match="characters not in the vocabulary: 'Z', 'x'"):
        vocabulary.encode("xZa")


def test_the_default_corpus_is_cpythons_documentation_in_sorted_key_order():
    from pydoc_data.topics import topics

    text = language.python_docs_text()
    assert text.startswith(topics[sorted(topics)[0]])
    assert len(text) == sum(len(topic) for topic in topics.values()) + len(topics) - 1
    assert len(text) > 100_000


class TorchCharModel(torch.nn.Module):
    """The torch twin of CharLanguageModel."""

    def __init__(self, model):
        super().__init__()
        config = model.config
        recurrent = torch.nn.LSTM if config["kind"] == "lstm" else torch.nn.GRU
        self.embedding = torch.nn.Embedding(config["vocab_size"], config["embedding_dim"])
        self.recurrent = recurrent(config["embedding_dim"], config["hidden_size"], config["num_layers"], batch_first=True)
        self.readout = torch.nn.Linear(config["hidden_size"], config["vocab_size"])
        self.load_state_dict(model.state_dict())

    def forward(self, ids, state=None):
        out, state = self.recurrent(self.embedding(ids), state)
        return self.readout(out), state


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_models_gradients_equal_autograds_through_torch_modules(kind):
    torch.manual_seed(0)
    model = language.CharLanguageModel(7, kind, embedding_dim=5, hidden_size=6, num_layers=2).to(torch.float64)
    twin = TorchCharModel(model).double()
    ids = torch.randint(0, 7, (3, 9))
    targets = torch.randint(0, 7, (3, 9))
    loss_fn = CrossEntropyLoss()
    scores = model(ids)
    loss = loss_fn(scores.reshape(-1, 7), targets.reshape(-1))
    assert model.backward(loss_fn.backward().reshape(scores.shape)) is None
    twin_scores, _ = twin(ids)
    twin_loss = torch.nn.functional.cross_entropy(twin_scores.reshape(-1, 7), targets.reshape(-1))
    twin_loss.backward()
    assert abs(loss.item() - twin_loss.item()) < 1e-12
    for (name, parameter), (_, grad) in zip(twin.named_parameters(), model.params(), strict=True):
        assert_close(name, grad, parameter.grad, rtol=1e-10)


class TorchCharTransformer(torch.nn.Module):
    """The torch twin of CharTransformerModel: torch.nn's Embedding, a learned position
    table, TransformerEncoder (pre-norm GELU layers, final LayerNorm) and Linear."""

    def __init__(self, model):
        super().__init__()
        config = model.config
        d_model = config["d_model"]
        self.embedding = torch.nn.Embedding(config["vocab_size"], d_model)
        self.position = torch.nn.Module()
        self.position.weight = torch.nn.Parameter(torch.zeros(config["window"], d_model))
        layer = torch.nn.TransformerEncoderLayer(
            d_model, config["nhead"], config["dim_feedforward"], config["dropout"], activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, config["num_layers"], torch.nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.readout = torch.nn.Linear(d_model, config["vocab_size"])
        self.load_state_dict(model.state_dict())

    def forward(self, ids):
        length = ids.shape[1]
        x = self.embedding(ids) + self.position.weight[:length]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(length, dtype=x.dtype)
        return self.readout(self.encoder(x, mask=mask, is_causal=True))


def small_transformer(vocab_size=7, window=6, seed=0):
    torch.manual_seed(seed)
    model = language.CharTransformerModel(vocab_size, d_model=8, nhead=2, num_layers=2, dim_feedforward=12, window=window)
    return model.to(torch.float64)


@pytest.mark.parametrize("length", [1, 6])
def test_the_transformers_gradients_equal_autograds_through_torch_modules(length):
    model = small_transformer()
    twin = TorchCharTransformer(model).double()
    ids = torch.randint(0, 7, (3, length))
    targets = torch.randint(0, 7, (3, length))
    loss_fn = CrossEntropyLoss()
    scores = model(ids)
    loss = loss_fn(scores.reshape(-1, 7), targets.reshape(-1))
    assert model.backward(loss_fn.backward().reshape(scores.shape)) is None
    twin_scores = twin(ids)
    twin_loss = torch.nn.functional.cross_entropy(twin_scores.reshape(-1, 7), targets.reshape(-1))
    twin_loss.backward()
    assert_close("scores", scores, twin_scores.detach(), atol=1e-12)
    for (name, parameter), (_, grad) in zip(twin.named_parameters(), model.params(), strict=True):
        assert_close(name, grad, parameter.grad, rtol=1e-10)


def test_the_transformer_sees_each_window_on_its_own_and_no_more_than_its_window():
    model = small_transformer(window=4)
    twin = TorchCharTransformer(model).double()
    ids = torch.randint(0, 7, (2 * 11 + 1,))
    loss = language.evaluate_language_model(model, ids, batch_size=2)
    stream_ids = ids[:22].reshape(2, 11)
    total = 0.0
    for start in (0, 4, 8):
        inputs = stream_ids[:, start:min(start + 4, 10)]
        targets = stream_ids[:, start + 1:start + 1 + inputs.shape[1]]
        scores = twin(inputs)
        total += torch.nn.functional.cross_entropy(scores.reshape(-1, 7), targets.reshape(-1), reduction="sum").item()
    assert abs(loss - total / 20) < 1e-12
    with pytest.raises(ValueError, match="5 characters exceed the context window of 4"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="carries no state between windows"):
        model(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1))


def test_transformer_generation_reads_the_last_window_of_characters():
    model = small_transformer(vocab_size=5, window=4, seed=1)
    vocabulary = language.Vocabulary("abcde")
    twin = TorchCharTransformer(model).double()
    text = language.generate(model, vocabulary, "abcdeab", 8, temperature=0.0)
    expected = "abcdeab"
    for _ in range(8):
        scores = twin(vocabulary.encode(expected[-4:]).unsqueeze(0))
        expected += vocabulary.chars[int(scores[0, -1].argmax())]
    assert text == expected


def test_training_a_transformer_learns_a_repeating_text():
    run = language.train_language_model(
        TEXT, kind="transformer", epochs=6, batch_size=4, window=32, d_model=32, nhead=2, num_layers=1, dim_feedforward=64, learn_rate=1e-2
    )
    uniform = math.log(len(run.vocabulary))
    assert run.model.window == 32
    assert run.test_loss[-1] < 0.3 * uniform
    assert run.test_loss[-1] < run.test_loss[0]


def test_an_option_the_model_kind_does_not_take_is_refused():
    with pytest.raises(TypeError, match="a transformer language model does not take hidden_size"):
        language.train_language_model(TEXT, kind="transformer", hidden_size=8)
    with pytest.raises(ValueError, match="kind must be one of lstm, gru, transformer, got 'rnn'"):
        language.train_language_model(TEXT, kind="rnn")


def test_evaluation_carries_the_state_across_windows_as_one_long_pass_would():
    torch.manual_seed(0)
    model = language.CharLanguageModel(6, "gru", embedding_dim=4, hidden_size=5).to(torch.float64)
    twin = TorchCharModel(model).double()
    ids = torch.randint(0, 6, (2 * 25 + 1,))
    loss = language.evaluate_language_model(model, ids, batch_size=2, window=7)
    stream_ids = ids[:50].reshape(2, 25)
    scores, _ = twin(stream_ids[:, :-1])
    expected = torch.nn.functional.cross_entropy(scores.reshape(-1, 6), stream_ids[:, 1:].reshape(-1))
    assert abs(loss - expected.item()) < 1e-12


def test_training_learns_a_repeating_text():
    run = language.train_language_model(TEXT, epochs=6, batch_size=4, window=32, hidden_size=32, embedding_dim=8, learn_rate=1e-2)
    uniform = math.log(len(run.vocabulary))
    assert len(run.train_loss) == len(run.test_loss) == 6
    assert run.test_loss[-1] < 0.3 * uniform
    assert run.test_loss[-1] < run.test_loss[0]


def test_generation_at_temperature_0_follows_the_likeliest_character():
    torch.manual_seed(1)
    model = language.CharLanguageModel(5, "lstm", embedding_dim=3, hidden_size=4).to(torch.float64)
    vocabulary = language.Vocabulary("abcde")
    twin = TorchCharModel(model).double()
    text = language.generate(model, vocabulary, "ab", 6, temperature=0.0)
    ids = vocabulary.encode("ab").unsqueeze(0)
    expected = "ab"
    scores, state = twin(ids)
    for _ in range(6):
        next_id = int(scores[0, -1].argmax())
        expected += vocabulary.chars[next_id]
        scores, state = twin(torch.tensor([[next_id]]), state)
    assert text == expected


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: language.CharLanguageModel(6, "lstm", embedding_dim=4, hidden_size=5),
        lambda: language.CharTransformerModel(6, d_model=4, nhead=2, num_layers=1, dim_feedforward=6, window=8),
    ],
    ids=["lstm", "transformer"],
)
def test_save_and_load_give_the_same_model_in_a_fresh_process(tmp_path, make_model):
    torch.manual_seed(0)
    model = make_model()
    vocabulary = language.Vocabulary("abcdef")
    path = tmp_path / "lm.pt"
    language.save_language_model(model, vocabulary, path)
    expected = language.generate(model, vocabulary, "abc", 20, temperature=1.0, seed=3)
    code = (
        "from nnlab import language; "
        f"model, vocabulary = language.load_language_model({str(path)!r}); "
        "print(language.generate(model, vocabulary, 'abc', 20, temperature=1.0, seed=3))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == expected


def test_a_file_that_is_not_a_language_model_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not an nnlab language model checkpoint"):
        language.load_language_model(path)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt: not an nnlab language model checkpoint"):
        language.load_language_model(tmp_path / "junk.pt")


def test_train_text_and_generate_from_the_command_line(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    checkpoint = tmp_path / "lm.pt"
    result = nnlab("train", "--data", "text", "--text", str(text), "--epochs", "1", "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("epoch 1/1: train loss") for line in lines)
    assert any(line.startswith("final test loss: ") and "nats per character (perplexity" in line for line in lines)
    generated = nnlab("generate", "--checkpoint", str(checkpoint), "--prompt", "the ", "--length", "10")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("the ") and len(generated.stdout.rstrip("\n")) == 14


def test_train_a_transformer_and_generate_from_the_command_line(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    checkpoint = tmp_path / "lm.pt"
    result = nnlab("train", "--data", "text", "--text", str(text), "--model", "transformer", "--epochs", "1", "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("character-level transformer language model on ")
    model, _ = language.load_language_model(checkpoint)
    assert isinstance(model, language.CharTransformerModel)
    assert model.config == dict(language.TRAINING_DEFAULTS["transformer"]["model"], vocab_size=len(set(TEXT)), kind="transformer",
                                window=language.TRAINING_DEFAULTS["transformer"]["window"], dropout=0.0)
    generated = nnlab("generate", "--checkpoint", str(checkpoint), "--prompt", "the lazy dog", "--length", "150")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("the lazy dog") and len(generated.stdout.rstrip("\n")) == 162


def test_the_command_lists_the_language_models():
    result = nnlab("train", "--help")
    assert "lstm, gru, transformer with --data text" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("train", "--data", "text", "--text", "/no/such/file"), "--text /no/such/file: no such file"),
        (("train", "--data", "digits", "--model", "lstm"), "--model lstm is a language model: it takes --data text"),
        (("train", "--data", "text", "--model", "cnn"), "--model cnn: --data text trains lstm, gru, transformer"),
        (("train", "--data", "digits", "--model", "transformer"), "--model transformer is a language model: it takes --data text"),
        (("train", "--text", "x.txt"), "--text is taken with --data text only"),
        (("generate", "--checkpoint", "/no/such.pt"), "--checkpoint /no/such.pt: no such file"),
    ],
)
def test_command_line_errors_are_one_line(args, fragment):
    result = nnlab(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_a_prompt_outside_the_vocabulary_is_refused_naming_its_characters(tmp_path):
    path = tmp_path / "lm.pt"
    language.save_language_model(language.CharLanguageModel(3, "gru", 2, 3), language.Vocabulary("abc"), path)
    result = nnlab("generate", "--checkpoint", str(path), "--prompt", "abz!")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "characters not in the model's vocabulary: '!', 'z'" in result.stderr


def test_layer_trainer_trains_a_graph_language_model_on_flattened_scores():
    """Embedding -> LSTM -> Linear as a graph Model whose scores are flattened to (N * T, V),
    trained by LayerTrainer with CrossEntropyLoss on the flattened next characters; one step's
    gradients equal autograd's through torch's modules, and training lowers the loss."""
    from nnlab.data import Batches
    from nnlab.graph import Input, Model
    from nnlab.layers import LSTM, Embedding, Flatten, Linear
    from nnlab.optimizers import Adam
    from nnlab.training import LayerTrainer

    torch.manual_seed(0)
    vocabulary = language.Vocabulary(TEXT)
    ids = vocabulary.encode(TEXT)
    steps = 8
    count = (len(ids) - 1) // steps
    inputs = ids[: count * steps].reshape(count, steps)
    targets = ids[1: count * steps + 1].reshape(count, steps)
    node = Input(shape=(steps,), dtype=torch.long)
    embedding, lstm, readout = Embedding(len(vocabulary), 8), LSTM(8, 16, batch_first=True), Linear(16, len(vocabulary))
    model = Model(node, Flatten(0, 1)(readout(lstm(embedding(node))[0])))

    twin_embedding, twin_lstm, twin_readout = torch.nn.Embedding(len(vocabulary), 8), torch.nn.LSTM(8, 16, batch_first=True), torch.nn.Linear(16, len(vocabulary))
    for layer, twin in ((embedding, twin_embedding), (lstm, twin_lstm), (readout, twin_readout)):
        twin.load_state_dict(layer.state_dict())
    trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-2))
    batch = (inputs[:4], targets[:4].reshape(-1))
    model.zero_grad()
    first = trainer.train_batch(batch)
    scores = twin_readout(twin_lstm(twin_embedding(batch[0]))[0]).reshape(-1, len(vocabulary))
    loss = torch.nn.functional.cross_entropy(scores, batch[1])
    loss.backward()
    assert abs(first.loss - loss.item()) < 1e-5
    twins = list(twin_embedding.parameters()) + list(twin_lstm.parameters()) + list(twin_readout.parameters())
    for (_, grad), twin in zip(model.params(), twins, strict=True):
        assert_close("gradient", grad, twin.grad, rtol=1e-5, floor=1e-6)

    class FlatTargets:
        def __init__(self, batches):
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def __iter__(self):
            return ((x, y.reshape(-1)) for x, y in self.batches)

    fit = trainer.fit(FlatTargets(Batches(inputs, targets, 16, shuffle=True)), FlatTargets(Batches(inputs, targets, 64)), 4, verbose=False)
    assert fit.train_loss[-1] < 0.7 * fit.train_loss[0]
