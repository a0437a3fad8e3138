"""Property tests: mutated hardware profiles and config.yaml files either work or fail with a typed
hwsbs error whose message is one line naming the file, quickly. Through the CLI: exit code 0 or
2, at most one stderr line for a bad file, never a traceback.

The default run draws a few dozen examples per property; the ``slow`` variants draw many more
(``pytest -m slow tests/test_fuzz_inputs.py``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cost_models import LayerShape, build_cost_model
from hardware_profiles import load_profile
from hardware_profiles.loader import BUILTIN_DIR
from hwsbs.cli.main import main
from hwsbs.errors import HwsbsError
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config, save_config

#: Built-in profiles used as mutation seeds (those without a table file beside them).
SEEDS = ("a100", "bismo", "bitfusion", "loom", "stripes", "t4", "x86-avx512")
#: Wall-clock bound of one example (load, validate, cost); generous for a loaded 2-core machine.
EXAMPLE_LIMIT_S = 20.0
#: Default run: 30 fixed examples, no shrinking (a failure prints its draws at once).
DEFAULT = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: ``-m slow``: many random examples, shrunk to a minimal failing one.
MANY = settings(DEFAULT, max_examples=400, derandomize=False, phases=tuple(Phase))

_SPECIAL_NUMBERS = [
    0,
    -1,
    1,
    3,
    2**31,
    2**63,
    10**40,
    -(10**30),
    0.0,
    -0.0,
    1e-320,
    1e308,
    -1e9,
    math.inf,
    -math.inf,
    math.nan,
]
SCALARS = st.one_of(
    st.sampled_from(_SPECIAL_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "2 TB/s",
            "1e400",
            ".inf",
            "conv",
            "linear",
            "int",
            "float",
            "roofline",
            "lut",
            "bops",
            "hwsbs-config/1",
            "next_wider",
            "*a",
            "&a",
            "{",
            "[",
            "a: b",
        ]
    ),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
#: Text-level damage the YAML loader must survive.
TEXT_DAMAGE = [
    lambda t, i: t[:i],  # truncated
    lambda t, i: t[:i] + ":" + t[i:],
    lambda t, i: t[:i] + "\n  - [" + t[i:],
    lambda t, i: t[:i] + "{" * 300 + t[i:],
    lambda t, i: t[:i] + "\t" + t[i:],
    lambda t, i: (
        t
        + "\n"
        + "".join(f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 9 if k else ["x"] * 9) + "]\n" for k in range(9))
    ),
    lambda t, i: t + "\nloop: &loop [*loop]\n",
    lambda t, i: t + "\n? [a, b]\n: 1\n",
    lambda t, i: t + "\nbig: " + "9" * 5000 + "\n",
    lambda t, i: t + "\nwhen: 2001-13-45\n",
    lambda t, i: t + "\n" + t.splitlines()[0] + "\n" if t.strip() else t,  # a duplicate key
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a parsed document (the root included)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """One structural mutation: replace, delete, add a key, duplicate or wrap a value, empty a container."""
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    op = data.draw(st.sampled_from(["replace", "delete", "add", "duplicate", "wrap", "empty", "negate"]), label="op")
    if not path:
        return data.draw(VALUES, label="root") if op == "replace" else doc
    parent, key = _get(doc, path[:-1]), path[-1]
    value = parent[key]
    if op == "replace":
        parent[key] = data.draw(VALUES, label="value")
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(value, dict):
        value[data.draw(st.text(min_size=1, max_size=10), label="new key")] = data.draw(VALUES, label="new value")
    elif op == "duplicate" and isinstance(value, list) and value:
        value.append(copy.deepcopy(value[0]))
    elif op == "wrap":
        parent[key] = [value]
    elif op == "empty" and isinstance(value, list | dict):
        value.clear()
    elif op == "negate" and isinstance(value, int | float) and not isinstance(value, bool):
        parent[key] = -value * data.draw(st.sampled_from([1, 10**30, 0]), label="scale")
    return doc


def _mutated_text(seed: Any, data: st.DataObject) -> str:
    doc = copy.deepcopy(seed)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        doc = _mutate(doc, data)
    text = yaml.safe_dump(doc, sort_keys=False)
    if data.draw(st.booleans(), label="damage text"):
        damage = data.draw(st.sampled_from(TEXT_DAMAGE), label="damage")
        text = damage(text, data.draw(st.integers(0, len(text)), label="at"))
    return text


def _within_limit(check: Callable[[], None]) -> None:
    start = time.monotonic()
    check()
    assert time.monotonic() - start < EXAMPLE_LIMIT_S, "an input took too long to accept or refuse"


def _ok_or_one_line(call: Callable[[], Any], *names: str) -> Any:
    """``call()``'s result, or None after a typed error whose message is one line naming one of
    ``names`` (the file; a cost model names a loaded profile by its name instead)."""
    try:
        return call()
    except HwsbsError as exc:
        message = str(exc)
        assert "\n" not in message and message.strip(), repr(message)
        assert any(name in message for name in names), message
        return None


def _cli(argv: list[str], *names: str) -> None:
    """Run the CLI: exit 0, or exit 2 with one stderr line naming one of ``names``; never a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        assert len(text.splitlines()) == 1 and any(name in text for name in names), text


