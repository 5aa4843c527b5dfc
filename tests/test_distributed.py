"""torchrun with 2 CPU processes (gloo): DDP fine-tuning with resume, and sharded pseudo-labelling."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssl_seg.data.synthetic import write_dataset

TINY = ["--steps", "4", "--batch-size", "2", "--tile-size", "64", "--num-workers", "0", "--no-progress",
        "--set", "val_every=2", "log_every=1", "warmup_steps=1"]


# Run by torchrun in each rank: fine-tune through the CLI (which ends the process group), then save
# the rank's weights before and after training next to the run.
RANKS_IN_SYNC = """
import os
import sys
import torch
from ssl_seg import cli
from ssl_seg.train import loop as trainer

built, build_model = [], trainer.build_model
trainer.build_model = lambda *args, **kwargs: built.append(build_model(*args, **kwargs)) or built[-1]
flat = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])
torch.manual_seed(int(sys.argv[sys.argv.index("--seed") + 1]))
initial = flat(build_model("segformer-tiny", 4))
assert cli.main(sys.argv[1:]) == 0
out = sys.argv[sys.argv.index("--out") + 1]
torch.save({"initial": initial, "trained": flat(built[0])}, f"{out}/weights_rank{os.environ['RANK']}.pt")
"""

def torchrun_command(*args, script=None):
    target = [str(script)] if script else ["-m", "ssl_seg"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args]


def torchrun(*args, timeout=240, script=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(torchrun_command(*args, script=script), capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "data"
    write_dataset(root, labeled=4, unlabeled=5, test=1, size=(64, 80), seed=5, progress=False)
    return root


def test_ddp_finetune_and_resume(dataset, tmp_path):
    run = tmp_path / "run"
    torchrun("finetune", "--data", str(dataset), "--out", str(run), *TINY, "--stop-after", "2")
    assert torch.load(run / "latest.pth", weights_only=True)["step"] == 2
    torchrun("finetune", "--data", str(dataset), "--out", str(run), *TINY, "--resume")
    state = torch.load(run / "latest.pth", weights_only=True)
    assert state["step"] == 4
    # the resumed run equals an uninterrupted one, weight for weight (each rank goes on with its own draws)
    torchrun("finetune", "--data", str(dataset), "--out", str(tmp_path / "full"), *TINY)
    full = torch.load(tmp_path / "full" / "latest.pth", weights_only=True)
    for key, value in full["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0, msg=key)
    # Only rank 0 writes: one event file per invocation, no stray per-rank folders.
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "latest.pth", "tb"]


def test_ctrl_c_under_torchrun_stops_every_rank_after_one_step_and_saves_it(dataset, tmp_path, mark_third_step):
    script, marks = mark_third_step
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MARKS": str(marks)}
    command = torchrun_command("finetune", "--data", str(dataset), "--out", str(run), "--steps", "100000",
                               "--batch-size", "2", "--tile-size", "64", "--num-workers", "1", "--no-progress",
                               "--set", "val_every=100000", "warmup_steps=1", script=script)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(marks.iterdir())) < 2:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: torchrun forwards it to every rank
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    step = torch.load(run / "latest.pth", weights_only=True)["step"]
    assert 3 <= step < 100000 and err.count(f"interrupted (stopped after step {step}, saved in") == 1, err[-3000:]
    torchrun("finetune", "--data", str(dataset), "--out", str(run), "--resume", "--stop-after", "1", "--no-progress")
    assert torch.load(run / "latest.pth", weights_only=True)["step"] == step + 1


def test_sigterm_to_one_rank_stops_both_after_that_step(dataset, tmp_path, mark_third_step):
    # rank 1 and its DataLoader worker are signalled, rank 0 is not: it must stop after the same step
    script, marks = mark_third_step
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MARKS": str(marks), "SIGNAL": "SIGTERM",
           "SIGNAL_RANK": "1"}
    command = torchrun_command("finetune", "--data", str(dataset), "--out", str(run), "--steps", "100000",
                               "--batch-size", "2", "--tile-size", "64", "--num-workers", "1", "--no-progress",
                               "--set", "val_every=100000", "warmup_steps=1", script=script)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, start_new_session=True)
    assert done.returncode != 0
    assert torch.load(run / "latest.pth", weights_only=True)["step"] == 3, done.stderr[-3000:]
    assert done.stderr.count("interrupted (stopped after step 3, saved in") == 1, done.stderr[-3000:]


def test_ddp_ranks_stay_in_sync(dataset, tmp_path):
    # Each rank draws other crops; only averaged gradients keep their weights bit-identical.
    script = tmp_path / "ranks_in_sync.py"
    script.write_text(RANKS_IN_SYNC)
    torchrun("finetune", "--data", str(dataset), "--out", str(tmp_path / "run"), "--model", "segformer-tiny",
             "--seed", "3", *TINY, script=script)
    ranks = [torch.load(tmp_path / "run" / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.testing.assert_close(ranks[0]["trained"], ranks[1]["trained"], rtol=0, atol=0)
    assert float((ranks[0]["trained"] - ranks[0]["initial"]).abs().max()) > 1e-4  # training moved them


def test_ddp_pseudo_label_merges_one_manifest(dataset, tmp_path):
    torchrun("finetune", "--data", str(dataset), "--out", str(tmp_path / "teacher"), *TINY)
    torchrun("pseudo-label", "--checkpoint", str(tmp_path / "teacher"), "--images", str(dataset),
             "--out", str(tmp_path / "pl"), "--tile-size", "64", "--threshold", "0.3", "--refine", "superpixel",
             "--no-progress")
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    unlabeled = sorted(p.stem for p in (dataset / "train" / "unlabeled").iterdir())
    assert sorted(manifest["images"]) == unlabeled
    assert len(list((tmp_path / "pl" / "masks").glob("*.png"))) == len(unlabeled)
    assert {p.name for p in (tmp_path / "pl" / "tb").iterdir()} == {"shard0", "shard1"}
