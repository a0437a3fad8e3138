"""Bad input, every command: one stderr line naming the file/field/argument and the problem,
exit code 2, no traceback, and nothing written. ``--debug`` shows the traceback instead."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image

from cost_models import LayerShape
from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError, ModelError, ProfileError
from hwsbs.models import build_model
from hwsbs.pipeline import build_compressed_model
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config, save_config
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.derive import check_config_matches
from hwsbs.tuning import storage as storage_module
from hwsbs.tuning.storage import open_storage, resolve_storage_url
from tests.helpers import hwsbs_command, minimal_profile

TINY = ["--subset", "64", "--pretrain-epochs", "1", "--search-epochs", "1", "--finetune-epochs", "0", "--no-progress"]
PROFILE = minimal_profile()
#: a measured table without the layers of small_cnn on digits (its first layer: conv_k3x3_s1x1_g1_i1_o32_h8x8)
TABLE = {
    "format": "hwsbs-lut/1",
    "fallback": "next_wider",
    "entries": [
        {
            "signature": "conv_k3x3_s1x1_g1_i64_o64_h56x56",
            "w_bits": w,
            "a_bits": w,
            "kept_in": 64,
            "kept_out": 64,
            "mean_s": 1e-4,
        }
        for w in (8, 32)
    ],
}


#: A "billion laughs" document: nine levels of nine aliases each, 9**9 strings once expanded.
LAUGHS = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ["lol"] * 9) + "]\n" for i in range(9))
#: the line of LAUGHS whose aliases first exceed the expansion limit
LAUGHS_LINE = 5
#: the first line after PROFILE's YAML, where the cases below append their bad line
AFTER = len(yaml.safe_dump(PROFILE, sort_keys=False).splitlines()) + 1


def _config_mutants() -> dict[str, Callable[[dict[str, Any]], None]]:
    """config.yaml variants with one bad field each (applied to the saved stem/head config)."""

    def layer(i: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda c: c["layers"][i].__setitem__(key, value)

    def shape(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda c: c["layers"][0]["shape"].__setitem__(key, value)

    return {
        "batch_abc": lambda c: c.__setitem__("batch", "abc"),
        "group_size_zero": lambda c: c.__setitem__("group_size", 0),
        "bits_scalar": lambda c: c.__setitem__("bits", 5),
        "bits_not_doubling": lambda c: c.__setitem__("bits", [2, 3, 8]),
        "batch_negative": lambda c: c.__setitem__("batch", -4),
        "channels_negative": shape("in_channels", -3),
        "kept_over_out": layer(0, "kept_out_channels", 40),
        "pruned_out_of_range": layer(0, "pruned_channels", [0, 32]),
        "empty_name": layer(0, "name", ""),
        "duplicate_name": layer(1, "name", "stem"),
        "stride_text": shape("stride", [1, "2"]),
    }


def _write_security_inputs(root: Path) -> None:
    """Inputs of the hardening cases: YAML bombs, special files, bad checkpoints, run directories."""

    def dump(name: str, data: object) -> None:
        (root / name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    profile_text = yaml.safe_dump(PROFILE, sort_keys=False)
    (root / "laughs.yaml").write_text(LAUGHS + profile_text, encoding="utf-8")
    (root / "list_key.yaml").write_text(profile_text + "? [a, b]\n: 1\n", encoding="utf-8")
    (root / "deep.yaml").write_text(profile_text + "extensions: " + "[" * 500 + "]" * 500 + "\n", encoding="utf-8")
    (root / "huge_int.yaml").write_text(profile_text + "clock_hz: " + "9" * 5000 + "\n", encoding="utf-8")
    dump("inf_rate.yaml", {**PROFILE, "precisions": [{"w_bits": 8, "a_bits": 8, "ops_per_s": float("inf")}]})
    (root / "e400_bandwidth.yaml").write_text(profile_text.replace("10000000000.0", "1.0e+400"), encoding="utf-8")
    dump("inf_overhead.yaml", {**PROFILE, "cost_model": {"name": "roofline", "per_layer_overhead_s": float("inf")}})
    os.symlink("/dev/zero", root / "tables" / "zero.json")
    dump("lut_zero.yaml", {**PROFILE, "cost_model": {"name": "lut"}, "lookup_table": "tables/zero.json"})
    os.mkfifo(root / "tables" / "fifo.json")
    dump("lut_fifo.yaml", {**PROFILE, "cost_model": {"name": "lut"}, "lookup_table": "tables/fifo.json"})
    os.mkfifo(root / "fifo_profile.yaml")
    os.mkfifo(root / "fifo_config.yaml")
    os.mkfifo(root / "fifo.pt")
    with open(root / "big_config.yaml", "wb") as fh:  # sparse: no disk space used
        fh.truncate(65 * 1024 * 1024)
    base = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    for name, mutate in _config_mutants().items():
        data = json.loads(json.dumps(base))
        mutate(data)
        dump(f"config_{name}.yaml", data)
    _write_checkpoints(root)


class _System:
    """Pickles as a call of os.system: the weights-only unpickler must refuse it by name."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


