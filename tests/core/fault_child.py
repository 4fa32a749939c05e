"""A training process to kill: ``python -m tests.core.fault_child FOLDER [--slow-write S]``.

Runs the resume tests' plan (tests/core/test_resume.py) with a checkpoint at every epoch
end into FOLDER, a little slower than it can (so that a kill lands anywhere), and prints
``WRITING`` and ``WRITTEN`` around each checkpoint write. ``--slow-write S`` holds each
write for S seconds after its bytes are on disk, before the rename: the window in which
a kill leaves a whole temporary file behind. Used by tests/core/test_faults.py and
bench/faults.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


class Slow:
    """Listener: a few milliseconds per batch, so a run lasts long enough to be killed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_batch_end(self, state) -> None:
        time.sleep(self.seconds)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--slow-write", type=float, default=0.0)
    parser.add_argument("--batch-seconds", type=float, default=0.005)
    args = parser.parse_args(argv)

    import nbtrain.core.checkpoints as checkpoints
    import nbtrain.core.resume as resume
    from tests.core.test_resume import PLAN, new_learner

    torch.set_num_threads(1)
    checkpoints.SPACING = 0  # every epoch end: the most writes to land in
    save = resume.atomic_save

    def announced_save(payload, path):
        print("WRITING", flush=True)
        if args.slow_write:
            real_replace = resume.os.replace

            def slow_replace(src, dst):
                time.sleep(args.slow_write)
                real_replace(src, dst)

            resume.os.replace = slow_replace
            try:
                save(payload, path)
            finally:
                resume.os.replace = real_replace
        else:
            save(payload, path)
        print("WRITTEN", flush=True)

    resume.atomic_save = announced_save
    learn = new_learner(args.folder / "unused")
    learn.checkpoint_dir = args.folder
    learn.keep_checkpoints = 3
    print("READY", flush=True)
    learn.fit_stages(PLAN, listeners=[Slow(args.batch_seconds)])
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
