"""``hwsbs tune``, ``pareto`` and ``report`` end to end, with tiny inner schedules."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hwsbs.cli.main import main
from hwsbs.cli.pareto import parse_hw_spec
from hwsbs.tuning import hypervolume
from hwsbs.tuning.attrs import read_trial_attrs
from tests.helpers import hwsbs_command

TINY = ["--subset", "128", "--pretrain-epochs", "1", "--search-epochs", "1", "--finetune-epochs", "1", "--no-progress"]
# enough search steps, and strong enough cost pressure, for trials to differ in cost and accuracy
SHORT = [
    "--subset",
    "256",
    "--batch-size",
    "32",
    "--pretrain-epochs",
    "2",
    "--search-epochs",
    "2",
    "--finetune-epochs",
    "1",
    "--no-progress",
]
SPACE = """\
lam: {low: 0.5, high: 30, log: true}
threshold_lr: {low: 0.1, high: 0.5, log: true}
group_size: {choices: [4, 8]}
bits: {choices: ["2,4,8", "1,2,4,8"]}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _study(out: Path, name: str | None = None) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=f"sqlite:///{out / 'study.db'}", sampler=optuna.samplers.RandomSampler(seed=0)
    )


def _brute_force_front(study: optuna.Study) -> set[int]:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]

    def key(t):  # all minimised
        return [-t.values[0], *t.values[1:]]

    return {
        t.number
        for t in complete
        if not any(all(a <= b for a, b in zip(key(o), key(t))) and key(o) != key(t) for o in complete)
    }


@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    (root / "space.yaml").write_text(SPACE)
    out = root / "study"
    code = main(
        [
            "pareto",
            "--hw",
            "a100",
            "--cost",
            "bops",
            "--hw",
            "a100:size",
            "--trials",
            "4",
            "--space",
            str(root / "space.yaml"),
            "--out",
            str(out),
            "--seed",
            "1",
            *SHORT,
        ]
    )
    assert code == 0
    return out


