"""``hwsbs search`` from the command line: the front door and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwsbs.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--subset", "256", "--pretrain-epochs", "1", "--search-epochs", "1", "--finetune-epochs", "1", "--no-progress"]


@pytest.mark.parametrize("hw", ["a100", "hardware_profiles/a100.yaml", "profiles/a100.yaml"])
def test_search_accepts_builtin_names_and_paths(hw, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    assert main(["search", "--hw", hw, *TINY, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("hwsbs: a100/") and "cheaper than uniform 8-bit" in last
    data = json.loads((out / "result.json").read_text())
    assert data["hardware"] == "a100"
    assert {"config.yaml", "layers.png", "result.json"} <= {p.name for p in out.iterdir()}


def test_json_flag_prints_result_json(tmp_path, capsys):
    assert main(["search", "--hw", "a100", *TINY, "--out", str(tmp_path / "r"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost"]["compressed"] > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--hw", "nosuchgpu"], "unknown hardware profile 'nosuchgpu'; known: "),
        (["--hw", "missing/dir/x.yaml"], "missing/dir/x.yaml: hardware profile file not found"),
        (["--hw", "a100", "--bits", "2,3,8"], "each bit width must double"),
        (["--hw", "a100", "--bits", "two"], "argument --bits: expected comma-separated integers"),
        (["--hw", "a100", "--lambda", "-1"], "--lambda: expected a number >= 0"),
        (["--hw", "a100", "--lr", "0"], "--lr: expected a positive number"),
        (["--hw", "a100", "--model", "nosuchnet"], "unknown model 'nosuchnet'; known: "),
        (["--hw", "a100", "--data", "nosuchdata"], "unknown dataset 'nosuchdata'; known: "),
        (["--hw", "a100", "--target", "cheap"], "--target: expected a positive cost"),
        (["--hw", "a100", "--cost", "nosuchcost"], "unknown cost model 'nosuchcost'; known: "),
        (["--hw", "a100", "--checkpoint", "/nonexistent/fp.pt"], "--checkpoint /nonexistent/fp.pt: file not found"),
        (["--hw", "a100", "--group-size", "0"], "--group-size: expected a positive integer"),
        (["--hw", "a100", "--method", "magic"], "--method: unknown method 'magic'"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if "argument" in needle else _no_raise() as exc:
        code = main(["search", *args, *TINY])
    code = exc.value.code if exc is not None and hasattr(exc, "value") else code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("result.json"))


class _no_raise:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_python_dash_m_hwsbs_is_the_command():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "hwsbs", "profiles", "list"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "a100" in done.stdout
