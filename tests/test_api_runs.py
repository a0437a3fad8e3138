"""Runs started from the Python API are first-class: their model exports, their run directory says what it needs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import hwsbs
from hwsbs.cli.main import main
from hwsbs.export import export_model
from hwsbs.models import build_model
from tests.helpers import digits_loaders

SCHEDULE = dict(pretrain_epochs=1, search_epochs=1, finetune_epochs=1)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    torch.manual_seed(0)
    train, val = digits_loaders(subset=256)
    out = tmp_path_factory.mktemp("api") / "run"
    return hwsbs.search(build_model("small_cnn", 10, 1, (8, 8)), train, val, hw="a100", out=str(out), **SCHEDULE)


def test_export_works_on_the_api_result_model(api_run):
    copy.deepcopy(api_run.model)  # the latest forward's gates are not copied (they are graph nodes)
    x = next(iter(digits_loaders(subset=64)[1]))[0][:16]
    exported = export_model(api_run.model, x)
    api_run.model.eval()
    agree = (exported(x).argmax(1) == api_run.model(x).argmax(1)).float().mean()
    assert float(agree) >= 0.9


def test_api_run_records_its_model_class_and_export_asks_for_model(api_run, capsys):
    options = json.loads((api_run.run_dir / "options.json").read_text())
    assert options["model"] == "python-api:SmallCNN" and options["data"] == "python-api"
    code = main(["export", "--run", str(api_run.run_dir), "--out", str(api_run.run_dir / "exp.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "started from the Python API with a SmallCNN object" in err and "pass --model" in err
    code = main(
        ["export", "--run", str(api_run.run_dir), "--model", "small_cnn", "--out", str(api_run.run_dir / "exp.pt")]
    )
    assert code == 0, capsys.readouterr().err


def test_api_run_with_a_factory_exports_from_its_run_directory(tmp_path, capsys):
    torch.manual_seed(0)
    train, val = digits_loaders(subset=256)
    result = hwsbs.search(
        build_model("small_cnn", 10, 1, (8, 8)),
        train,
        val,
        hw="a100",
        factory="small_cnn",
        out=str(tmp_path / "r"),
        **SCHEDULE,
    )
    assert main(["export", "--run", str(result.run_dir), "--out", str(tmp_path / "exp.pt")]) == 0, (
        capsys.readouterr().err
    )
