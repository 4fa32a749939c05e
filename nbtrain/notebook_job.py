"""The main job: execute the checklist notebook headless and keep the executed copy.

    python -m nbtrain.notebook_job                    # generated shapes data set (offline)
    python -m nbtrain.notebook_job --data PATH        # your photos: PATH/train, PATH/valid
    python -m nbtrain.notebook_job --out out/run.ipynb

The notebook runs in a real Jupyter kernel (nbclient), with its plots and widgets'
static fallbacks stored in the executed copy, and its last line, the final accuracy,
is printed here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "checklist.ipynb"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m nbtrain.notebook_job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", default=None,
                    help="image folder with train/ and valid/ (or val/); default: a generated "
                    "shapes data set, offline")
    ap.add_argument("--notebook", type=Path, default=NOTEBOOK)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "checklist.ipynb")
    ap.add_argument("--size", type=int, default=None, help="image size (notebook default 224)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = ap.parse_args(argv)

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    if args.data is not None and not Path(args.data).is_dir():
        print(f"error: no image folder at {args.data}", file=sys.stderr)
        return 2
    # The notebook reads its settings from the environment; "shapes" means the generated set.
    os.environ["NBTRAIN_DATA"] = str(Path(args.data).resolve()) if args.data else "shapes"
    if args.size:
        os.environ["NBTRAIN_SIZE"] = str(args.size)
    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")  # this environment's python3 kernel
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    print(f"running {args.notebook} on {os.environ['NBTRAIN_DATA']} ...", flush=True)
    t0 = time.perf_counter()
    failed = None
    try:
        client.execute()
    except CellExecutionError as e:
        failed = e
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, args.out)
    elapsed = time.perf_counter() - t0
    if failed is not None:
        print(f"the notebook failed after {elapsed:.0f} s; the executed copy is {args.out}:\n"
              f"{str(failed).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    lines = [
        line
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
        for line in out.get("text", "").splitlines()
    ]
    final = [line for line in lines if line.startswith("final accuracy")]
    print(f"executed in {elapsed:.0f} s; executed notebook: {args.out}")
    print(final[-1] if final else "no final accuracy line was printed", flush=True)
    return 0 if final else 1


if __name__ == "__main__":
    sys.exit(main())
