"""Run a fit saved from the notebook on several processes or machines, under ``torchrun``.

In the notebook, save the learner and its stages::

    import nbtrain
    nbtrain.save_job(learn, [nbtrain.Stage(1e-2, cycles=3, cycle_mult=2)], "run.job")

On each machine (the same files: the data folder at the same path, the job file)::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m nbtrain.launch run.job --out result.pt

Back in the notebook, the learner takes the result as after ``procs=N``::

    nbtrain.load_result(learn, "result.pt")

Each rank trains its part of every global batch of ``WORLD_SIZE x bs``
(:mod:`nbtrain.core.distributed`); rank 0 prints a line per epoch and writes the result.
"""

from __future__ import annotations

import argparse

from nbtrain.core.distributed import launch_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbtrain.launch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("job", help="the file nbtrain.save_job wrote")
    parser.add_argument("--out", default="result.pt", help="where rank 0 writes the result")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cuda", "cpu"),
        help="auto: GPU LOCAL_RANK when the machine has GPUs, else the CPU (default)",
    )
    args = parser.parse_args(argv)
    return launch_main(args.job, args.out, args.device)


if __name__ == "__main__":
    raise SystemExit(main())