def test_pareto_writes_every_artefact(pareto_run):
    out = pareto_run
    for name in ("study.db", "pareto.json", "pareto.png", "fp_model.pt"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").stat().st_size > 5000
    study = _study(out)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == (out / "trials" / f"trial-{t.number}").resolve()
        for name in ("config.yaml", "result.json", "layers.png"):
            assert (run_dir / name).is_file()
        result = json.loads((run_dir / "result.json").read_text())
        assert t.values[0] == pytest.approx(result["accuracy"]["compressed"])
        assert t.values[1] == pytest.approx(result["cost"]["compressed"])  # a100:bops, the primary
        assert t.values[2] == pytest.approx(result["extra_costs"]["a100:size"]["compressed"])
        got = read_trial_attrs(t.user_attrs)
        assert set(got["costs"]) == {"a100:bops", "a100:size"}
        assert sum(got["weights"].values()) == pytest.approx(1.0)
        assert all(isinstance(v, bool | int | float | str) for v in t.user_attrs.values())  # dashboard-sortable


def test_pareto_json_holds_exactly_the_non_dominated_trials(pareto_run):
    study = _study(pareto_run)
    data = json.loads((pareto_run / "pareto.json").read_text())
    front = {entry["number"] for entry in data["front"]}
    assert front == _brute_force_front(study)
    assert front == {t.number for t in study.best_trials}
    assert [o["name"] for o in data["objectives"]] == ["accuracy", "a100:bops", "a100:size"]
    for entry in data["front"]:
        trial = study.trials[entry["number"]]
        assert entry["params"] == trial.params
        assert entry["accuracy"]["compressed"] == pytest.approx(trial.values[0])
        assert Path(entry["config"]).is_file()
    points = [
        (-e["accuracy"]["compressed"], e["cost_vs_uniform_8bit"]["a100:bops"], e["cost_vs_uniform_8bit"]["a100:size"])
        for e in data["front"]
    ]
    assert data["hypervolume"]["value"] == pytest.approx(hypervolume(points, (0.0, 1.1, 1.1)))
    assert data["hypervolume"]["value"] > 0


def test_report_regenerates_from_storage_alone(pareto_run, tmp_path, capsys):
    url = f"sqlite:///{pareto_run / 'study.db'}"
    assert main(["report", "--storage", url, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "pareto.json").read_text())
    first = json.loads((pareto_run / "pareto.json").read_text())
    assert again["front"] == first["front"] and again["hypervolume"] == first["hypervolume"]
    assert (tmp_path / "again" / "pareto.png").is_file()
    assert not (tmp_path / "again" / "pareto.html").exists() or _has_plotly()
    assert "hypervolume" in capsys.readouterr().out
    assert main(["report", "--storage", url, "--study-name", "nope"]) == 2
    assert "no such study" in capsys.readouterr().err


def _has_plotly() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def test_rerunning_tune_continues_the_same_study(tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["tune", "--hw", "a100", "--cost", "bops", "--target", "60%", "--out", str(out), *TINY]
    assert main([*args, "--trials", "3"]) == 0
    before = [(t.number, t.params, t.values, t.datetime_complete) for t in _study(out).trials]
    assert len(before) == 3
    assert main([*args, "--trials", "6"]) == 0
    trials = _study(out).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [(t.number, t.params, t.values, t.datetime_complete) for t in trials[:3]] == before
    assert all("constraint" in t.user_attrs and t.constraints for t in trials)
    assert main([*args, "--trials", "6"]) == 0  # nothing left to do
    assert len(_study(out).trials) == 6
    report = json.loads((out / "pareto.json").read_text())
    if report["best"] is not None:
        best_trial = json.loads((out / "best" / "trial.json").read_text())
        assert best_trial["number"] == report["best"] and best_trial["feasible"]
        assert (out / "best" / "config.yaml").is_file() and (out / "best" / "result.json").is_file()
    assert "best feasible" in capsys.readouterr().out or report["best"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "--hw", "a100", "--trials", "0"], "--trials: expected a positive integer"),
        (["tune", "--hw", "no-such-profile", "--trials", "2"], "no-such-profile"),
        (["pareto", "--hw", "a100", "--hw", "a100", "--trials", "2"], "appears twice"),
        (["tune", "--hw", "a100", "--trials", "2", "--storage", "study.txt"], "expected an Optuna storage URL"),
        (["tune", "--hw", "a100", "--trials", "2", "--target", "-3"], "--target"),
        (["tune", "--hw", "a100", "--trials", "2", "--space", "missing.yaml"], "missing.yaml: file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "s"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_hw_specs():
    assert (parse_hw_spec("a100:size").hw, parse_hw_spec("a100:size").cost) == ("a100", "size")
    assert parse_hw_spec("a100", "bops").cost == "bops"
    assert parse_hw_spec("a100").cost is None
    assert (parse_hw_spec("profiles/my.yaml:energy").hw, parse_hw_spec("profiles/my.yaml:energy").cost) == (
        "profiles/my.yaml",
        "energy",
    )
    assert parse_hw_spec("profiles/my.yaml").hw == "profiles/my.yaml"
    assert parse_hw_spec(r"C:\hw\my.yaml").hw == r"C:\hw\my.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_share_one_study(tmp_path, storage):
    out = tmp_path / "study"
    extra = [] if storage == "sqlite" else ["--storage", f"journal:{tmp_path / 'study.log'}"]
    cmd = hwsbs_command("tune", "--hw", "a100", "--cost", "bops", "--trials", "6", "--out", str(out), *extra, *TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    if storage == "sqlite":
        study = _study(out)
    else:
        study = optuna.load_study(
            study_name="tune-a100-bops",
            storage=optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
            ),
        )
    trials = study.trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # no duplicated configuration
    assert len({t.user_attrs["run_dir"] for t in trials}) == 6
    ran = [sum(1 for line in err.splitlines() if line.startswith("trial ")) for _, err in outputs]
    assert sum(ran) == 6 and min(ran) >= 1  # both workers did part of the work
