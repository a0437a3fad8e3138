"""The GPU paths: search steps, the cost term, the pipeline and the integer export on CUDA.

CI has no GPU, so these skip there (with the reason shown by ``pytest -rs``); they run wherever
``torch.cuda.is_available()``. They assert the same behaviour as the CPU tests: the cost term's
value and gradients do not depend on where the model lives, and the export is exact on
``torch._int_mm``.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cost_models import build_cost_model
from hwsbs.cli.main import main
from hwsbs.export import export_model
from hwsbs.export.verify import verify_export
from hwsbs.quant.layers import sbs_layers
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.cost_term import CostTerm
from hwsbs.sbs.engine import CostObjective, SearchEngine
from tests.helpers import digits_loaders, pretrained_small_cnn, tiny_argv
from tests.test_export import TINY_SPEC, _tiny_configured

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
CUDA = torch.device("cuda")


def _space(device: torch.device):
    train, _ = digits_loaders()
    x, y = next(iter(train))
    space = convert_model(pretrained_small_cnn().to(device), x.to(device))
    return space, x.to(device), y.to(device)


def test_cost_term_value_and_gradients_match_the_cpu():
    results = {}
    for device in (torch.device("cpu"), CUDA):
        space, x, _ = _space(device)
        for _, layer in space.layers():
            with torch.no_grad():
                layer.w_theta.copy_(torch.tensor([0.0, 1e9]))  # a mixed state: weights at 4 bits
        space.model(x)
        term = CostTerm(space, build_cost_model("bops"))
        total = term()
        thetas = [p for _, layer in space.layers() for p in (layer.w_theta, layer.a_theta, layer.p_theta)]
        grads = torch.autograd.grad(torch.log(total), thetas, allow_unused=True)
        results[device.type] = (
            float(total.detach()),
            [None if g is None else g.cpu() for g in grads],
            term.current_states(),
        )
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-9)
    assert gpu[2] == cpu[2]
    for a, b in zip(cpu[1], gpu[1]):
        assert (a is None) == (b is None)
        if a is not None:
            # the surrogate reads float32 residual statistics that CPU and GPU reduce in different
            # orders (relative differences ~1e-4 seen on an H100); the cost factors are identical
            torch.testing.assert_close(b, a, rtol=2e-3, atol=1e-6)


def test_search_steps_on_cuda_move_thresholds_and_stay_on_the_device():
    space, x, y = _space(CUDA)
    engine = SearchEngine(
        space, [CostObjective(build_cost_model("bops"))], lam=5.0, weight_lr=0.01, threshold_lr=0.1, weight_decay=5e-4
    )
    before = {n: layer.w_theta.detach().clone() for n, layer in space.layers()}
    for _ in range(6):
        out = engine.step(x, y)
    assert all(p.device == CUDA or p.device.type == CUDA.type for p in space.model.parameters())
    assert out["cost"] > 0 and out["loss"] == out["loss"]
    moved = [n for n, layer in space.layers() if not layer.pinned and not torch.equal(layer.w_theta, before[n])]
    assert moved, "a strong lambda must move the weight thresholds of searchable layers"
    assert all(float(layer.w_theta.detach().min()) >= 0 for _, layer in space.layers())


def test_cli_search_on_cuda_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(tiny_argv("search", "--device", "cuda", "--out", str(out), progress=True))
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["accuracy"]["compressed"] <= 1.0 and result["cost"]["compressed"] > 0


def test_integer_export_on_cuda_matches_fake_quantisation():
    model, _ = _tiny_configured()
    reference = copy.deepcopy(model).to(CUDA)
    exported = export_model(model, TINY_SPEC.example(), device=CUDA)
    assert exported.backend == "intmm"
    stats = verify_export(reference, exported, [TINY_SPEC.example(128, seed=s) for s in range(2)], device=CUDA)
    assert stats["passed"], stats
    assert stats["median_rel"] < 1e-5
    assert len(sbs_layers(reference)) == len(exported.records)
