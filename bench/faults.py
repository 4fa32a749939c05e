"""The reliability campaign's costly parts, as a table: tries, failures, data lost.

- ``kill -9``: a training process (``tests/core/fault_child.py``: the resume tests' two
  stages, a checkpoint at every epoch end, each write held open 50 ms) is killed with
  SIGKILL at a random moment, N times; some kills land in a checkpoint write. After each,
  the newest complete checkpoint must load and resume to the weights of a run never
  killed (bit for bit), and no partial file may be picked up.
- ``disk full`` and ``read-only``: the checkpoint folder, then the activation-cache folder,
  on a real tmpfs that is too small or mounted read-only (needs root and ``mount``; skipped
  with a reason otherwise). A checkpoint that cannot be written must stop the fit cleanly
  with one line; a cache that cannot be written must be one line while training goes on.

The cheap parts run in CI: tests/core/test_interrupts.py (KeyboardInterrupt at 100 random
points of fit, lr_find and the cache build), tests/test_bad_inputs.py (56 bad inputs),
tests/core/test_resume.py (20 interruption points, malicious, truncated and foreign
checkpoints), tests/core/test_faults.py (4 kills), tests/core/test_features.py (damaged
cache files).

    python bench/faults.py [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests' fixtures: the same plan and data as in CI


def kill_campaign(kills: int, seed: int) -> dict[str, int]:
    from nbtrain.core.resume import CheckpointStore, read_checkpoint
    from tests.core.test_resume import PLAN, new_learner, same, weights

    torch.set_num_threads(1)
    reference = new_learner(Path(tempfile.mkdtemp()))
    reference.checkpoint_dir = False
    reference.fit_stages(PLAN)
    expected = weights(reference)
    rng = random.Random(seed)
    counts = dict(tries=0, in_write=0, before_first=0, resumed_exact=0, failures=0, partial_read=0)
    for i in range(kills):
        folder = Path(tempfile.mkdtemp()) / "resume"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.core.fault_child", str(folder),
             "--batch-seconds", "0.03", "--slow-write", "0.05"],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        delay = rng.uniform(0.05, 1.6)  # the run lasts ~1.5 s
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest = proc.communicate(timeout=30)[0].split()
        counts["tries"] += 1
        in_write = bool(rest) and rest[-1] == "WRITING"
        counts["in_write"] += in_write
        store = CheckpointStore(folder)
        partial = list(folder.glob(".*.ckpt.*.tmp")) if folder.is_dir() else []
        for path in store.paths():  # what resume may pick: every one must be whole
            try:
                read_checkpoint(path)
            except ValueError:
                counts["partial_read"] += 1
        newest = store.latest()
        what = "in a write" if in_write else "between writes"
        if newest is None:
            counts["before_first"] += 1
            print(f"kill {i + 1:2d} at {delay:.2f} s ({what}): no checkpoint yet, nothing to lose")
            continue
        try:
            read_checkpoint(newest)
            learn = new_learner(folder.parent / "fresh", init_seed=7)
            learn.checkpoint_dir = folder
            if read_checkpoint(newest)["status"] == "done":
                ok = True  # the run had ended: its final weights are in the checkpoint
            else:
                learn.resume()
                ok = same(weights(learn), expected)
        except Exception as exc:  # a failure of the campaign, reported, not raised
            print(f"kill {i + 1:2d}: FAILED: {type(exc).__name__}: {exc}")
            ok = False
        counts["resumed_exact"] += ok
        counts["failures"] += not ok
        print(
            f"kill {i + 1:2d} at {delay:.2f} s ({what}): newest {newest.name}, "
            f"{len(partial)} partial file(s) left and ignored, "
            f"resumed {'to the same weights' if ok else 'DIFFERENTLY'}"
        )
    return counts


@contextlib.contextmanager
def tmpfs(size: str, *, read_only: bool = False):
    folder = Path(tempfile.mkdtemp())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                   check=True, capture_output=True)  # fmt: skip
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def storage_faults() -> list[tuple[str, str, str]]:
    from nbtrain.core.features import CacheWarning, FeatureCache
    from nbtrain.core.learner import CheckpointWarning
    from tests.core.test_features import make_learner

    rows = []
    for name, size, ro in (("disk full", "16k", False), ("read-only", "1m", True)):
        for target in ("checkpoint", "cache"):
            try:
                mount = tmpfs(size, read_only=ro)
                folder = mount.__enter__()
            except (OSError, subprocess.CalledProcessError) as exc:
                rows.append((f"{name}: {target} folder", "skipped", f"no mount here ({exc})"))
                continue
            try:
                learn = make_learner(Path(tempfile.mkdtemp()))
                if target == "checkpoint":
                    learn.checkpoint_dir = folder / "resume"
                else:
                    learn.checkpoint_dir = False
                    learn.feature_cache = FeatureCache(folder / "cache")
                    learn.precompute = True
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    state = learn.fit_cycles(0.1, cycles=3)
                lines = [
                    str(w.message)
                    for w in caught
                    if issubclass(w.category, CheckpointWarning | CacheWarning)
                ]
                finite = all(torch.isfinite(t).all() for t in learn.model.state_dict().values()
                             if t.is_floating_point())  # fmt: skip
                expected = "stopped" if target == "checkpoint" else "done"
                ok = state.status == expected and len(lines) == 1 and finite
                rows.append((
                    f"{name}: {target} folder",
                    "ok" if ok else "FAILED",
                    f"fit {state.status}, {len(lines)} line: {lines[0][:90] if lines else '-'}",
                ))  # fmt: skip
            finally:
                mount.__exit__(None, None, None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    counts = kill_campaign(args.kills, args.seed)
    rows = storage_faults()
    print(f"\nreliability campaign ({time.perf_counter() - t0:.0f} s):")
    print(
        f"  kill -9 of a training process: {counts['tries']} tries, {counts['in_write']} "
        f"during a checkpoint write, {counts['before_first']} before the first checkpoint; "
        f"{counts['resumed_exact']} resumed to the uninterrupted run's weights bit for bit, "
        f"{counts['failures']} failures, {counts['partial_read']} listed checkpoints not "
        "whole; data lost: at most the epoch in progress"
    )
    for what, outcome, detail in rows:
        print(f"  {what:28s} {outcome:8s} {detail}")


if __name__ == "__main__":
    main()
