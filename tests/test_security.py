"""Hardening against hostile or broken inputs: code named by data, callables that are not models,
YAML bombs, special files, and checkpoints with the wrong content. The CLI side (one line, exit
code 2, nothing written) of each class is in ``tests/test_bad_input.py``; these tests pin the
mechanisms down."""

from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from hardware_profiles import load_profile
from hardware_profiles.checked_io import checked_file, open_checked, read_checked_bytes, read_checked_json
from hardware_profiles.yaml_io import MAX_ALIASES, MAX_DEPTH, load_yaml, load_yaml_text
from hwsbs.checkpoint import load_checkpoint, load_model_state, load_state_dict_file, load_torch_file, save_checkpoint
from hwsbs.cli.main import main
from hwsbs.errors import CheckpointError, ConfigError, ModelError, ProfileError
from hwsbs.export import EXPORT_FORMAT, load_exported, load_run
from hwsbs.models import build_model
from tests.helpers import tiny_argv

GEOMETRY = (10, 1, (8, 8))

# ---------------------------------------------------------------------------------------------
# 1. A run directory is data: its options.json cannot make hwsbs import code


@pytest.fixture
def sentinel_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module that leaves a marker file when imported, on sys.path."""
    marker = tmp_path / "imported.marker"
    name = f"sentinel_factory_{os.getpid()}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from torch import nn
        Path({str(marker)!r}).write_text("imported")

        def build(num_classes=10, in_channels=1):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
    """),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    yield name, marker
    sys.modules.pop(name, None)


def _code_run_dir(root: Path, model: str) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "options.json").write_text(json.dumps({"model": model, "data": "digits"}), encoding="utf-8")
    (run / "config.yaml").write_text(
        "format: hwsbs-config/1\nlayers:\n- name: '1'\n  w_bits: 8\n  a_bits: 8\n  shape: {kind: linear, "
        "in_channels: 64, out_channels: 10, kernel_size: [1, 1], stride: [1, 1], groups: 1, in_size: [1, 1], "
        "out_size: [1, 1]}\n",
        encoding="utf-8",
    )
    torch.save({}, run / "checkpoint.pt")
    return run


def test_a_run_directory_cannot_choose_code_to_import(sentinel_module, tmp_path, capsys):
    name, marker = sentinel_module
    run = _code_run_dir(tmp_path, f"{name}:build")
    before = sorted(p.name for p in run.iterdir())
    assert main(["export", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{run}/options.json: model '{name}:build' is code to import" in err
    assert f"pass --model {name}:build yourself" in err
    assert not marker.exists() and name not in sys.modules
    assert sorted(p.name for p in run.iterdir()) == before
    # the user naming the factory on the command line is allowed to run it
    main(["export", "--run", str(run), "--model", f"{name}:build", "--out", str(tmp_path / "m.pt")])
    capsys.readouterr()
    assert marker.exists()


def test_load_run_does_not_import_what_options_json_names(sentinel_module, tmp_path):
    name, marker = sentinel_module
    run = _code_run_dir(tmp_path, f"{name}:build")
    with pytest.raises(
        ConfigError, match=rf"options.json: model '{name}:build' is code to import, which a run directory"
    ):
        load_run(run)
    assert not marker.exists() and name not in sys.modules
    with pytest.raises((CheckpointError, ModelError)):  # named by the caller: imported (this run does not fit it)
        load_run(run, model=f"{name}:build")
    assert marker.exists()


def test_load_run_reads_weights_like_every_checkpoint(tmp_path):
    run = _code_run_dir(tmp_path, "small_cnn")
    state = build_model("small_cnn", *GEOMETRY).state_dict()
    state["fc.bias"][0] = float("nan")
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: tensor 'fc.bias' holds 1 non-finite value"):
        load_run(run)
    save_checkpoint(_state(), run)
    with pytest.raises(CheckpointError, match="the run stopped in phase 'search'; finish it"):
        load_run(run)
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"w": _Gadget()}, protocol=2))
    with pytest.raises(CheckpointError, match=rf"refusing to load global {os.system.__module__}\.system"):
        load_run(run)


def _export_file(path: Path, **overrides) -> Path:
    data = {
        "format": EXPORT_FORMAT,
        "spec": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": [8, 8]},
        "backend": "float",
        "layers": [],
        "norms": {},
        "state": {},
        "info": {},
        **overrides,
    }
    torch.save(data, path)
    return path