#: options.json of the run directories below: what the cases' search options (TINY) record
RUN_OPTIONS = SearchConfig(hw="a100", subset=64, pretrain_epochs=1, search_epochs=1, finetune_epochs=0).to_dict()


def _write_checkpoints(root: Path) -> None:
    (root / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], root / "list.pt")
    state = build_model("small_cnn", 10, 1, (8, 8)).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, root / "nan.pt")
    (root / "evil.pt").write_bytes(pickle.dumps({"w": _System()}, protocol=2))
    for name, ckpt in (("run_empty", None), ("run_list", [1]), ("run_nophase", {"epoch": 0, "model": {}})):
        run = root / name
        run.mkdir()
        (run / "config.yaml").write_bytes((root / "config.yaml").read_bytes())
        (run / "options.json").write_text(json.dumps(RUN_OPTIONS), encoding="utf-8")
        if ckpt is None:
            (run / "checkpoint.pt").write_bytes(b"")
        else:
            torch.save(ckpt, run / "checkpoint.pt")
    code = root / "run_code"
    code.mkdir()
    (code / "options.json").write_text(json.dumps({"model": "os:system"}), encoding="utf-8")
    _write_data_inputs(root)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 1-bit pixels: PIL's size check runs on opening,
    before any pixel is decoded, so the file can stay a few bytes (like a real bomb's)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _cifar_batch(images: int, labels: list) -> bytes:
    return pickle.dumps({b"data": np.zeros((images, 3072), dtype=np.uint8), b"labels": labels}, protocol=4)


def _write_data_inputs(root: Path) -> None:
    """Image folders holding decompression bombs; CIFAR releases with an empty batch or fractional labels."""
    for name, size in (("bomb", (20000, 20000)), ("bomb_warn", (10000, 10000))):  # 4e8 and 1e8 pixels
        for split in ("train", "val"):
            (root / name / split / "a").mkdir(parents=True)
            (root / name / split / "a" / "x.png").write_bytes(_png_header(*size))
    for name, first in (("cifar_empty", _cifar_batch(0, [])), ("cifar_fractional", _cifar_batch(2, [0, 1.5]))):
        release = root / name / "cifar-10-batches-py"
        release.mkdir(parents=True)
        (release / "data_batch_1").write_bytes(first)
        for other in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
            (release / other).write_bytes(_cifar_batch(2, [0, 1]))


def _write_inputs(root: Path) -> None:
    """Every bad (and good) input file the cases refer to, under ``root``."""

    def dump(name: str, data: object) -> None:
        (root / name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    (root / "malformed.yaml").write_text("name: [unclosed\nkind: gpu\n", encoding="utf-8")
    dump("misspelled.yaml", {**PROFILE, "precisons": PROFILE["precisions"]})
    (root / "duplicate.yaml").write_text(yaml.safe_dump(PROFILE, sort_keys=False) + "kind: cpu\n", encoding="utf-8")
    dump("wrongtype.yaml", {**PROFILE, "clock_hz": "fast"})
    dump("zero_rate.yaml", {**PROFILE, "precisions": [{"w_bits": 8, "a_bits": 8, "ops_per_s": 0}]})
    dump("units.yaml", {**PROFILE, "memory": [{"name": "dram", "bandwidth_bytes_per_s": "2 TB/s"}]})
    dump("negative.yaml", {**PROFILE, "memory": [{"name": "dram", "bandwidth_bytes_per_s": -1.0e9}]})
    (root / "tables").mkdir()
    dump("tables/toy.yaml", TABLE)
    dump("lut.yaml", {**PROFILE, "name": "toy-lut", "cost_model": {"name": "lut"}, "lookup_table": "tables/toy.yaml"})
    dump("no_table.yaml", {**PROFILE, "cost_model": {"name": "lut"}, "lookup_table": "tables/none.yaml"})
    stem = LayerShape("stem", "conv", 3, 32, (3, 3), (1, 1), 1, (32, 32), (32, 32))
    head = LayerShape("head", "linear", 32, 10)
    save_config(
        CompressionConfig([LayerDecision(stem, 4, 4), LayerDecision(head, 8, 8)], model="toy"), root / "config.yaml"
    )
    (root / "garbled_config.yaml").write_text("format: hwsbs-config/1\nlayers: [{\n", encoding="utf-8")
    (root / "incomplete_config.yaml").write_text("format: hwsbs-config/1\nlayers:\n  - {name: x}\n", encoding="utf-8")
    text = (root / "config.yaml").read_text(encoding="utf-8")
    (root / "bits_config.yaml").write_text(text.replace("w_bits: 4", "w_bits: 64", 1), encoding="utf-8")
    torch.save({"fc.weight": torch.zeros(3, 3)}, root / "other_model.pt")
    (root / "garbled.pt").write_bytes(b"not a checkpoint")
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ):
        (cifar / name).write_bytes(b"\x80\x04garbage")
    (root / "a_file").write_text("not a directory", encoding="utf-8")
    (root / "space.yaml").write_text("bits: {choices: ['2,3']}\n", encoding="utf-8")
    (root / "study.txt").write_text("not a storage\n", encoding="utf-8")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="foreign", storage=f"sqlite:///{root / 'foreign.db'}")
    _write_security_inputs(root)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    _write_inputs(root)
    return root


