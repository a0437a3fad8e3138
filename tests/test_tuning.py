"""hwsbs.tuning: search space, hypervolume, front, storages, seeded samplers, failing and lost trials."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time

import optuna
import pytest
from optuna.trial import TrialState

import hwsbs.tuning.storage as storage_mod
import hwsbs.tuning.study as study_mod
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.pipeline import Objective
from hwsbs.tuning import StudySettings, TuningSpace, collect, hypervolume, non_dominated, run_study, write_report
from hwsbs.tuning.samplers import make_sampler
from hwsbs.tuning.storage import load_study, open_storage
from hwsbs.tuning.study import counted_trials

TINY = dict(subset=128, batch_size=64, pretrain_epochs=1, search_epochs=1, finetune_epochs=1, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- search space -------------------------------------------------------------------------


def test_default_space_samples_valid_search_options():
    space = TuningSpace.default()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(6):
        trial = study.ask()
        sample = space.sample(trial, ["a100:roofline"])
        cfg = SearchConfig(**sample.options)  # every sample is a valid configuration
        assert cfg.bits in ((2, 4, 8), (1, 2, 4, 8))
        assert cfg.group_size in (2, 4, 8)
        assert 0.01 <= cfg.lam <= 10 and 0.5 <= cfg.temperature <= 2 and 0.01 <= cfg.threshold_lr <= 0.5
        assert sample.weights == [1.0]
        study.tell(trial, 0.0)


def test_space_file_with_fixed_values_and_weights(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "lam: {low: 0.1, high: 5, log: true}\n"
        "bits: {choices: [[2, 4, 8], '1,2,4,8']}\n"
        "search_epochs: {low: 1, high: 3}\n"
        "search_lr: 0.02\n"
        "prune: {choices: [true, false]}\n"
        "weight: {low: 0.2, high: 1.0}\n"
    )
    space = TuningSpace.from_file(path)
    assert space.to_dict()["bits"] == {"choices": ["2,4,8", "1,2,4,8"]}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sample = space.sample(trial, ["a100:bops", "a100:size", "t4:roofline"])
    assert sample.options["search_lr"] == 0.02 and isinstance(sample.options["search_epochs"], int)
    assert sample.options["bits"] in ((2, 4, 8), (1, 2, 4, 8))
    assert sum(sample.weights) == pytest.approx(1.0) and len(sample.weights) == 3
    assert set(trial.params) == {
        "lam",
        "bits",
        "search_epochs",
        "prune",
        "weight:a100:bops",
        "weight:a100:size",
        "weight:t4:roofline",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr_typo: {low: 1, high: 2}", "unknown parameter 'lr_typo'"),
        ("lam: {low: 2, high: 1}", "low must be below high"),
        ("lam: {low: 0, high: 1, log: true}", "lam: a log range needs low > 0"),
        ("lam: {low: -1, high: 1}", "lam: low: --lambda: expected a number >= 0"),
        ("temperature: {low: 0, high: 1, log: true}", "temperature: low"),
        ("bits: {choices: ['2,3']}", "each bit width must double"),
        ("group_size: {low: 1.5, high: 4}", "expected an integer"),
        ("group_size: {choices: [4, 4]}", "duplicate choices"),
        ("prune: {low: 0, high: 1}", "cannot take a range"),
        ("lam: {low: 0.1, high: 1, spread: 2}", "unknown key(s) spread"),
        ("lam: {choices: []}", "non-empty list"),
        ("lam: {low: 0.1, high: 1, step: 0.1, log: true}", "step and log"),
        ("lam: {value: 1, low: 0}", "'value' fixes the parameter"),
        ("max_prune_fraction: 1.5", "max-prune-fraction"),
        ("weight: {low: -1, high: 1}", "weight must be >= 0"),
        ("[1, 2]", "expected a mapping"),
        ("lam: [oops", "invalid YAML"),
    ],
)
def test_bad_space_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        TuningSpace.from_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


# --- front and hypervolume ------------------------------------------------------------------


def test_non_dominated_matches_brute_force():
    rng = random.Random(1)
    vectors = [(rng.randint(0, 5), rng.randint(0, 5), rng.randint(0, 5)) for _ in range(40)]
    expected = [
        i for i, v in enumerate(vectors) if not any(all(a <= b for a, b in zip(w, v)) and w != v for w in vectors)
    ]
    assert non_dominated(vectors) == expected


def test_hypervolume_exact_small_cases():
    assert hypervolume([(-0.5, 0.5)], (0.0, 1.1)) == pytest.approx(0.5 * 0.6)
    # two 2-D boxes overlapping in [-0.5, 0] x [0.5, 1]: 0.9*0.5 + 0.5*0.8 - 0.5*0.5
    assert hypervolume([(-0.9, 0.5), (-0.5, 0.2)], (0.0, 1.0)) == pytest.approx(0.45 + 0.4 - 0.25)
    # 3-D inclusion-exclusion of two boxes
    a, b, ref = (-1.0, 0.2, 0.6), (-0.5, 0.6, 0.2), (0.0, 1.0, 1.0)
    box = [r - x for x, r in zip(a, ref)]
    box_b = [r - x for x, r in zip(b, ref)]
    inter = [r - max(x, y) for x, y, r in zip(a, b, ref)]
    expected = box[0] * box[1] * box[2] + box_b[0] * box_b[1] * box_b[2] - inter[0] * inter[1] * inter[2]
    assert hypervolume([a, b], ref) == pytest.approx(expected)
    assert hypervolume([(0.5, 0.5)], (0.0, 1.0)) == 0.0  # outside the reference box
    assert hypervolume([], (0.0, 1.0)) == 0.0


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_agrees_with_optuna(dims):
    np = pytest.importorskip("numpy")
    wfg = pytest.importorskip("optuna._hypervolume")
    rng = random.Random(dims)
    points = [tuple(rng.random() for _ in range(dims)) for _ in range(25)]
    ref = (1.1,) * dims
    expected = wfg.compute_hypervolume(np.array(points), np.array(ref))
    assert hypervolume(points, ref) == pytest.approx(expected, rel=1e-9)


# --- storages and samplers ------------------------------------------------------------------


def test_open_storage_forms(tmp_path):
    assert isinstance(open_storage(f"journal:{tmp_path / 'j' / 'study.log'}"), optuna.storages.JournalStorage)
    storage = open_storage(str(tmp_path / "plain.db"))
    assert isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None
    with pytest.raises(ConfigError, match="expected an Optuna storage URL"):
        open_storage(str(tmp_path / "study.txt"))
    with pytest.raises(ConfigError, match="journal file path is missing"):
        open_storage("journal:")
    with pytest.raises(ConfigError, match=r"postgresql://u:\*\*\*@"):
        open_storage("postgresql://u:secret@127.0.0.1:1/none")


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random"])
def test_samplers_are_seeded_per_trial_number(name):
    def draw(seed: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(name, seed), directions=["maximize", "minimize"])
        out = []
        for _ in range(4):
            trial = study.ask()
            out.append(trial.suggest_float("x", 0, 1))
            study.tell(trial, [out[-1], 1 - out[-1]])
        return out

    first, again, other = draw(5), draw(5), draw(6)
    assert first == again and first != other
    assert len(set(first)) == 4  # trial numbers differ, so do their draws
    with pytest.raises(ConfigError, match="--sampler"):
        make_sampler("cmaes", 0)


def test_counted_trials_skip_surplus_and_lost():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for attrs, state in (
        ({}, TrialState.COMPLETE),
        ({"fail_reason": "x"}, TrialState.FAIL),
        ({"lost": True}, TrialState.FAIL),
        ({"surplus": True}, TrialState.PRUNED),
        ({}, TrialState.FAIL),
    ):
        study.add_trial(
            optuna.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None, user_attrs=attrs)
        )
    study.set_user_attr("lost:4", "worker stopped")
    assert counted_trials(study) == 2
    assert counted_trials(study, before=1) == 1


# --- real (tiny) studies --------------------------------------------------------------------


def test_diverging_trial_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    real = study_mod.run_search

    def diverge_trial_1(cfg, **kwargs):
        if cfg.out.endswith("trial-1"):  # a genuinely diverging search: absurd weight learning rate
            cfg = dataclasses.replace(cfg, search_lr=1e30)
        return real(cfg, **kwargs)

    monkeypatch.setattr(study_mod, "run_search", diverge_trial_1)
    run = run_study(StudySettings(SearchConfig(**TINY), [Objective("a100", "bops")], n_trials=3, out=tmp_path / "s"))
    states = [t.state for t in run.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    failed = run.study.trials[1]
    assert failed.user_attrs["fail_reason"].startswith("SearchDivergedError")
    assert failed.user_attrs["run_dir"].endswith("trial-1")
    report = collect(run.study)
    assert 1 not in {t.number for t in report.front}
    assert report.best is not None and report.best.number in (0, 2)
    written = {p.name for p in write_report(report, run.out_dir)}
    assert {"pareto.json", "pareto.png", "best"} <= written
    assert (run.out_dir / "best" / "config.yaml").is_file()
    # Workers of one study share its output directory and write the report as each finishes:
    # simultaneous writers must neither fail nor leave temporary files (a CI run once lost a
    # worker to a shared temporary name).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(write_report, report, run.out_dir) for _ in range(12)]:
            future.result()
    assert json.loads((run.out_dir / "pareto.json").read_text())["best"] == report.best.number
    assert not [f for f in run.out_dir.rglob("*.tmp")]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_running_trial_of_a_killed_worker_is_failed_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_PERIOD_S", 1)
    out = tmp_path / "s"
    first = run_study(StudySettings(SearchConfig(**TINY), [Objective("a100", "bops")], n_trials=1, out=out))
    # a worker that started trial 1 and died: a RUNNING trial whose heartbeat stopped
    storage = open_storage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(
        study_name=first.study.study_name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    dead = study.ask()
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    run = run_study(StudySettings(SearchConfig(**TINY), [Objective("a100", "bops")], n_trials=2, out=out))
    states = {t.number: t.state for t in run.study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE}
    assert "no heartbeat" in run.study.user_attrs["lost:1"]
    assert run.new_trials == 1 and counted_trials(run.study) == 2
    assert collect(run.study).trials[1].fail_reason.startswith("worker stopped")


def test_continuing_with_other_options_is_refused(tmp_path):
    base = SearchConfig(**TINY)
    settings = StudySettings(base, [Objective("a100", "bops")], n_trials=1, out=tmp_path / "s")
    run_study(settings)
    changed = StudySettings(
        SearchConfig(**{**TINY, "search_epochs": 2}), [Objective("a100", "bops")], n_trials=2, out=tmp_path / "s"
    )
    with pytest.raises(ConfigError, match="different base .*search_epochs: 1 -> 2"):
        run_study(changed)
    with pytest.raises(ConfigError, match="different target"):
        run_study(StudySettings(base, [Objective("a100", "bops")], n_trials=2, out=tmp_path / "s", target="30%"))
    assert len(list(itertools.chain((tmp_path / "s" / "trials").iterdir()))) == 1
    (tmp_path / "s" / "study.db").unlink()  # the storage is gone, the trial directories are not
    with pytest.raises(ConfigError, match="holds the trials of another study"):
        run_study(settings)


def test_journal_trial_failed_by_hand_and_marked_lost_is_replaced(tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    settings = StudySettings(
        SearchConfig(**TINY), [Objective("a100", "bops")], n_trials=1, storage=url, study_name="j", out=tmp_path / "s"
    )
    run_study(settings)
    study = load_study(url, "j")
    dead = study.ask()  # a killed worker's trial: journal storages have no heartbeat
    study.tell(dead.number, state=TrialState.FAIL)
    study.set_user_attr(f"lost:{dead.number}", "worker killed")
    run = run_study(dataclasses.replace(settings, n_trials=2, out=None))  # the study remembers its directory
    assert run.out_dir == (tmp_path / "s").resolve()
    assert [t.state for t in run.study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    with pytest.raises(ConfigError, match="no such file"):
        load_study(f"journal:{tmp_path / 'missing.log'}")
    with pytest.raises(ConfigError, match="no such study"):
        load_study(url, "other")


def test_dashboard_reads_metric_names_scalar_attrs_and_intermediate_values(tmp_path):
    from hwsbs.tuning.attrs import read_trial_attrs

    settings = StudySettings(
        SearchConfig(**TINY, seed=0),
        [Objective("a100", "bops")],
        n_trials=1,
        target="60%",
        out=tmp_path / "study",
        study_name="dash",
    )
    run = run_study(settings)
    assert run.study.metric_names == ["accuracy"]
    trial = run.study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert all(isinstance(v, bool | int | float | str) for v in trial.user_attrs.values())
    assert trial.user_attrs["accuracy"] == pytest.approx(trial.values[0])
    assert 0 < trial.user_attrs["vs_uniform_8bit/a100:bops"] <= 0.6 * 1.02  # within the inner budget
    assert len(trial.intermediate_values) == TINY["search_epochs"]  # one per search epoch
    got = read_trial_attrs(trial.user_attrs)
    assert got["costs"]["a100:bops"]["unit"] == "BOPs" and got["options"] and got["constraint"] is not None


def test_trial_attrs_of_studies_before_the_flat_layout_still_read():
    from hwsbs.tuning.attrs import read_trial_attrs, trial_result_attrs, trial_sample_attrs

    accuracy = {"compressed": 0.9, "full_precision": 0.95}
    costs = {
        "a100:bops": {"compressed": 1.0, "uniform_8bit": 4.0, "full_precision": 16.0, "unit": "BOPs", "metric": "bops"}
    }
    old = {"accuracy": accuracy, "costs": costs, "options": {"lam": 0.1, "bits": [2, 4, 8]}, "constraint": [-0.5]}
    flat = {
        **trial_result_attrs(accuracy, costs),
        **trial_sample_attrs({"lam": 0.1, "bits": [2, 4, 8]}, {}),
        "constraint": -0.5,
    }
    assert read_trial_attrs(old) == read_trial_attrs(flat)
    assert flat["vs_uniform_8bit/a100:bops"] == 0.25 and flat["option_json/bits"] == "[2, 4, 8]"
