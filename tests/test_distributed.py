"""One run on many processes (torchrun, gloo on CPU): shards, gradients, batch norms, agreement.

The primitives run in two spawned processes joined by a file store; the end-to-end tests launch
``python -m torch.distributed.run --nproc-per-node 2 -m hwsbs search`` as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hwsbs.data import make_loader
from hwsbs.distributed import (
    GlobalBatchSampler,
    is_main,
    mean_over_ranks,
    shutdown,
    sum_over_ranks,
    sync_batch_norms,
    sync_gradients,
    world,
)
from tests.helpers import tiny_argv, wait_until_past_search_checkpoint

WORLD = 2


@pytest.mark.parametrize(("n", "batch", "size"), [(103, 10, 1), (103, 10, 2), (100, 16, 3), (41, 8, 2)])
def test_the_ranks_batches_together_are_the_single_process_batches(n, batch, size):
    ds = torch.utils.data.TensorDataset(torch.arange(n))
    single = [b[0].tolist() for b in make_loader(ds, batch, True, 1234)]
    per_rank = [list(GlobalBatchSampler(ds, batch, True, 1234, r, size)) for r in range(size)]
    kept = [b for b in single if len(b) >= size]  # a final batch smaller than the world is dropped
    assert len(per_rank[0]) == len(kept)
    for k, expected in enumerate(kept):
        union = [i for r in range(size) for i in per_rank[r][k]]
        assert union == expected
        sizes = [len(per_rank[r][k]) for r in range(size)]
        assert max(sizes) - min(sizes) <= 1


def test_a_final_batch_smaller_than_the_world_is_dropped_on_every_rank():
    ds = torch.utils.data.TensorDataset(torch.arange(21))  # batches of 10, 10, 1
    lengths = [len(GlobalBatchSampler(ds, 10, False, 0, r, 2)) for r in range(2)]
    assert lengths == [2, 2]


def test_alone_the_primitives_change_nothing():
    assert world().size == 1 and not world().distributed and is_main()
    t = torch.tensor([1.0, 2.0])
    assert mean_over_ranks(t) is t and t.tolist() == [1.0, 2.0]
    assert sum_over_ranks([1, 2.5]) == [1.0, 2.5]
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert sync_batch_norms(model) == 0 and "forward" not in model[1].__dict__


@pytest.mark.parametrize(("failed", "expected"), [(False, ["barrier", "destroy"]), (True, ["destroy"])])
def test_a_clean_exit_waits_for_every_rank_before_leaving_and_a_failing_one_does_not(monkeypatch, failed, expected):
    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    shutdown(False, failed)  # a group this process did not join is left alone
    assert calls == []
    shutdown(True, failed)
    assert calls == expected


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        gen = torch.Generator().manual_seed(7)
        x, y = torch.randn(10, 3, 8, 8, generator=gen), torch.randint(0, 5, (10,), generator=gen)
        # the reference: one process, the whole batch, plain batch norm
        ref = _model()
        nn.functional.cross_entropy(ref(x), y).backward()
        # this rank: its slice (uneven: 6 and 4 samples), global batch norm, gradients synchronised
        mine = _model()
        assert sync_batch_norms(mine) == 1
        part = slice(0, 6) if rank == 0 else slice(6, 10)
        nn.functional.cross_entropy(mine(x[part]), y[part]).backward()
        sync_gradients(mine.parameters(), int(x[part].shape[0]))
        stat = mean_over_ranks(torch.tensor([float(rank), 2.0 * rank]))
        result = {
            "grad_err": max(float((a.grad - b.grad).abs().max()) for a, b in zip(mine.parameters(), ref.parameters())),
            "grad_scale": max(float(b.grad.abs().max()) for b in ref.parameters()),
            "running_mean_err": float((mine[1].running_mean - ref[1].running_mean).abs().max()),
            "running_var_err": float((mine[1].running_var - ref[1].running_var).abs().max()),
            "stat": stat.tolist(),
            "sums": sum_over_ranks([rank + 1, 0.5]),
            "main": is_main(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_ranks_compute_the_single_process_gradient_and_batch_norm(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert res["grad_err"] < 1e-5 * max(res["grad_scale"], 1.0), res  # the global batch's gradient
        assert res["running_mean_err"] < 1e-6 and res["running_var_err"] < 1e-5, res
        assert res["stat"] == [0.5, 1.0]  # statistics averaged over ranks
        assert res["sums"] == [3.0, 1.0]
        assert res["main"] is (r == 0)


# ------------------------------------------------------------------------- torchrun, end to end

ARGS = tiny_argv("search", "--seed", "3", subset=512, epochs=(2, 3, 1))


def _torchrun(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        "-m",
        "hwsbs",
        *ARGS,
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _decisions(run: Path) -> list:
    data = json.loads((run / "result.json").read_text())
    return [(la["name"], la["w_bits"], la["a_bits"], la["kept_out_channels"]) for la in data["layers"]]


@pytest.mark.slow
def test_a_two_process_search_agrees_writes_once_and_resumes_after_sigkill(tmp_path):
    ref = tmp_path / "reference"
    done = subprocess.run(_torchrun(ref), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((ref / "result.json").read_text())
    assert result["distributed"] == {"processes": 2, "backend": "gloo", "ranks_agreed": True}
    assert done.stdout.count("hwsbs: a100/roofline: accuracy") == 1  # rank 0 alone reports
    assert sorted(p.name for p in ref.iterdir()) == sorted(
        ["checkpoint.pt", "config.yaml", "layers.png", "options.json", "result.json"]
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _torchrun(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_until_past_search_checkpoint(killed)  # kill the whole job once it is inside the search
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "result.json").exists(), "the job finished before it could be killed"

    resumed = subprocess.run(_torchrun(killed, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _decisions(killed) == _decisions(ref)


@pytest.mark.slow
def test_a_refused_run_directory_stops_every_rank_with_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")
    done = subprocess.run(_torchrun(out), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("hwsbs search: error:")]
    assert errors and all("already holds a run; pass --resume" in ln for ln in errors), done.stderr
    # the job ends (no rank waits forever on a collective) with the bad-input code as its root cause
    assert "exitcode  : 2" in done.stderr