class Case(NamedTuple):
    argv: list[str]  # {t} is the directory of input files; a case that writes would write to ./out
    needle: str  # {t} too
    env: dict[str, str] = {}


S = ["search", "--hw"]
V = ["profiles", "validate"]


def on_file(command: list[str], name: str, problem: str) -> Case:
    """``COMMAND {t}/NAME``, refused with a line naming the file: ``{t}/NAME: PROBLEM``."""
    return Case([*command, f"{{t}}/{name}"], f"{{t}}/{name}: {problem}")


def cost(config: str, *extra: str) -> list[str]:
    """``hwsbs cost --config {t}/CONFIG --hw a100 EXTRA...``."""
    return ["cost", "--config", f"{{t}}/{config}", "--hw", "a100", *extra]


CASES: dict[str, Case] = {
    # hwsbs search: profiles
    "search-malformed-yaml": on_file(S, "malformed.yaml", "line 2: invalid YAML"),
    "search-misspelled-field": on_file(S, "misspelled.yaml", "precisons: unknown field"),
    "search-duplicate-key": Case([*S, "{t}/duplicate.yaml"], "duplicate key 'kind'"),
    "search-wrong-type": on_file(S, "wrongtype.yaml", "clock_hz: input should be a valid number"),
    "search-zero-rate": Case(
        [*S, "{t}/zero_rate.yaml"], "precisions[0].ops_per_s: input should be greater than 0, got 0"
    ),
    "search-wrong-unit": on_file(S, "units.yaml", "memory[0].bandwidth_bytes_per_s: input should be a valid number"),
    "search-unknown-profile": Case([*S, "nosuchgpu"], "unknown hardware profile 'nosuchgpu'; known: a100"),
    "search-lut-table-missing": Case([*S, "{t}/no_table.yaml"], "{t}/tables/none.yaml: lookup table file not found"),
    "search-lut-without-entry": Case(
        [*S, "{t}/lut.yaml"],
        "{t}/tables/toy.yaml: no entry for layer 'conv1' (signature conv_k3x3_s1x1_g1_i1_o32_h8x8)",
    ),
    # hwsbs search: names
    "search-unknown-model": Case([*S, "a100", "--model", "nosuchnet"], "unknown model 'nosuchnet'; known: "),
    "search-unknown-dataset": Case(
        [*S, "a100", "--data", "nosuchdata"], "unknown dataset 'nosuchdata'; known: cifar10"
    ),
    "search-unknown-method": Case([*S, "a100", "--method", "magic"], "--method: unknown method 'magic'; known: "),
    "search-unknown-cost-model": Case([*S, "a100", "--cost", "nosuchcost"], "unknown cost model 'nosuchcost'; known: "),
    # hwsbs search: options, data, checkpoints, paths
    "search-bits-not-doubling": Case([*S, "a100", "--bits", "2,3,8"], "--bits 2,3,8: each bit width must double"),
    "search-bits-not-integers": Case(
        [*S, "a100", "--bits", "two"], "argument --bits: expected comma-separated integers"
    ),
    "search-zero-rate-option": Case(
        [*S, "a100", "--threshold-lr", "0"], "--threshold-lr: expected a positive number, got 0"
    ),
    "search-missing-data-dir": Case(
        [*S, "a100", "--data", "cifar10", "--data-dir", "{t}/nope"], "--data-dir {t}/nope: does not exist"
    ),
    "search-garbled-data-dir": Case(
        [*S, "a100", "--data", "cifar10", "--data-dir", "{t}/cifar"], "batches.meta: not a readable pickle"
    ),
    "search-checkpoint-other-model": Case(
        [*S, "a100", "--checkpoint", "{t}/other_model.pt"],
        "--checkpoint {t}/other_model.pt does not match the model: Missing key(s)",
    ),
    "search-garbled-checkpoint": Case(
        [*S, "a100", "--checkpoint", "{t}/garbled.pt"], "--checkpoint {t}/garbled.pt: not a loadable state_dict"
    ),
    "search-out-is-a-file": Case([*S, "a100", "--out", "{t}/a_file"], "{t}/a_file: File exists"),
    # hwsbs profiles validate (its lines start with the file, no command prefix)
    "validate-malformed-yaml": on_file(V, "malformed.yaml", "line 2: invalid YAML"),
    "validate-negative-rate": on_file(
        V, "negative.yaml", "memory[0].bandwidth_bytes_per_s: input should be greater than 0"
    ),
    "validate-missing-table": Case([*V, "{t}/no_table.yaml"], "none.yaml: lookup table file not found"),
    "validate-unknown-profile": Case([*V, "nosuchgpu"], "unknown hardware profile 'nosuchgpu'; known: a100"),
    # hwsbs cost
    "cost-garbled-config": Case(cost("garbled_config.yaml"), "{t}/garbled_config.yaml: line 3: invalid YAML"),
    "cost-incomplete-config": Case(
        cost("incomplete_config.yaml"), "{t}/incomplete_config.yaml: layers[0] (x): missing field 'shape'"
    ),
    "cost-config-bits-out-of-range": Case(
        cost("bits_config.yaml"), "{t}/bits_config.yaml: layers[0] (stem).w_bits: expected 1..32, got 64"
    ),
    "cost-missing-config": Case(cost("nope.yaml"), "{t}/nope.yaml: file not found"),
    "cost-lut-without-entry": Case(
        ["cost", "--config", "{t}/config.yaml", "--hw", "{t}/lut.yaml"],
        "{t}/tables/toy.yaml: no entry for layer 'stem' (signature conv_k3x3_s1x1_g1_i3_o32_h32x32)",
    ),
    "cost-zero-batch": Case(cost("config.yaml", "--batch", "0"), "--batch: expected a positive integer, got 0"),
    "cost-unknown-cost-model": Case(
        cost("config.yaml", "--cost", "nope"), "unknown cost model 'nope'; known: apb_cpu, bit_serial"
    ),
    # hwsbs tune / pareto: checked before the study (database, directory) is created
    "tune-lut-without-entry": Case(
        ["tune", "--hw", "{t}/lut.yaml", "--trials", "2"],
        "{t}/tables/toy.yaml: no entry for layer 'conv1' (signature conv_k3x3_s1x1_g1_i1_o32_h8x8)",
    ),
    "tune-missing-data-dir": Case(
        ["tune", "--hw", "a100", "--trials", "2", "--data", "imagefolder", "--data-dir", "{t}/nope"],
        "--data-dir {t}/nope: does not exist",
    ),
    "tune-checkpoint-other-model": Case(
        ["tune", "--hw", "a100", "--trials", "2", "--checkpoint", "{t}/other_model.pt"], "does not match the model"
    ),
    "tune-space-bits-not-doubling": Case(
        ["tune", "--hw", "a100", "--trials", "2", "--space", "{t}/space.yaml"], "{t}/space.yaml: bits: choice '2,3'"
    ),
    "tune-zero-trials": Case(["tune", "--hw", "a100", "--trials", "0"], "--trials: expected a positive integer, got 0"),
    "tune-empty-journal-path": Case(
        ["tune", "--hw", "a100", "--trials", "2", "--storage", "journal:"],
        "--storage journal:PATH: the journal file path is missing",
    ),
    "tune-bad-heartbeat-env": Case(
        ["tune", "--hw", "a100", "--trials", "2"],
        "HWSBS_HEARTBEAT_GRACE_S='soon': expected a whole number of seconds >= 1",
        {"HWSBS_HEARTBEAT_GRACE_S": "soon"},
    ),
    "pareto-unknown-cost-model": Case(
        ["pareto", "--hw", "a100", "--hw", "a100:nosuchcost", "--trials", "2"],
        "unknown cost model 'nosuchcost'; known: ",
    ),
    "pareto-missing-profile": Case(
        ["pareto", "--hw", "{t}/gone.yaml:size", "--trials", "2"], "{t}/gone.yaml: hardware profile file not found"
    ),
    # hwsbs report
    "report-missing-storage": Case(["report", "--storage", "{t}/gone.db"], "--storage {t}/gone.db: no such file"),
    "report-unknown-study": Case(
        ["report", "--storage", "{t}/foreign.db", "--study-name", "nope"],
        "--study-name nope: no such study in {t}/foreign.db (it has: foreign)",
    ),
    "report-foreign-study": Case(
        ["report", "--storage", "{t}/foreign.db"], "study foreign was not created by hwsbs tune/pareto"
    ),
    "report-not-a-storage": Case(["report", "--storage", "{t}/study.txt"], "expected an Optuna storage URL"),
    # a run directory is data: it cannot choose code to import (--model must come from the user)
    "export-run-names-code": Case(
        ["export", "--run", "{t}/run_code"],
        "{t}/run_code/options.json: model 'os:system' is code to import, which a run "
        "directory cannot choose; if you trust it, pass --model os:system yourself",
    ),
    # --model MOD:ATTR: only nn.Module classes and Python functions outside the standard library
    "search-model-builtins-exit": Case(
        [*S, "a100", "--model", "builtins:exit"], "--model 'builtins:exit': 'builtins' is part of Python or hwsbs"
    ),
    "search-model-os-fork": Case([*S, "a100", "--model", "os:fork"], "--model 'os:fork': 'os' is part of Python"),
    "search-model-input": Case([*S, "a100", "--model", "builtins:input"], "--model 'builtins:input': 'builtins' is"),
    # YAML that is cheap to write and expensive to load
    "validate-billion-laughs": Case(
        [*V, "{t}/laughs.yaml"], f"{{t}}/laughs.yaml: line {LAUGHS_LINE}: invalid YAML: aliases expand to more than"
    ),
    "show-billion-laughs": Case(
        ["profiles", "show", "--json", "{t}/laughs.yaml"],
        f"{{t}}/laughs.yaml: line {LAUGHS_LINE}: invalid YAML: aliases expand to more than",
    ),
    "search-billion-laughs": on_file(S, "laughs.yaml", "line 5: invalid YAML: aliases expand"),
    "validate-list-key": Case(
        [*V, "{t}/list_key.yaml"],
        f"{{t}}/list_key.yaml: line {AFTER}: invalid YAML: a mapping key must be a plain value, not a sequence",
    ),
    "validate-deep-nesting": Case(
        [*V, "{t}/deep.yaml"], f"{{t}}/deep.yaml: line {AFTER}: invalid YAML: nested deeper than 64 levels"
    ),
    "validate-huge-int": Case(
        [*V, "{t}/huge_int.yaml"],
        f"{{t}}/huge_int.yaml: line {AFTER}: invalid YAML: integer of 5000 characters (at most 40)",
    ),
    # non-finite numbers in profiles
    "validate-inf-rate": on_file(
        V, "inf_rate.yaml", "precisions[0].ops_per_s: input should be a finite number, got inf"
    ),
    "validate-1e400-bandwidth": Case(
        [*V, "{t}/e400_bandwidth.yaml"], "memory[0].bandwidth_bytes_per_s: input should be a finite number, got inf"
    ),
    "validate-inf-overhead": on_file(
        V, "inf_overhead.yaml", "cost_model.roofline.per_layer_overhead_s: input should be a finite number, got inf"
    ),
    # files that are not regular files, or too large: no hang, no MemoryError
    "validate-table-is-dev-zero": Case(
        [*V, "{t}/lut_zero.yaml"], "{t}/tables/zero.json: lookup table file is a character device, not a regular file"
    ),
    "search-table-is-dev-zero": Case(
        [*S, "{t}/lut_zero.yaml"], "{t}/tables/zero.json: lookup table file is a character device"
    ),
    "validate-table-is-fifo": Case(
        [*V, "{t}/lut_fifo.yaml"], "{t}/tables/fifo.json: lookup table file is a FIFO (named pipe), not a regular file"
    ),
    "search-profile-is-fifo": on_file(S, "fifo_profile.yaml", "hardware profile file is a FIFO"),
    "cost-config-is-fifo": Case(
        cost("fifo_config.yaml"), "{t}/fifo_config.yaml: file is a FIFO (named pipe), not a regular file"
    ),
    "cost-config-too-large": Case(
        cost("big_config.yaml"), "{t}/big_config.yaml: file is too large (68157440 bytes; at most 67108864 are read)"
    ),
    "cost-config-is-a-directory": Case(cost("cifar"), "{t}/cifar: file is a directory"),
    "search-checkpoint-is-fifo": Case(
        [*S, "a100", "--checkpoint", "{t}/fifo.pt"], "--checkpoint {t}/fifo.pt: file is a FIFO"
    ),
    # checkpoints: empty, wrong layout, non-finite weights, refused pickle globals (named in full)
    "search-empty-checkpoint": Case(
        [*S, "a100", "--checkpoint", "{t}/empty.pt"],
        "--checkpoint {t}/empty.pt: not a loadable state_dict (the file is empty)",
    ),
    "search-list-checkpoint": Case(
        [*S, "a100", "--checkpoint", "{t}/list.pt"],
        "--checkpoint {t}/list.pt: expected a state_dict (a mapping of names to tensors)",
    ),
    "search-nan-checkpoint": Case(
        [*S, "a100", "--checkpoint", "{t}/nan.pt"],
        "--checkpoint {t}/nan.pt: tensor 'conv1.weight' holds 1 non-finite value(s) (NaN or infinity)",
    ),
    "search-pickle-global": Case(
        [*S, "a100", "--checkpoint", "{t}/evil.pt"],
        f"--checkpoint {{t}}/evil.pt: not a loadable state_dict (refusing to load global {os.system.__module__}.system",
    ),
    "export-empty-checkpoint": Case(
        ["export", "--run", "{t}/run_empty"], "{t}/run_empty/checkpoint.pt: cannot read checkpoint (the file is empty)"
    ),
    "export-list-checkpoint": Case(
        ["export", "--run", "{t}/run_list"], "{t}/run_list/checkpoint.pt: expected a run checkpoint or a state_dict"
    ),
    "resume-checkpoint-without-phase": Case(
        [*S, "a100", "--out", "{t}/run_nophase", "--resume"],
        "{t}/run_nophase/checkpoint.pt: not a run checkpoint: missing phase, optim",
    ),
    # config.yaml: every field checked, named with its layer
    "cost-config-batch-text": Case(
        cost("config_batch_abc.yaml"), "{t}/config_batch_abc.yaml: batch: expected an integer, got 'abc'"
    ),
    "cost-config-group-size-zero": Case(
        cost("config_group_size_zero.yaml"), "{t}/config_group_size_zero.yaml: group_size: expected 1..16777216, got 0"
    ),
    "cost-config-bits-scalar": Case(
        cost("config_bits_scalar.yaml"), "{t}/config_bits_scalar.yaml: bits: expected a list, got 5"
    ),
    "cost-config-bits-not-doubling": Case(
        cost("config_bits_not_doubling.yaml"), "bits: each bit width must double the previous one, got [2, 3, 8]"
    ),
    "cost-config-negative-batch": Case(
        cost("config_batch_negative.yaml"), "{t}/config_batch_negative.yaml: batch: expected 1..16777216, got -4"
    ),
    "cost-config-negative-channels": Case(
        cost("config_channels_negative.yaml"), "layers[0] (stem).shape.in_channels: expected 1..16777216, got -3"
    ),
    "cost-config-kept-over-out": Case(
        cost("config_kept_over_out.yaml"),
        "layers[0] (stem).kept_out_channels: expected 32 (out_channels 32 minus 0 pruned), got 40",
    ),
    "cost-config-pruned-out-of-range": Case(
        cost("config_pruned_out_of_range.yaml"),
        "layers[0] (stem).pruned_channels: expected channel indices in 0..31, got 32",
    ),
    "cost-config-empty-name": Case(
        cost("config_empty_name.yaml"),
        "{t}/config_empty_name.yaml: layers[0].name: string should have at least 1 character",
    ),
    "cost-config-duplicate-name": Case(
        cost("config_duplicate_name.yaml"), "layers[1] (stem).name: 'stem' is also the name of layers[0]"
    ),
    "cost-config-stride-text": Case(
        cost("config_stride_text.yaml"), "layers[0] (stem).shape.stride[1]: expected an integer, got '2'"
    ),
    # seeds every generator can take; export's counts
    "search-negative-seed": Case([*S, "a100", "--seed", "-1"], "--seed: expected an integer 0..4294967295, got -1"),
    "search-seed-over-32-bits": Case(
        [*S, "a100", "--seed", str(2**32)], "--seed: expected an integer 0..4294967295, got 4294967296"
    ),
    "tune-negative-seed": Case(
        ["tune", "--hw", "a100", "--trials", "2", "--seed", "-1"], "--seed: expected an integer 0..4294967295, got -1"
    ),
    "export-threads-zero": Case(
        ["export", "--run", "{t}/run_empty", "--threads", "0"], "--threads: expected a positive integer, got 0"
    ),
    "export-num-classes-zero": Case(
        ["export", "--run", "{t}/run_empty", "--num-classes", "0"], "--num-classes: expected a positive integer, got 0"
    ),
    # export --out: checked before any work
    "export-out-is-a-directory": Case(
        ["export", "--run", "{t}/run_empty", "--out", "{t}/cifar"], "--out {t}/cifar: is a directory; give a file name"
    ),
    "export-out-under-a-file": Case(
        ["export", "--run", "{t}/run_empty", "--out", "{t}/a_file/m.pt"],
        "--out {t}/a_file/m.pt: {t}/a_file is not a directory",
    ),
    # a budget no configuration can approach (it would overflow the budget loss, blamed on the lr)
    "search-target-1e-300": Case(
        [*S, "a100", "--cost", "bops", "--target", "1e-300"], "--target 1e-300: below 1e-30 of the uniform 8-bit cost ("
    ),
    "search-target-1e-300-percent": Case(
        [*S, "a100", "--target", "1e-300%"], "--target 1e-300%: below 1e-30 of the uniform 8-bit cost"
    ),
    "tune-target-1e-300": Case(
        ["tune", "--hw", "a100", "--cost", "bops", "--trials", "2", "--target", "1e-300"],
        "--target 1e-300: below 1e-30 of the uniform 8-bit cost (",
    ),
    # a storage URL without a driver gets the installed one, and the message names it (password masked)
    "tune-postgres-unreachable": Case(
        ["tune", "--hw", "a100", "--trials", "2", "--storage", "postgresql://hwsbs:secret@127.0.0.1:1/optuna"],
        "--storage postgresql://hwsbs:***@127.0.0.1:1/optuna: cannot open with driver psycopg2 (",
    ),
    # datasets: decompression bombs, an empty batch, fractional labels
    "search-image-bomb": Case(
        [*S, "a100", "--data", "imagefolder", "--data-dir", "{t}/bomb"],
        "{t}/bomb/train/a/x.png: image of 400000000 pixels is over the limit of "
        f"{Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)",
    ),
    "search-image-bomb-warning-size": Case(
        [*S, "a100", "--data", "imagefolder", "--data-dir", "{t}/bomb_warn"],
        "{t}/bomb_warn/train/a/x.png: image of 100000000 pixels is over the limit",
    ),
    "search-cifar-empty-batch": Case(
        [*S, "a100", "--data", "cifar10", "--data-dir", "{t}/cifar_empty"],
        "cifar-10-batches-py/data_batch_1: expected a CIFAR-10 batch dict with 'data' "
        "(N x 3072 uint8) and 'labels'; the batch holds no images",
    ),
    "search-cifar-fractional-labels": Case(
        [*S, "a100", "--data", "cifar10", "--data-dir", "{t}/cifar_fractional"],
        "cifar-10-batches-py/data_batch_1: labels: expected whole numbers, label 1 is 1.5",
    ),
}
#: commands that take --out (and TINY schedules): the directory must not appear
WITH_OUT = ("search", "tune", "pareto")


