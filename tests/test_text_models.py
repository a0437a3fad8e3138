"""The built-in transformers (vit_tiny, gpt_tiny) and the byte-level ``text`` dataset."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import hwsbs
from hwsbs.cli.search import print_summary
from hwsbs.config import SearchConfig
from hwsbs.data import build_dataset, make_loader
from hwsbs.data.text import DEFAULT_BLOCK, VOCAB_SIZE, builtin_corpus
from hwsbs.errors import DataError, ModelError
from hwsbs.models import build_model
from hwsbs.models.gpt import DEFAULT_CONTEXT
from hwsbs.pipeline import run_search
from hwsbs.training import evaluate_metrics
from tests.helpers import digits_loaders

TINY = dict(
    pretrain_epochs=1, search_epochs=1, finetune_epochs=1, batch_size=16, progress=False, hw="a100", cost="bops"
)


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: a second thread costs more in hand-offs than it computes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seq_factory(num_classes: int, sequence_length: int) -> nn.Module:
    """A user factory that needs the sequence geometry."""
    return nn.Embedding(num_classes, sequence_length)


def _spans(windows) -> list[tuple[int, int]]:
    """Byte ranges (first input, one past the last target) of every window."""
    return [(int(s), int(s) + windows.block + 1) for s in windows.starts]


def test_text_windows_are_next_token_pairs():
    bundle = build_dataset("text", seed=0)
    assert (bundle.num_classes, bundle.sequence_length) == (VOCAB_SIZE, DEFAULT_BLOCK)
    corpus = builtin_corpus()
    assert len(corpus) > 400_000  # CPython's help texts, not a stub
    data = bundle.train.data
    for split in (bundle.train, bundle.val):
        for i in (0, len(split) // 2, len(split) - 1):
            x, y = split[i]
            assert x.shape == y.shape == (DEFAULT_BLOCK,) and x.dtype == y.dtype == torch.long
            start = int(split.starts[i])
            assert torch.equal(x, data[start : start + DEFAULT_BLOCK].long())
            assert torch.equal(y, data[start + 1 : start + DEFAULT_BLOCK + 1].long())
    assert bytes(data[:100].tolist()) == corpus[:100]


def test_text_split_is_disjoint_and_last_tenth_validates():
    bundle = build_dataset("text", seed=3)
    train, val = _spans(bundle.train), _spans(bundle.val)
    n = bundle.train.data.numel()
    assert max(end for _, end in train) <= min(start for start, _ in val)  # no byte on both sides
    assert min(start for start, _ in val) == pytest.approx(0.9 * n, abs=1)
    assert max(end for _, end in val) <= n
    for spans in (train, val):  # windows within a split do not overlap either
        assert all(a_end - 1 <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert len(train) > 8 * len(val)


def test_text_is_deterministic_for_a_seed():
    a, b = build_dataset("text", subset=50, seed=7), build_dataset("text", subset=50, seed=7)
    assert [a.train[i][0].tolist() for i in range(50)] == [b.train[i][0].tolist() for i in range(50)]
    assert [a.val[i][1].tolist() for i in range(len(a.val))] == [b.val[i][1].tolist() for i in range(len(b.val))]
    offsets = {int(build_dataset("text", seed=s).train.starts[0]) for s in range(5)}
    assert len(offsets) > 1  # the seed moves where the training windows are cut


def test_text_reads_user_files(tmp_path):
    (tmp_path / "b").mkdir()
    first, second = "the first file, in sorted order. " * 20, "zweite Datei: grüße. " * 30
    (tmp_path / "a.txt").write_text(first, encoding="utf-8")
    (tmp_path / "b" / "c.txt").write_text(second, encoding="utf-8")
    (tmp_path / "notes.md").write_bytes(b"\xff\xfe not read")  # only *.txt counts
    bundle = build_dataset("text", tmp_path, seed=0)
    assert bytes(bundle.train.data.tolist()) == (first + "\n" + second).encode("utf-8")
    assert len(bundle.train) > 0 and len(bundle.val) > 0


def test_text_data_dir_errors_are_one_clear_line(tmp_path):
    with pytest.raises(DataError, match=r"no \*\.txt files under --data-dir") as info:
        build_dataset("text", tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 " * 200)  # Latin-1, not UTF-8
    with pytest.raises(DataError, match="bad.txt is not UTF-8 text"):
        build_dataset("text", tmp_path)
    (tmp_path / "bad.txt").write_text("short", encoding="utf-8")
    with pytest.raises(DataError, match="too few"):
        build_dataset("text", tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        build_dataset("text", tmp_path / "missing")


def test_vit_tiny_shapes_and_patch_size():
    digits = build_model("vit_tiny", 10, 1, (8, 8))
    assert digits.patch == 2 and digits(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    cifar = build_model("vit_tiny", 100, 3, (32, 32))
    assert cifar.patch == 4 and cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert any(isinstance(m, nn.MultiheadAttention) for m in cifar.modules())


def test_gpt_tiny_shapes_and_causality():
    model = build_model("gpt_tiny", 256, 1, (1, 32), sequence_length=32).eval()
    tokens = torch.randint(0, 256, (2, 32))
    logits = model(tokens)
    assert logits.shape == (2, 32, 256)
    changed = tokens.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    with torch.no_grad():  # a later token never changes an earlier prediction
        assert torch.allclose(model(changed)[:, :20], logits[:, :20], atol=1e-5)
    assert model(tokens[:, :5]).shape == (2, 5, 256)  # shorter than the context is fine
    assert build_model("gpt_tiny", 256, 1, (1, 64)).context == DEFAULT_CONTEXT  # image-only callers agree


def test_factories_may_name_sequence_length():
    spec = "tests.test_text_models:seq_factory"
    assert build_model(spec, 256, 1, (1, 16), sequence_length=16).embedding_dim == 16
    with pytest.raises(ModelError, match="needs a parameter 'sequence_length'.*sequence datasets"):
        build_model(spec, 10, 1, (8, 8))


def test_gpt_tiny_on_text_end_to_end(tmp_path, one_thread, capsys):
    config = SearchConfig(**TINY, model="gpt_tiny", data="text", subset=32, out=str(tmp_path))
    result = run_search(config)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["perplexity"] > 1 and math.isfinite(data["perplexity"])
    assert all(0.0 <= data["accuracy"][k] <= 1.0 for k in ("full_precision", "compressed"))
    val = build_dataset("text", subset=32, seed=0).val  # the run's validation windows
    _, loss = evaluate_metrics(result.model, make_loader(val, 256, False, 0), torch.device("cpu"))
    assert data["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)  # of the final, compressed model
    print_summary(result)
    assert "perplexity" in capsys.readouterr().err
    config.resume = True  # a finished run read back keeps its perplexity
    assert run_search(config).perplexity == result.perplexity


def test_vit_tiny_on_digits_end_to_end(tmp_path, one_thread):
    train, val = digits_loaders(batch_size=32, subset=128)
    model = build_model("vit_tiny", 10, 1, (8, 8))
    result = hwsbs.search(model, train, val, **TINY, out=str(tmp_path))
    data = json.loads((tmp_path / "result.json").read_text())
    assert all(0.0 <= data["accuracy"][k] <= 1.0 for k in ("full_precision", "compressed"))
    assert "perplexity" not in data and result.perplexity is None  # classifiers report accuracy only