def test_load_exported_reads_with_weights_only_and_imports_nothing_it_names(sentinel_module, tmp_path):
    name, marker = sentinel_module
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": _Gadget()}, protocol=2))
    with pytest.raises(
        CheckpointError, match=rf"evil.pt: cannot read export \(refusing to load global {os.system.__module__}"
    ):
        load_exported(tmp_path / "evil.pt")
    spec = {"name": f"{name}:build", "num_classes": 10, "in_channels": 1, "image_size": [8, 8]}
    path = _export_file(tmp_path / "code.pt", spec=spec)
    with pytest.raises(
        ModelError,
        match=rf"code.pt: model '{name}:build' is code to import, which an export file cannot "
        rf"choose; if you trust it, pass model='{name}:build'",
    ):
        load_exported(path)
    assert not marker.exists() and name not in sys.modules
    path = _export_file(tmp_path / "partial.pt")
    data = torch.load(path, weights_only=True)
    del data["norms"], data["state"]
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="partial.pt: not a complete hwsbs export: missing norms, state"):
        load_exported(path)
    bad = {"w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(CheckpointError, match=r"nan.pt: state: tensor 'w' holds 1 non-finite value"):
        load_exported(_export_file(tmp_path / "nan.pt", state=bad))


def test_a_run_directory_may_name_a_built_in_model_or_nothing_unknown(tmp_path, capsys):
    run = _code_run_dir(tmp_path, "nosuchnet")
    assert main(["export", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "options.json: model: unknown model 'nosuchnet'; known: " in err and err.count("\n") == 1
    (run / "options.json").write_text(json.dumps({"model": ["small_cnn"]}), encoding="utf-8")
    assert main(["export", "--run", str(run)]) == 2
    assert "options.json: model: expected a model name, got ['small_cnn']" in capsys.readouterr().err
    (run / "options.json").write_text("[1, 2]", encoding="utf-8")
    assert main(["export", "--run", str(run)]) == 2
    assert "options.json: expected a JSON object (the run's options), got list" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 2. --model MOD:ATTR calls only model classes and Python functions of the user's modules


@pytest.mark.parametrize(
    "spec",
    [
        "builtins:exit",
        "os:fork",
        "builtins:input",
        "os:system",
        "subprocess:run",
        "shutil:rmtree",
        "sys:exit",
        "posix:fork",
        "_sitebuiltins:Quitter",
        "hwsbs.cli.main:main",
        "antigravity:geohash",
    ],
)
def test_standard_library_and_hwsbs_callables_are_refused_before_anything_runs(spec, monkeypatch):
    monkeypatch.setattr("sys.stdin", None)  # builtins:input would fail differently if it were called
    imported = set(sys.modules)
    with pytest.raises(ModelError, match=r"is part of Python or hwsbs, not a module of models"):
        build_model(spec, *GEOMETRY)
    assert "antigravity" not in set(sys.modules) - imported


@pytest.fixture
def factories(tmp_path, monkeypatch) -> str:
    name = f"user_factories_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
        import sys
        from os import system
        from shutil import rmtree
        from torch import nn

        class Net(nn.Module):
            def __init__(self, num_classes=10, in_channels=1, image_size=(8, 8)):
                super().__init__()
                self.fc = nn.Linear(in_channels * image_size[0] * image_size[1], num_classes)

        class NotAModule:
            pass

        class Instance:
            def __call__(self, num_classes=10):
                return nn.Linear(4, num_classes)

        instance = Instance()
        calls = []

        def positional(num_classes, in_channels, image_size):
            calls.append((num_classes, in_channels, image_size))
            return nn.Linear(in_channels, num_classes)

        def no_arguments():
            return nn.Linear(4, 2)

        def only_kwargs(**kwargs):
            calls.append(kwargs)
            return nn.Linear(4, 2)

        def needs_more(num_classes, depth):
            return nn.Linear(4, num_classes)

        def exits(num_classes=10):
            sys.exit(0)

        def raises_base(num_classes=10):
            raise BaseException("odd")

        def raises_value(num_classes=10):
            raise ValueError("bad width\\nsecond line")

        def returns_int(num_classes=10):
            return 42

        def interrupted(num_classes=10):
            raise KeyboardInterrupt

        class ExitingNet(nn.Module):
            def __init__(self, num_classes=10):
                super().__init__()
                self.fc = nn.Linear(64, num_classes)

            def forward(self, x):
                sys.exit(0)
    """),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("attr", "needle"),
    [
        (
            "system",
            "'system' is a built-in function; a factory must be an nn.Module subclass or a function defined in Python",
        ),
        ("rmtree", "'rmtree' is a function of 'shutil', not a model factory"),
        ("NotAModule", "'NotAModule' is the class NotAModule, not an nn.Module subclass"),
        ("instance", "'instance' is an object of type Instance; a factory must be"),
        ("needs_more", "the factory needs a parameter 'depth'; hwsbs passes only num_classes, in_channels, image_size"),
        ("exits", "the factory raised SystemExit"),
        ("raises_base", "the factory raised BaseException: odd"),
        ("raises_value", "the factory raised ValueError: bad width second line"),
        ("returns_int", "the builder returned int, not an nn.Module"),
        ("missing", "has no callable 'missing'"),
    ],
)
def test_factories_that_are_not_models_are_model_errors(factories, attr, needle):
    with pytest.raises(ModelError) as info:
        build_model(f"{factories}:{attr}", *GEOMETRY)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_model_factories_get_the_geometry_they_name(factories):
    mod = sys.modules.get(factories) or __import__(factories)
    assert isinstance(build_model(f"{factories}:Net", *GEOMETRY), nn.Module)
    assert build_model(f"{factories}:positional", *GEOMETRY).out_features == 10
    assert mod.calls[-1] == GEOMETRY
    assert isinstance(build_model(f"{factories}:no_arguments", *GEOMETRY), nn.Linear)
    build_model(f"{factories}:only_kwargs", *GEOMETRY)
    assert mod.calls[-1] == {}  # **kwargs: nothing is guessed
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops hwsbs
        build_model(f"{factories}:interrupted", *GEOMETRY)


def test_a_factory_calling_sys_exit_does_not_end_the_command_silently(factories, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def search(model: str) -> tuple[int, str]:
        """Exit code and stderr of a search of ``factories:model`` (the default schedule: it fails first)."""
        code = main(
            tiny_argv("search", "--model", f"{factories}:{model}", "--out", str(cwd / "out"), subset=64, epochs=None)
        )
        return code, capsys.readouterr().err

    code, err = search("exits")
    assert code == 2 and err.count("\n") == 1 and "the factory raised SystemExit" in err
    assert list(cwd.iterdir()) == []
    # a model whose forward exits: still one line and exit code 2, not a silent exit 0
    code, err = search("ExitingNet")
    assert code == 2 and err == (
        "hwsbs search: error: user code (a --model or a cost-model plugin) called sys.exit(0) during the command\n"
    )


# ---------------------------------------------------------------------------------------------
# 3. YAML: aliases, nesting, keys and integers are bounded


def test_a_few_aliases_are_fine_but_not_more_than_the_limit():
    doc = "base: &b {x: 1}\n" + "".join(f"k{i}: *b\n" for i in range(MAX_ALIASES))
    assert load_yaml_text(doc)["k0"] == {"x": 1}
    with pytest.raises(ConfigError, match=f"line {MAX_ALIASES + 2}: invalid YAML: more than {MAX_ALIASES} aliases"):
        load_yaml_text(doc + "one_more: *b\n")


def test_aliases_expanding_to_many_nodes_are_refused_cheaply():
    doc = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ["lol"] * 9) + "]\n" for i in range(9))
    with pytest.raises(ConfigError, match="aliases expand to more than 10000 nodes"):
        load_yaml_text(doc, "laughs.yaml")
    with pytest.raises(ConfigError, match="recursive"):
        load_yaml_text("a: &a [1, *a]\n")


def test_nesting_is_bounded_also_through_aliases():
    assert load_yaml_text("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml_text("{a: " * 20000 + "}" * 20000)
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    with pytest.raises(ConfigError, match="through alias"):
        load_yaml_text(f"a: &a {deep}\nb: [[*a]]\n")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("? [a, b]\n: 1\n", "a mapping key must be a plain value, not a sequence"),
        ("{? {a: 1} : 2}\n", "a mapping key must be a plain value, not a mapping"),
        ("n: " + "7" * 100_000 + "\n", "integer of 100000 characters (at most 40)"),
        ("n: 0x" + "f" * 1000 + "\n", "integer of 1002 characters"),
        ("n: " + ":".join(["59"] * 2000) + "\n", "integer of 5999 characters"),
        ("d: 2001-13-45\n", "'2001-13-45' is not a valid timestamp"),
        ("f: !!float nope\n", "'nope' is not a valid float"),
        ("x: !!python/object/apply:os.system [echo]\n", "could not determine a constructor"),
    ],
)
def test_yaml_that_pyyaml_would_crash_on_or_misread_is_one_line(text, needle):
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "f.yaml")
    assert str(info.value).startswith("f.yaml: line 1: invalid YAML: ") and needle in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# 4. Only regular files of bounded size are read


def test_special_files_are_refused_without_blocking(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.json")
    os.mkfifo(tmp_path / "pipe.yaml")
    with pytest.raises(
        ConfigError, match=r"zero.json: file is a character device, not a regular file \(.* -> /dev/zero\)"
    ):
        read_checked_json(tmp_path / "zero.json")
    done = threading.Event()

    def read_fifo() -> None:
        with pytest.raises(ConfigError, match="pipe.yaml: file is a FIFO"):
            load_yaml(tmp_path / "pipe.yaml")
        done.set()

    worker = threading.Thread(target=read_fifo, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "reading a FIFO blocked"
    with pytest.raises(ConfigError, match="is a directory"):
        checked_file(tmp_path)
    with pytest.raises(ProfileError, match="pipe.yaml: hardware profile file is a FIFO"):
        load_profile(tmp_path / "pipe.yaml")


def test_size_limits(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" * 100)
    assert read_checked_bytes(path, limit=500) == b"a: 1\n" * 100
    with pytest.raises(ConfigError, match=r"big.yaml: file is too large \(500 bytes; at most 499 are read\)"):
        read_checked_bytes(path, limit=499)
    with open_checked(path, limit=500) as fh:
        assert fh.read(4) == b"a: 1"
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        read_checked_bytes(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------
# 5. Checkpoints: empty, wrong layout, non-finite weights, refused globals named in full


class _Gadget:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_a_refused_pickle_global_is_named_in_full(tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": _Gadget()}, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(tmp_path / "evil.pt")
    assert f"refusing to load global {os.system.__module__}.system (" in str(info.value)
    torch.save({"w": _Gadget()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match=rf"refusing to load global {os.system.__module__}\.system"):
        load_torch_file(tmp_path / "evil2.pt")


def _state(**overrides) -> dict:
    model = build_model("small_cnn", *GEOMETRY).state_dict()
    return {"phase": "search", "epoch": 1, "model": model, "optim": {}, "history": "[]", **overrides}


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ([1, 2], "expected a run checkpoint (a mapping with phase, epoch, model, optim), got list"),
        ({"epoch": 0, "model": {}}, "not a run checkpoint: missing phase, optim"),
        (_state(phase="warmup"), "phase: expected one of pretrain, search, finetune, done, got 'warmup'"),
        (_state(epoch=-1), "epoch: expected an integer >= 0, got -1"),
        (_state(model=[1]), "model: expected a state_dict"),
        (_state(phase="finetune"), "optim: expected a mapping with optimizer and scheduler"),
        (_state(history="{not json"), "history: expected the JSON text of a list"),
        (_state(phase="done"), "compressed_accuracy: missing in a finished run's checkpoint"),
        (_state(fp_accuracy=float("nan")), "fp_accuracy: expected a finite number, got nan"),
        (
            _state(model={"fc.bias": torch.tensor([0.0, float("nan")])}),
            "model: tensor 'fc.bias' holds 1 non-finite value(s)",
        ),
        (
            _state(
                optim={
                    "engine": {
                        "weight_optimizer": {"state": {0: {"momentum_buffer": torch.tensor([float("inf"), 1.0])}}}
                    }
                }
            ),
            "optim.engine.weight_optimizer.state.0.momentum_buffer: tensor holds 1 non-finite value(s) (NaN or infinity); "
            "the run diverged before this checkpoint",
        ),
    ],
)
def test_run_checkpoints_with_the_wrong_layout(tmp_path, state, needle):
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'checkpoint.pt'}: ") and needle in str(info.value)


def test_run_checkpoints_that_are_fine_or_absent(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(_state(), tmp_path)
    assert load_checkpoint(tmp_path)["phase"] == "search"
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint.pt: cannot read checkpoint \\(the file is empty\\)"):
        load_checkpoint(tmp_path)


def test_non_finite_weights_are_named(tmp_path):
    state = build_model("small_cnn", *GEOMETRY).state_dict()
    state["fc.bias"][1] = float("inf")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"--checkpoint .*w.pt: tensor 'fc.bias' holds 1 non-finite value"):
        load_state_dict_file(tmp_path / "w.pt")
    save_checkpoint(_state(phase="done", model=state, compressed_accuracy=0.5), tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: model: tensor 'fc.bias' holds 1 non-finite"):
        load_model_state(tmp_path / "checkpoint.pt")


def test_export_states_of_unfinished_runs_are_refused(tmp_path):
    save_checkpoint(_state(), tmp_path)
    with pytest.raises(CheckpointError, match="the run stopped in phase 'search'; finish it"):
        load_model_state(tmp_path / "checkpoint.pt")
