"""DDP: two CPU processes (gloo) train a smoke teacher and end with identical weights."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, data: str, run_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from protocol import load_dataset
    from training.cli import init_distributed
    from training.teachers import build_teacher, resolve_setup
    from training.trainer import fit

    try:
        assert init_distributed() == (rank, WORLD) and dist.get_backend() == "gloo"
        assert init_distributed() == (rank, WORLD)  # a second call (run_all, then the teacher) joins nothing new
        ds = load_dataset(data)
        setup = resolve_setup("temporal", "smoke", ds.num_items, seed=7, overrides={"batch_size": 16}, progress=False)
        task = build_teacher("temporal", ds, setup)
        if rank == 1:  # a different start on rank 1: DDP must broadcast rank 0's weights
            with torch.no_grad():
                for p in task.parameters():
                    p.add_(0.1)
        torch.save({k: v.clone() for k, v in task.state_dict().items()}, Path(out_dir) / f"init{rank}.pt")
        metrics = fit(task, ds, setup.train, run_dir, resume=False)
        assert bool(metrics) == (rank == 0)
        torch.save(task.state_dict(), Path(out_dir) / f"last{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_two_ranks_end_with_identical_weights(tiny_path: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    mp.spawn(_worker, args=(_free_port(), str(tiny_path), str(run_dir), str(tmp_path)), nprocs=WORLD, join=True)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)  # rank 0, after the last epoch
    last1 = torch.load(tmp_path / "last1.pt", weights_only=True)
    init0 = torch.load(tmp_path / "init0.pt", weights_only=True)
    init1 = torch.load(tmp_path / "init1.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and (run_dir / "metrics.json").is_file()
    assert set(ckpt["task"]) == set(last1)
    assert not torch.equal(init0["model.tok_emb.weight"], init1["model.tok_emb.weight"])
    for k, v in ckpt["task"].items():
        torch.testing.assert_close(last1[k], v, rtol=0, atol=1e-6, msg=f"{k} differs between ranks")
    moved = max(float((ckpt["task"][k].float() - init0[k].float()).abs().max()) for k in init0)
    assert moved > 1e-3  # they trained
    assert ckpt["history"][0]["train_loss"] > 0
