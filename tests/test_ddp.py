"""Two-process DDP (gloo, CPU) through the real torchrun entry: both ranks must end with identical
network parameters, BN buffers and W_cla, equal to rank 0's checkpoint."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from dyninfer.checkpoint import load_checkpoint, save_checkpoint
from dyninfer.models import create_model

WORKER = textwrap.dedent("""
    import os, sys
    from safetensors.torch import save_file
    from dyninfer.train import TrainConfig, train

    out, init = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(model="resnet20", dataset="digits", gated=True, init_checkpoint=init, epochs=1,
                      batch_size=16, lr=0.1, train_subset=64, test_subset=16, lambda_s=0.2, target_ratio=0.5,
                      threads=1, macs_samples=8, progress=False, out_dir=os.path.join(out, "run"))
    r = train(cfg)
    rank = int(os.environ["RANK"])
    state = {"model." + k: v for k, v in r.model.state_dict().items()}
    state.update({"loss." + k: v for k, v in r.criterion.state_dict().items()})
    # test-only: every rank writes what it holds
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"rank{rank}.safetensors"))
    print("rank", rank, "world", os.environ["WORLD_SIZE"], "steps-done")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_ddp_identical_state(tmp_path):
    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "init", create_model("resnet20", gated=False), {})
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script), str(tmp_path), str(init)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    assert any(k.startswith("loss.classifiers.") for k in r0)  # W_cla are part of the comparison
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
    # training happened (weights moved from the init) and rank 0 checkpointed exactly what it holds
    init_state, _ = load_checkpoint(init)
    assert not torch.equal(r0["model.layer1.0.conv1.weight"], init_state["layer1.0.conv1.weight"])
    last, _ = load_checkpoint(tmp_path / "run" / "last")
    for k, v in last.items():
        assert torch.equal(v, r0["model." + k]), k
