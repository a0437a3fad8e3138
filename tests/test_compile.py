"""``--compile``: the quantiser kernels under torch.compile, and the fallback to eager (issue 16)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.quant import compiled
from hwsbs.quant.layers import SBSConv2d

BITS = (2, 4, 8)
TINY = ["--subset", "128", "--pretrain-epochs", "1", "--search-epochs", "1", "--finetune-epochs", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _eager_afterwards():
    yield
    compiled.compile_quantizers(False)


def _step() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layer = SBSConv2d.from_module(nn.Conv2d(3, 4, 3), BITS, 2, 0.5, 1.0)
    x = torch.randn(2, 3, 6, 6)
    layer(x)  # calibration
    x.requires_grad_(True)
    layer(x).square().sum().backward()
    return layer.act_clip.grad.clone(), x.grad.clone()


def test_a_failing_torch_compile_warns_once_and_runs_eager(monkeypatch, capsys):
    eager = _step()

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    compiled.compile_quantizers(True)
    got = _step()
    got_again = _step()
    err = capsys.readouterr().err
    assert "--compile: compiling the quantiser kernels" in err
    assert err.count("hwsbs search: warning: --compile: torch.compile failed") == 1
    assert "no compiler here" in err and "continuing eager" in err
    assert not compiled.compiling()
    for a, b in zip(eager, got):
        assert torch.equal(a, b)
    for a, b in zip(eager, got_again):
        assert torch.equal(a, b)


def test_a_kernel_failing_at_its_first_call_falls_back(monkeypatch, capsys):
    """torch.compile is lazy: a missing C++ compiler or Triton shows up at the first call."""
    eager = _step()

    def lazy_broken(fn, **kwargs):
        def call(*args):
            raise OSError("cc: not found")

        return call

    monkeypatch.setattr(torch, "compile", lazy_broken)
    compiled.compile_quantizers(True, notice=False)
    got = _step()
    err = capsys.readouterr().err
    assert err.count("hwsbs search: warning:") == 1 and "cc: not found" in err
    for a, b in zip(eager, got):
        assert torch.equal(a, b)


def test_switching_is_idempotent_and_reports_the_old_value(capsys):
    assert compiled.compile_quantizers(True) is False
    assert compiled.compile_quantizers(True) is True  # a second call keeps the kernels, no second notice
    assert capsys.readouterr().err.count("compiling the quantiser kernels") == 1
    assert compiled.compile_quantizers(False) is True
    assert compiled.kernel("forward", len) is len  # eager again


def test_compile_option_defaults_off_and_is_validated():
    assert SearchConfig().compile is False
    assert SearchConfig(compile=True).compile is True
    with pytest.raises(Exception, match="--compile"):
        SearchConfig(compile="yes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_compile_flag_runs_a_tiny_digits_search(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--hw", "a100", *TINY, "--compile", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "--compile: compiling the quantiser kernels" in captured.err
    assert json.loads((out / "options.json").read_text())["compile"] is True
    assert (out / "result.json").exists()