def _config(path: Path) -> Path:
    layers = [
        LayerDecision(LayerShape("stem", "conv", 3, 32, (3, 3), (1, 1), 1, (32, 32), (32, 32)), 4, 4, [0, 1]),
        LayerDecision(LayerShape("dw", "conv", 32, 32, (3, 3), (2, 2), 32, (32, 32), (16, 16)), 8, 4, [], 30),
        LayerDecision(LayerShape("head", "linear", 32, 10), 8, 8),
    ]
    save_config(CompressionConfig(layers, model="toy", batch=2), path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    _config(root / "good_config.yaml")
    return root


@pytest.fixture(scope="module")
def profile_seeds() -> dict[str, Any]:
    return {name: yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8")) for name in SEEDS}


@pytest.fixture(scope="module")
def config_seed(workdir) -> Any:
    return yaml.safe_load((workdir / "good_config.yaml").read_text(encoding="utf-8"))


def _check_profile(workdir: Path, text: str) -> None:
    path = workdir / "mutated_profile.yaml"
    path.write_text(text, encoding="utf-8")
    profile = _ok_or_one_line(lambda: load_profile(path), str(path))
    names = [str(path)] + ([f"profile {profile.name!r}"] if profile is not None else [])
    if profile is not None:
        config = load_config(workdir / "good_config.yaml")
        for name in ("bops", "size", profile.cost_model.name):
            cm = _ok_or_one_line(lambda n=name: build_cost_model(n, profile), *names)
            if cm is not None:
                _ok_or_one_line(lambda c=cm: config.cost(c), *names)
    _cli(["profiles", "validate", str(path)], str(path))
    _cli(["cost", "--config", str(workdir / "good_config.yaml"), "--hw", str(path), "--json"], *names)


def _check_config(workdir: Path, text: str) -> None:
    path = workdir / "mutated_config.yaml"
    path.write_text(text, encoding="utf-8")
    config = _ok_or_one_line(lambda: load_config(path), str(path))
    if config is not None:
        assert config.cost(build_cost_model("bops")) >= 0
    _cli(["cost", "--config", str(path), "--hw", "a100", "--hw", "bismo", "--layers", "--json"], str(path))


def _profile_property(workdir: Path, profile_seeds: dict[str, Any], data: st.DataObject) -> None:
    seed = profile_seeds[data.draw(st.sampled_from(SEEDS), label="seed")]
    text = _mutated_text(seed, data)
    _within_limit(lambda: _check_profile(workdir, text))


def _config_property(workdir: Path, config_seed: Any, data: st.DataObject) -> None:
    text = _mutated_text(config_seed, data)
    _within_limit(lambda: _check_config(workdir, text))


@DEFAULT
@given(data=st.data())
def test_mutated_profiles_work_or_fail_in_one_line(workdir, profile_seeds, data):
    _profile_property(workdir, profile_seeds, data)


@DEFAULT
@given(data=st.data())
def test_mutated_configs_work_or_fail_in_one_line(workdir, config_seed, data):
    _config_property(workdir, config_seed, data)


@pytest.mark.slow
@MANY
@given(data=st.data())
def test_mutated_profiles_many(workdir, profile_seeds, data):
    _profile_property(workdir, profile_seeds, data)


@pytest.mark.slow
@MANY
@given(data=st.data())
def test_mutated_configs_many(workdir, config_seed, data):
    _config_property(workdir, config_seed, data)
