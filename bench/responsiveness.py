"""How long a user waits on three things that must feel immediate: the figures the tests
leave out (they check the behaviour behind each one deterministically instead).

- checking an image folder: ``ImageData.from_folder`` on the hymenoptera photos, which
  decodes every file once at 1/8 scale to find the bad ones (target <= 3 s on 2 cores;
  tests/vision/test_data.py checks the one decode per photo at draft scale);
- failing offline: ``create_body(arch)`` with no weights cached and no route to the host,
  which must fail at the probe instead of in a library's retries (target <= 10 s;
  tests/vision/test_models.py checks one probe and no library call). ``--probe`` also
  times the real probe of each host from this machine;
- Stop in a real kernel: a Stop click sent as a front end sends it (a comm message on the
  shell channel) mid-fit, to the kernel going idle, with the batches run after the Stop
  reached the learner (target <= 5 s, at most 1 batch; tests/test_magics.py checks the
  batches).

    python bench/responsiveness.py [--data FOLDER] [--repeats 3] [--probe] [--no-kernel]

Every time is printed with its kernel-time share (system over user + system CPU time) where
this process spent it; the kernel's Stop is wall time alone (another process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import torch

from cputime import Timing, fmt, median, timed

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
ARCHS = {"resnet18": "download.pytorch.org", "timm:resnet18": "huggingface.co"}


# ------------------------------------------------------------- checking a folder
def check_folder(folder: Path, repeats: int) -> None:
    from nbtrain.vision import BadImagesWarning, ImageData

    times = []
    for _ in range(repeats):
        with warnings.catch_warnings(), timed() as t:
            warnings.simplefilter("ignore", BadImagesWarning)
            data = ImageData.from_folder(folder, num_workers=0)
        times.append(t)
    n = len(data.train_items) + len(data.valid_items)
    print(
        f"checking {folder.name} ({n} images, {len(data.bad_files)} bad): median "
        f"{fmt(median(times))} of {repeats} (target <= 3 s)"
    )


# -------------------------------------------------------------- failing offline
def offline_failure(arch: str, repeats: int) -> None:
    import nbtrain.vision.models as models

    times = []
    with (
        tempfile.TemporaryDirectory() as home,
        mock.patch.dict(os.environ, {"TORCH_HOME": home}),
        mock.patch.object(models, "_host_reachable", lambda host: False),
        mock.patch.object(models, "_timm_weights_cached", lambda name: (False, ARCHS[arch])),
    ):
        for _ in range(repeats):
            with timed() as t:
                try:
                    models.create_body(arch)
                except RuntimeError:
                    pass
                else:
                    raise SystemExit(f"create_body({arch!r}) did not fail offline")
            times.append(t)
    print(f"offline failure of {arch!r}: median {fmt(median(times), '.3f')} (target <= 10 s)")


def probe(host: str) -> None:
    import nbtrain.vision.models as models

    with timed() as t:
        reachable = models._host_reachable(host)
    print(f"probe of {host} from here: {fmt(t, '.3f')}, reachable: {reachable}")


# ---------------------------------------------------------------- Stop in a kernel
KERNEL_SETUP = """
import torch
torch.set_num_threads(1)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from nbtrain.core import DataLoaders, Learner
%load_ext nbtrain
g = torch.Generator().manual_seed(0)
x = torch.rand(8192, 2, generator=g) * 2 - 1
y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
data = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), None)
model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
learn = Learner(model, data, device="cpu")
stops = []  # the fit's iteration each time a Stop reached the learner
def record_stop(request_stop=learn.request_stop):
    running, state = request_stop(), learn.running
    stops.append(None if state is None else state.it)
    return running