def _params():
    for name, case in CASES.items():
        marks = [pytest.mark.timeout(120)]  # a FIFO read would block forever
        yield pytest.param(name, case, id=name, marks=marks)


def _one_line_exit_2(argv: list[str], capsys) -> str:
    """The one stderr line of ``hwsbs ARGV``, which must exit 2, print nothing on stdout and no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("name", "case"), list(_params()))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, case, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the working directory: default outputs (runs/...) would land here
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    argv = [a.replace("{t}", str(inputs)) for a in case.argv]
    if argv[0] in WITH_OUT:
        argv += [*TINY] + ([] if "--out" in argv else ["--out", str(tmp_path / "out")])
    before = {p: p.stat().st_mtime_ns for p in inputs.rglob("*")}
    line = _one_line_exit_2(argv, capsys)
    assert case.needle.replace("{t}", str(inputs)) in line
    if argv[0] != "profiles":
        assert line.startswith(f"hwsbs {argv[0]}: error: "), line
    assert list(tmp_path.iterdir()) == []  # not even an empty --out
    assert {p: p.stat().st_mtime_ns for p in inputs.rglob("*")} == before


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError, match="unknown hardware profile 'nosuchgpu'"):
        main(["--debug", "search", "--hw", "nosuchgpu"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        hwsbs_command("--debug", "profiles", "show", "nosuchgpu"), capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback") and "ProfileError: unknown hardware profile" in proc.stderr


def test_config_for_another_model_raises_model_error(inputs):
    model = build_model("small_cnn", 10, 1, (8, 8))
    with pytest.raises(ModelError, match=r"config.yaml does not match the model \(layers missing from it: conv1"):
        build_compressed_model(
            model, load_config(inputs / "config.yaml"), torch.randn(2, 1, 8, 8), source=str(inputs / "config.yaml")
        )


@pytest.mark.parametrize(
    ("command", "target", "hint"),
    [
        (
            "search",
            "hwsbs.cli.search.run_search",
            "finished epochs are checkpointed; continue with the same command plus --resume",
        ),
        (
            "tune",
            "hwsbs.cli.tune.run_study",
            "finished trials are stored in the study; re-run the same command to continue it",
        ),
        (
            "pareto",
            "hwsbs.cli.tune.run_study",
            "finished trials are stored in the study; re-run the same command to continue it",
        ),
    ],
)
def test_ctrl_c_says_how_to_continue(command, target, hint, monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    assert (
        main(
            [
                command,
                "--hw",
                "a100",
                "--out",
                str(tmp_path / "out"),
                *TINY,
                *([] if command == "search" else ["--trials", "2"]),
            ]
        )
        == 130
    )
    err = capsys.readouterr().err
    assert err == f"hwsbs {command}: interrupted; {hint}\n"
    assert ("--resume" in err) == (command == "search")


def test_a_study_name_cannot_escape_runs(tmp_path, monkeypatch):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    schedule = [
        "--subset",
        "64",
        "--pretrain-epochs",
        "0",
        "--search-epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--no-progress",
    ]
    assert main(["tune", "--hw", "a100", "--trials", "1", "--study-name", "../../x", *schedule]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and sorted(
        p.name for p in (tmp_path / "a").iterdir()
    ) == ["b"]
    assert (cwd / "runs" / "x" / "study.db").is_file() and (cwd / "runs" / "x" / "trials" / "trial-0").is_dir()
    assert [p.name for p in (cwd / "runs").iterdir()] == ["x"]


# ---------------------------------------------------------------------------------------------
# Cases that need the machine to look a certain way (no CUDA) or a finished run


@pytest.mark.parametrize(
    "command",
    [
        ["search", "--hw", "a100", *TINY],
        ["tune", "--hw", "a100", "--trials", "2", *TINY],
        ["pareto", "--hw", "a100", "--hw", "a100:size", "--trials", "2", *TINY],
        ["export", "--run", "{t}/run_empty"],
        ["lut", "build", "--model", "small_cnn", "--out", "prof.yaml"],
    ],
)
def test_device_cuda_without_cuda_is_one_line_and_writes_nothing(command, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a.replace("{t}", str(inputs)) for a in command] + ["--device", "cuda"]
    before = {p: p.stat().st_mtime_ns for p in inputs.rglob("*")}
    line = _one_line_exit_2(argv, capsys)
    assert "--device cuda: no CUDA device is available" in line
    assert list(tmp_path.iterdir()) == []  # no run directory, no study.db, no profile
    assert {p: p.stat().st_mtime_ns for p in inputs.rglob("*")} == before


def test_device_names_torch_does_not_know_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_exit_2(["search", "--hw", "a100", "--device", "gpu", *TINY], capsys)
    assert "--device 'gpu': not a torch device (cpu, cuda, cuda:1, mps, ...)" in line
    assert list(tmp_path.iterdir()) == []


def test_lut_seed_and_threads_are_checked_by_the_parser(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_exit_2(["lut", "check", "--hw", "a100", "--seed", "-1"], capsys)
    assert "argument --seed: expected an integer 0..4294967295, got '-1'" in line
    line = _one_line_exit_2(["lut", "build", "--model", "small_cnn", "--out", "p.yaml", "--threads", "0"], capsys)
    assert "argument --threads: expected a positive integer, got '0'" in line
    assert list(tmp_path.iterdir()) == []


def _finished_run(root: Path) -> Path:
    """A run directory as hwsbs search leaves it (config.yaml, a finished checkpoint, options.json)."""
    from hwsbs.checkpoint import save_checkpoint
    from hwsbs.sbs.derive import apply_config, derive_config

    run = root / "run_ok"
    run.mkdir()
    space = convert_model(
        build_model("small_cnn", 10, 1, (8, 8)), torch.randn(4, 1, 8, 8), (2, 4, 8), group_size=4, prune=True
    )
    config = derive_config(space, "small_cnn", "digits", [2, 4, 8], 4, 1)
    save_config(config, run / "config.yaml")
    model = apply_config(space, config, str(run / "config.yaml"))
    save_checkpoint(
        {
            "phase": "done",
            "epoch": 0,
            "model": model.state_dict(),
            "optim": {},
            "fp_accuracy": 0.5,
            "history": "[]",
            "compressed_accuracy": 0.5,
            "budget": "null",
        },
        run,
    )
    (run / "options.json").write_text(json.dumps({"model": "small_cnn", "data": "digits"}), encoding="utf-8")
    return run


def test_export_out_on_a_read_only_path_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _finished_run(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root: permissions do not stop it; sysfs refuses new files even to root
            locked = Path("/sys")
            try:
                open(locked / "hwsbs-probe.pt", "wb").close()
                pytest.skip("no read-only directory available (running as root, /sys writable)")
            except OSError:
                pass
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
        out = locked / "m.pt"
        line = _one_line_exit_2(["export", "--run", str(run), "--out", str(out)], capsys)
        assert line.startswith(f"hwsbs export: error: --out {out}: not writable") or line.startswith(
            f"hwsbs export: error: {out}: cannot write the export (Permission denied)"
        ), line
        assert not os.path.lexists(out) and not list(locked.glob("m.pt*"))
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
        # the same run exports fine to a writable path
        assert main(["export", "--run", str(run), "--out", str(tmp_path / "ok.pt"), "--json"]) == 0
        capsys.readouterr()
        assert (tmp_path / "ok.pt").is_file() and not list(tmp_path.glob("*.tmp"))
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_a_config_that_differs_in_groups_names_the_field():
    space = convert_model(build_model("small_cnn", 10, 1, (8, 8)), torch.randn(2, 1, 8, 8), (2, 4, 8), group_size=4)
    name = next(n for n in space.layer_names if space.shapes[n].kind == "conv" and space.shapes[n].in_channels % 2 == 0)
    layers = [
        LayerDecision(dataclasses.replace(space.shapes[n], groups=2) if n == name else space.shapes[n], 8, 8)
        for n in space.layer_names
    ]
    with pytest.raises(ModelError) as info:
        check_config_matches(space, CompressionConfig(layers), "c.yaml")
    assert str(info.value) == f"c.yaml: layer {name} does not match the model: groups 2 there but 1 in the model"
    layers = [
        LayerDecision(
            dataclasses.replace(s, kernel_size=(1, 1), out_channels=s.out_channels * 2) if n == name else s, 8, 8
        )
        for n, s in ((n, space.shapes[n]) for n in space.layer_names)
    ]
    with pytest.raises(ModelError, match=r"kernel_size \(1, 1\) there but \(3, 3\) in the model"):
        check_config_matches(space, CompressionConfig(layers), "c.yaml")


def test_storage_urls_name_the_driver_they_use(monkeypatch):
    assert resolve_storage_url("postgresql://u:p@h/db") == ("postgresql+psycopg2://u:p@h/db", "psycopg2")
    assert resolve_storage_url("postgres://h/db") == ("postgresql+psycopg2://h/db", "psycopg2")
    assert resolve_storage_url("sqlite:///x.db") == ("sqlite:///x.db", None)
    with pytest.raises(ConfigError) as info:
        open_storage("postgresql://hwsbs:secret@127.0.0.1:1/optuna")
    assert "cannot open with driver psycopg2 (" in str(info.value) and "secret" not in str(info.value)
    monkeypatch.setattr(storage_module, "_installed", lambda module: False)
    with pytest.raises(
        ConfigError,
        match=r"^--storage postgresql://hwsbs:\*\*\*@h/db: no postgresql driver is installed "
        r"\(tried the modules psycopg2, psycopg, pg8000\); pip install psycopg2-binary$",
    ):
        resolve_storage_url("postgresql://hwsbs:secret@h/db")
    with pytest.raises(
        ConfigError, match=r"the database driver module pymysql is not installed \(pip install PyMySQL\)"
    ):
        resolve_storage_url("mysql+pymysql://h/db")
