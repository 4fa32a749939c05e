"""A training process killed with SIGKILL (a dead kernel) loses at most the epoch in
progress: its newest complete checkpoint loads and resumes to the weights of a run that
was never killed, and a write cut short is never read. bench/faults.py runs 20 kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nbtrain.core.resume import CheckpointStore, read_checkpoint
from tests.core.test_resume import PLAN, new_learner, same, weights

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: the same arithmetic, bit for bit
    try:
        learn = new_learner(tmp_path_factory.mktemp("reference"))
        learn.fit_stages(PLAN)
    finally:
        torch.set_num_threads(threads)
    return weights(learn)


def start_child(folder: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.core.fault_child", str(folder), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def resume_from(folder: Path, tmp_path: Path) -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learn = new_learner(tmp_path / "fresh", init_seed=42)
        learn.checkpoint_dir = folder
        learn.resume()
    finally:
        torch.set_num_threads(threads)
    return weights(learn)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_kill_at_a_random_moment_resumes_from_the_last_complete_checkpoint(
    reference, tmp_path, seed
):
    folder = tmp_path / "resume"
    proc = start_child(folder, "--batch-seconds", "0.03")  # 5 epochs of 8 batches
    assert proc.stdout is not None
    rng = random.Random(seed)
    # The moment is set by the run's progress, not by the clock (a loaded machine is
    # slower): after the k-th checkpoint, somewhere in the next epoch (~0.25 s).
    k, written = rng.randint(1, 3), 0
    for line in proc.stdout:
        written += line.strip() == "WRITTEN"
        if written == k:
            break
    time.sleep(rng.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    paths = CheckpointStore(folder).paths()
    newest = read_checkpoint(paths[-1])  # every listed checkpoint is whole
    finished = newest["status"] == "done" and newest["stage"] == len(PLAN) - 1
    assert not finished, "the run ended before the kill"
    assert same(resume_from(folder, tmp_path), reference)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(reference, tmp_path):
    folder = tmp_path / "resume"
    proc = start_child(folder, "--slow-write", "2")
    assert proc.stdout is not None
    writes = 0
    for line in proc.stdout:
        writes += line.strip() == "WRITING"
        if writes == 2:
            break
    time.sleep(0.5)  # the second write's bytes are on disk; it is not renamed yet
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = list(folder.glob(".*.ckpt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    (complete,) = CheckpointStore(folder).paths()  # the first; the second never completed
    assert complete.name.endswith("-00000001.ckpt")
    assert same(resume_from(folder, tmp_path), reference)
    assert not list(folder.glob(".*.tmp"))  # the resumed run (the same run) cleared it