learn.request_stop = record_stop
"""
KERNEL_FIT = "stops.clear()\n%fit_cycles learn --lr 0.05 --cycles 30"
KERNEL_REPORT = (
    'import json; print("RESULT=" + json.dumps({"status": learn.fits[-1].status, '
    '"it": learn.fits[-1].it, "stops": stops}))'
)


class Kernel:
    """A Jupyter kernel of this environment, driven over its channels as a front end would."""

    def __init__(self) -> None:
        from jupyter_client import KernelManager

        env = {**os.environ, "JUPYTER_PREFER_ENV_PATH": "1", "NBTRAIN_FRONTEND": "auto"}
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(REPO))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def execute(self, code: str, on_msg=None, timeout: float = 300) -> str:
        """Run ``code``, passing every iopub message (or None) to ``on_msg``; its stdout."""
        msg_id, out, deadline = self.kc.execute(code), [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.01)
            except queue.Empty:
                msg = None
            if on_msg is not None:
                on_msg(msg)
            if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                raise RuntimeError(f"the kernel failed on {code[:60]!r}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
        raise TimeoutError(f"the kernel was not idle {timeout:.0f} s after {code[:60]!r}")

    def stop_mid_fit(self) -> tuple[float, dict]:
        """Seconds from the Stop click to the kernel going idle, and the kernel's report."""
        found: dict = {"stop": None, "live": False, "clicked": None}

        def click_when_live(msg) -> None:
            if msg is not None and msg["msg_type"] in ("comm_open", "comm_msg"):
                state = msg["content"]["data"].get("state", {})
                if state.get("_model_name") == "ButtonModel" and state.get("description") == "Stop":
                    found["stop"] = msg["content"]["comm_id"]
                value = str(state.get("value", ""))
                if value.startswith("it ") and not value.startswith("it 0/"):
                    found["live"] = True  # the progress label moved: training is running
            if found["stop"] and found["live"] and found["clicked"] is None:
                content = {
                    "comm_id": found["stop"],
                    "data": {"method": "custom", "content": {"event": "click"}},
                }
                self.kc.session.send(
                    self.kc.shell_channel.socket, self.kc.session.msg("comm_msg", content)
                )
                found["clicked"] = time.perf_counter()

        self.execute(KERNEL_FIT, click_when_live)
        idle = time.perf_counter()
        if found["clicked"] is None:
            raise RuntimeError("the fit ended before Stop could be clicked")
        line = self.execute(KERNEL_REPORT).strip().splitlines()[-1]
        return idle - found["clicked"], json.loads(line.removeprefix("RESULT="))

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def kernel_stop(repeats: int) -> None:
    kernel = Kernel()
    try:
        kernel.execute(KERNEL_SETUP)
        seconds, after = [], []
        for r in range(repeats):
            wall, report = kernel.stop_mid_fit()
            if report["status"] != "stopped" or len(report["stops"]) != 1:
                raise RuntimeError(f"the Stop did not end the fit: {report}")
            seconds.append(Timing(wall, float("nan")))
            after.append(report["it"] - report["stops"][0])
            print(f"round {r + 1}: Stop to idle {wall:.3f} s, {after[-1]} batch(es) after it")
    finally:
        kernel.close()
    print(
        f"Stop in a real kernel: median {median(seconds).wall:.3f} s to idle (target <= 5 s), "
        f"at most {max(after)} batch(es) after the Stop reached the learner (target <= 1)"
    )


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("NBTRAIN_HYMENOPTERA", HYMENOPTERA)),
        help="image folder with train/ and val/ or valid/ (default: hymenoptera)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe", action="store_true", help="also time the real host probes")
    ap.add_argument("--no-kernel", action="store_true", help="leave out the kernel's Stop")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}"
    )
    if args.data.is_dir():
        check_folder(args.data, args.repeats)
    else:
        print(f"no image folder at {args.data}: checking left out (give one with --data)")
    for arch, host in ARCHS.items():
        offline_failure(arch, args.repeats)
        if args.probe:
            probe(host)
    if not args.no_kernel:
        kernel_stop(args.repeats)


if __name__ == "__main__":
    main()
