"""Two gloo processes (CPU): training stages under DDP keep masks identical and pruned
weights zero on every rank; rank 0 alone writes; TernGrad plugs in with one key."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nncompress.errors import ConfigError
from nncompress.recipes import parse_recipe
from nncompress.recipes.runner import check_distributed, run_recipe

RECIPE = {
    "name": "ddp-test",
    "model": {"name": "lenet300"},
    "data": {"name": "digits", "train_subset": 256},
    "seed": 0,
    "stages": [
        {"train": {"epochs": 1, "lr": 0.05, "batch_size": 32}},
        {"prune": {"sparsity": {"fc1": 0.9, "fc2": 0.8, "fc3": 0.5},
                   "retrain": {"epochs": 1, "lr": 0.01, "batch_size": 32, "grad_compression": "terngrad"}}},
        "evaluate",
    ],
}


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        seen = {}

        def keep(name, ctx):
            if name == "prune":
                seen["masks"] = {k: v.clone() for k, v in ctx.masks.items()}
                seen["state"] = {k: v.clone() for k, v in ctx.model.state_dict().items()}

        report = run_recipe(parse_recipe(RECIPE), f"{folder}/m.nnc", stage_hook=keep)
        torch.save({"masks": seen["masks"], "state": seen["state"], "report_keys": sorted(report)},
                   f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes start and import torch (~15 s on a shared 2-core machine)
def test_two_gloo_processes_keep_masks_identical_and_zero(tmp_path):
    folder = str(tmp_path)
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_worker, args=(folder,), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["masks"].keys() == r1["masks"].keys() == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k])
        assert not r0["state"][k][~r0["masks"][k]].any()  # pruned weights exactly zero after retraining
        assert not r1["state"][k][~r1["masks"][k]].any()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k])
    assert (tmp_path / "m.nnc").exists()
    assert "table" in r0["report_keys"] and "table" not in r1["report_keys"]  # rank 1 wrote nothing


def test_stages_that_cannot_run_distributed_are_refused(monkeypatch):
    recipe = parse_recipe({"name": "x", "stages": [{"train": {}}, {"structured": {"target": 0.3}}]})
    check_distributed(recipe)  # one process: fine
    monkeypatch.setattr("nncompress.recipes.runner.world", lambda: (0, 2))
    with pytest.raises(ConfigError, match=r"stages\[1\].structured cannot run distributed"):
        check_distributed(recipe)


def test_grad_compression_is_checked():
    from nncompress.train import TrainConfig

    with pytest.raises(ConfigError, match="grad_compression 'zip'"):
        TrainConfig(grad_compression="zip")
    assert TrainConfig(grad_compression="terngrad-packed").grad_compression == "terngrad-packed"
