"""Several ``hwsbs tune`` workers on one PostgreSQL study: N trials in total, none lost, none twice.

Needs a server: ``HWSBS_TEST_POSTGRES_URL``, or ``.ci/postgres.sh`` (see tests/conftest.py);
skipped, with the reason, where none can start (``pytest -rs``). The same on SQLite and on a
journal file: tests/test_tuning_cli.py::test_two_workers_share_one_study.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hwsbs.cli.main import main
from tests.helpers import hwsbs_command

TINY = ["--subset", "64", "--pretrain-epochs", "0", "--search-epochs", "1", "--finetune-epochs", "0", "--no-progress"]


@pytest.fixture
def study_name(postgres_url: str):
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=postgres_url)
    except KeyError:
        pass


@pytest.mark.slow
def test_three_workers_run_n_trials_in_total(postgres_url, study_name, tmp_path):
    n, out = 6, tmp_path / "study"
    study = ["--storage", postgres_url, "--study-name", study_name, "--sampler", "random"]
    cmd = hwsbs_command("tune", "--hw", "a100", "--cost", "bops", "--trials", str(n), *study, "--out", str(out), *TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err[-2000:] for _, err in outputs]

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n, [t.state for t in trials]  # none lost
    # a slot two workers asked for at the same moment: the later one is pruned unrun, not run twice
    assert all(t.state == TrialState.PRUNED and t.user_attrs.get("surplus") for t in trials if t not in complete)
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == n  # no configuration twice
    run_dirs = {t.user_attrs["run_dir"] for t in complete}
    assert run_dirs == {str((out / "trials" / f"trial-{t.number}").resolve()) for t in complete}
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(Path(d).name for d in run_dirs)
    for t in complete:
        result = json.loads((Path(t.user_attrs["run_dir"]) / "result.json").read_text())
        assert t.values[0] == pytest.approx(result["accuracy"]["compressed"])
    ran = [
        sum(1 for line in err.splitlines() if line.startswith("trial ") and ": accuracy" in line) for _, err in outputs
    ]
    assert sum(ran) == n and sum(1 for r in ran if r) >= 2, ran  # each trial ran once, work shared out


def test_wrong_password_is_one_line_and_masked(postgres_url, tmp_path, capsys):
    bad = postgres_url.replace("@", "x@", 1) if ":" in postgres_url.split("//", 1)[1].split("@")[0] else postgres_url
    secret = bad.split("//", 1)[1].split("@")[0].split(":", 1)[-1]
    code = main(["tune", "--hw", "a100", "--trials", "1", "--storage", bad, "--out", str(tmp_path / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--storage postgresql+psycopg2://postgres:***@" in err and "cannot open" in err
    assert secret not in err
    assert not (tmp_path / "out").exists()


def test_report_never_writes_the_password(postgres_url, study_name, tmp_path, capsys):
    secret = postgres_url.split("//", 1)[1].split("@")[0].split(":", 1)[1]
    args = ["--storage", postgres_url, "--study-name", study_name]
    assert main(["tune", "--hw", "a100", "--trials", "1", *args, "--out", str(tmp_path / "study"), *TINY]) == 0
    assert main(["report", *args, "--out", str(tmp_path / "report")]) == 0
    out, err = capsys.readouterr()
    assert secret not in out + err
    for path in [*(tmp_path / "study").rglob("*.json"), *(tmp_path / "report").rglob("*.json")]:
        assert secret not in path.read_text(), path
