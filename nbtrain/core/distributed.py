"""One fit on N processes: ``torch.distributed`` with DistributedDataParallel.

``learn.fit_stages(stages, procs=N)`` (and ``%fit_cycles ... --procs N``) runs the same
stages on N local worker processes, NCCL with one GPU each on CUDA, gloo on the CPU, and
puts the result back in the notebook's learner: weights, optimizer, history, snapshots.

How it goes
-----------
- The learner and its plan are pickled with ``cloudpickle``, which sends classes and
  functions defined in the notebook itself (a model class in ``__main__``, a lambda
  transform) by value. What cannot be pickled is named in one line before any worker
  starts.
- Workers are **spawned**: a fresh interpreter each. Forking a kernel that already ran
  torch copies a process whose OpenMP pool, allocator thread and (maybe) CUDA context are
  not fork-safe: children hang in OpenMP or fail on CUDA (fastai #4015). A spawned worker
  sees only ``CUDA_VISIBLE_DEVICES`` set to its own GPU, so CUDA already initialised in the
  notebook does not matter.
- Each rank trains on its share of every global batch of ``N x bs`` images: the ranks
  draw the same permutation from copies of the same loader generator, and rank ``r`` takes
  the ``r``-th run of ``bs`` items of each global batch (:class:`ShardBatches`). So the N
  processes see, per step, exactly the batch one process with batch ``N x bs`` would, and
  DDP's averaged gradient is that process's gradient.
- Rank 0 sends the loop's events (batch ends at most every 0.1 s) to the notebook, whose
  listeners (the progress view, the table) see them as in one process. At every batch end
  the ranks agree by an all-reduce whether a stop was asked for (Stop, a kernel interrupt),
  so every rank stops after the same batch.
- Every rank validates on the whole validation set (the same numbers on every rank, so
  ``patience`` decides alike everywhere); rank 0's result is what comes back.
- A worker that fails or dies ends the fit on every rank within a second: the others are
  terminated, the learner in the notebook is left as it was before the fit, and one line
  names the rank and its error. Workers also die with the notebook's process
  (``PR_SET_PDEATHSIG``), so none is left behind by a dead kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import math
import multiprocessing
import os
import pickle
import queue as queue_module
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from nbtrain.core.checks import whole_number
from nbtrain.core.cpu import tune_cpu

if TYPE_CHECKING:
    from nbtrain.core.learner import Learner
    from nbtrain.core.stages import Plan
    from nbtrain.core.state import TrainState

START_METHOD = "spawn"  # see the module doc: fork is unsafe after torch ran in the kernel
EVENT_INTERVAL_S = 0.1  # rank 0 sends batch events at most this often
# A collective that waits longer than this has lost a rank. The notebook's process ends
# the fit at once when a rank fails, so this only bounds what it cannot see.
TIMEOUT_S = 1800
STOP_GRACE_S = 60.0  # after a Stop or interrupt, how long the ranks get to finish a batch
# After the first sign of a failure, how long to wait for its cause to show: a rank killed
# by kill -9 is often reported first by a peer whose collective lost its connection.
ERROR_SETTLE_S = 1.0
END_GRACE_S = 30.0  # once rank 0's result is in, how long the ranks get to leave
PARTS = ("model", "data", "loss_fn", "metrics", "opt_func")
PEER_LOST = ("Connection reset", "Connection closed", "connection closed", "Broken pipe",
             "NCCL communicator was aborted", "recvBytes", "Read error", "Write error")  # fmt: skip


RESULT_FORMAT = "nbtrain-procs-result"
JOB_FORMAT = "nbtrain-procs-job"


class DistributedError(RuntimeError):
    """A worker of a distributed fit failed; the message names the rank and the error."""


def resolve_procs(procs: int | str | None) -> int:
    """How many processes: a whole number >= 1, or ``"auto"``: every visible GPU, else 1
    (on the CPU one process with every core trains faster than several sharing them:
    ``bench/distributed.py``)."""
    if procs is None:
        return 1
    if procs == "auto":
        return max(1, torch.cuda.device_count())
    if isinstance(procs, str):
        if not procs.isdigit():
            raise ValueError(f"procs must be a whole number >= 1 or 'auto', got {procs!r}")
        procs = int(procs)
    return whole_number("procs", procs, minimum=1)


# ------------------------------------------------------------------------ sharding
def shard_spans(n: int, bs: int, rank: int, world: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` positions, in an epoch's order of ``n`` items, that rank
    ``rank`` trains on: the ``rank``-th run of ``bs`` items of each global batch of
    ``world x bs``. A last, partial global batch is split evenly (its remainder after
    ``world`` equal parts dropped); when it cannot give each rank 2 items it is dropped
    (a BatchNorm cannot train on one)."""
    size = bs * world
    full = n // size
    spans = [(g * size + rank * bs, g * size + (rank + 1) * bs) for g in range(full)]
    part = (n - full * size) // world
    if part >= 2:
        start = full * size + rank * part
        spans.append((start, start + part))
    return spans


class ShardBatches(Sampler[list[int]]):
    """Rank ``rank``'s batches from ``sampler``'s order (see :func:`shard_spans`).

    Every rank iterates its own copy of the same sampler (a RandomSampler over copies of
    one generator), so every rank draws the same order and takes its own part of it."""

    def __init__(self, sampler: Any, bs: int, rank: int, world: int) -> None:
        self.sampler, self.bs, self.rank, self.world = sampler, bs, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        for start, end in shard_spans(len(order), self.bs, self.rank, self.world):
            yield order[start:end]

    def __len__(self) -> int:
        return len(shard_spans(len(self.sampler), self.bs, self.rank, self.world))


@dataclass(frozen=True)
class Shard:
    """This process's place in a distributed fit; the Learner asks it for its loader and
    module (see ``Learner._training_inputs``)."""

    rank: int
    world: int
    device: torch.device | str = "cpu"
    marks: str | None = None  # the folder where rank 0 marks each activation cache it built

    def all_finite(self, finite: bool) -> bool:
        """Whether every rank's loss is finite (an all-reduce: call it on every rank)."""
        flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def share_features(self, learn: Learner) -> None:
        """precompute: rank 0 builds the activation cache (or reads it from disk) before
        the others read it from disk, so no rank computes what another did. It waits on a
        file, not a collective: a long build must not run into the group's timeout.
        Building draws from no rank's random stream, so the ranks' shuffling stays alike.
        Without a disk cache every rank builds its own."""
        with torch.random.fork_rng(devices=[]):
            if learn.feature_cache.directory is None or self.world == 1:
                learn.features()
                return
            key = learn.feature_cache.key(learn.model.body, learn._feature_parts())  # type: ignore[arg-type]
            marker = Path(self.marks or tempfile.gettempdir()) / f"cache-{key}.done"
            if self.rank == 0:
                learn.features()
                marker.touch()
                return
            while not marker.exists():
                time.sleep(0.1)
            learn.features()

    def loader(self, loader: DataLoader, bs: int) -> DataLoader:
        """``loader``'s data, this rank's part of each global batch; same workers,
        collation and generator (its base seed is drawn as the original loader's)."""
        return DataLoader(
            loader.dataset,
            batch_sampler=ShardBatches(loader.sampler, bs, self.rank, self.world),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            persistent_workers=loader.persistent_workers,
        )

    def batches(self, n: int, bs: int) -> int:
        return len(shard_spans(n, bs, self.rank, self.world))

    def module(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` wrapped for gradient averaging; a model with nothing to train (all
        frozen) is returned as it is."""
        if not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [device.index or 0] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


# -------------------------------------------------------------------- the notebook side
@dataclass
class Job:
    """What each worker receives beside the learner (pickled apart, by cloudpickle)."""

    stages: list[Any]
    rng: Any  # the notebook's random states: every rank starts from them, as one process would
    threads: int
    gpus: list[str]
    timeout_s: float


def check_sendable(learn: Learner) -> bytes:
    """The learner as the workers receive it (``torch.save`` through cloudpickle, so its
    tensors load onto whatever device a worker names); ValueError naming what cannot be
    sent. Its earlier snapshots stay here: no rank needs them."""
    import cloudpickle

    snapshots, learn.snapshots = learn.snapshots, []
    buffer = io.BytesIO()
    try:
        torch.save(learn, buffer, pickle_module=cloudpickle)  # the model pickled once
    except Exception:
        _name_unsendable(learn)  # only now, attribute by attribute: which one
        raise
    finally:
        learn.snapshots = snapshots
    return buffer.getvalue()


def _name_unsendable(learn: Learner) -> None:
    """Raise ValueError naming the first attribute of ``learn`` that cannot be pickled."""
    import cloudpickle

    for name, value in learn.__getstate__().items():
        if name == "snapshots":
            continue
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            what = name.removeprefix("_") if name in PARTS else f"attribute {name!r}"
            raise ValueError(
                f"cannot send the learner's {what} to worker processes "
                f"({type(exc).__name__}: {_line(exc)}); define it in a module or the "
                "notebook without open files, locks or generators, or train in one process"
            ) from None


def load_learner(data: bytes, device: torch.device) -> Any:
    """A learner from :func:`check_sendable`'s bytes, on ``device``."""
    learn = torch.load(io.BytesIO(data), map_location=device, weights_only=False)  # our own
    place(learn, device)
    return learn


def place(learn: Learner, device: torch.device) -> None:
    """Put ``learn`` on ``device``: its model, optimizer state and mixed precision (the
    device type's default: bfloat16 or float16 on CUDA, none on the CPU)."""
    from nbtrain.core.stepper import amp_dtype

    learn.model.to(device)
    for values in learn.opt.state.values():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:  # a step count stays put
                values[key] = value.to(device)
    if torch.device(learn.device).type != device.type:
        learn.dtype = amp_dtype(device, None)
        use_scaler = learn.dtype == torch.float16
        learn.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    learn.device = device


def run(
    learn: Learner,
    plan: Plan,
    *,
    procs: int,
    listeners: Sequence[object] = (),
    on_start: Callable[[], None] = lambda: None,
) -> list[TrainState]:
    """Train ``plan`` (planned with this learner's ``Shard(0, procs)``) on ``procs`` worker
    processes and put the result into ``learn`` (see the module doc). Returns the stages'
    states, as ``fit_stages`` does; DistributedError (one line) when a rank failed, the
    learner then as it was before."""
    from nbtrain.core.resume import RNGStates

    device = learn.device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"procs works on CUDA (NCCL) and the CPU (gloo), not on {device.type}")
    gpus = _gpus(procs) if device.type == "cuda" else []
    learner_bytes = check_sendable(learn)
    on_start()
    threads = max(1, (os.cpu_count() or 1) // procs) if device.type == "cpu" else 1
    folder = Path(tempfile.mkdtemp(prefix="nbtrain-procs-"))
    unsubscribe = [learn.events.subscribe(listener) for listener in listeners]
    workers: list[Any] = []
    learn._run_stop = threading.Event()  # learn.request_stop() (the Stop button) sets it
    try:
        job = folder / "job.pkl"
        stages = list(plan.stages)
        job.write_bytes(pickle.dumps(Job(stages, RNGStates.capture(), threads, gpus, TIMEOUT_S)))
        (folder / "learner.pkl").write_bytes(learner_bytes)
        context: Any = multiprocessing.get_context(START_METHOD)
        messages = context.Queue()
        stop = context.Event()
        workers = [
            context.Process(
                target=worker_main,
                args=(rank, procs, str(folder), messages, stop),
                name=f"nbtrain-rank-{rank}",
            )
            for rank in range(procs)
        ]
        for process in workers:
            process.start()
        try:
            result = _follow(learn, workers, messages, stop)
        except DistributedError as exc:
            raise DistributedError(f"{exc}; the learner is as it was before this fit") from None
        return apply_result(learn, plan, result)
    finally:
        _end(workers)
        learn._run_stop, learn._running = None, None
        for undo in unsubscribe:
            undo()
        shutil.rmtree(folder, ignore_errors=True)


def _gpus(procs: int) -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",")] if visible else None
    count = len(ids) if ids is not None else torch.cuda.device_count()
    if procs > count:
        raise ValueError(f"procs={procs} on CUDA needs {procs} GPUs; {count} visible")
    return ids[:procs] if ids is not None else [str(i) for i in range(procs)]


class _Mirror:
    """The notebook's copy of rank 0's state for one stage: listeners get the same object
    at every event, as in one process, and a Stop asked of it is seen here."""

    def __init__(self) -> None:
        self.states: dict[int, TrainState] = {}

    def update(self, state: TrainState) -> TrainState:
        mine = self.states.get(state.stage)
        if mine is None:
            self.states[state.stage] = state
            return state
        stop = mine._stop
        mine.__dict__.update(state.__dict__)
        mine._stop = stop
        return mine

    def stop_requested(self) -> bool:
        return any(state.stop_requested for state in self.states.values())


def _follow(learn: Learner, workers: list[Any], messages: Any, stop: Any) -> dict[str, Any]:
    """Replay rank 0's events until every worker has ended; stop them all on a Stop, an
    interrupt (then re-raised once the ranks have stopped) or a failed rank."""
    mirror = _Mirror()
    result: dict[str, Any] | None = None
    errors: list[tuple[int, str]] = []
    failed_at = interrupted_at = result_at = math.inf
    while True:
        try:
            message = messages.get(timeout=0.2)
        except queue_module.Empty:
            message = None
        except KeyboardInterrupt:
            interrupted_at = min(interrupted_at, time.monotonic())
            stop.set()
            continue
        try:
            if message is not None:
                kind, rank, body = message
                if kind == "error":
                    errors.append((rank, body))
                elif kind == "event":
                    name, state = body[0], mirror.update(pickle.loads(body[1]))
                    learn._running = state
                    learn.events.emit(name, state)
                elif kind == "done":
                    result, result_at = torch.load(body, weights_only=True), time.monotonic()
            if (learn._run_stop is not None and learn._run_stop.is_set()) or (
                mirror.stop_requested()
            ):
                stop.set()
            codes = [w.exitcode for w in workers]
            if errors or any(code not in (None, 0) for code in codes):
                failed_at = min(failed_at, time.monotonic())
                if time.monotonic() - failed_at >= ERROR_SETTLE_S or all(
                    code is not None for code in codes
                ):
                    raise DistributedError(_failure(errors, codes))
            elif result is not None and time.monotonic() - result_at > END_GRACE_S:
                return _finished(result, interrupted_at)  # a rank stuck in its teardown
            elif all(code is not None for code in codes) and messages.empty():
                if result is None:
                    raise DistributedError("the workers ended without a result")
                return _finished(result, interrupted_at)
            if time.monotonic() - interrupted_at > STOP_GRACE_S:
                raise DistributedError("the ranks did not stop within a minute of the interrupt")
        except KeyboardInterrupt:  # from a listener (a kernel interrupt in a worker thread)
            interrupted_at = min(interrupted_at, time.monotonic())
            stop.set()


def _finished(result: dict[str, Any], interrupted_at: float) -> dict[str, Any]:
    if interrupted_at < math.inf:
        result["interrupted"] = True
    return result


def _failure(errors: list[tuple[int, str]], codes: list[int | None]) -> str:
    """The line for a failed fit, naming its cause: a rank killed by a signal, else the
    first error that is not a peer's lost connection (what the other ranks see when one
    fails in a collective), else the first error, else a rank's exit code."""
    for rank, code in enumerate(codes):
        if code is not None and code < 0:
            return f"rank {rank} {_exit_words(code)}"
    own = [(r, e) for r, e in errors if not any(m in e for m in PEER_LOST)]
    if own or errors:
        rank, error = (own or errors)[0]
        return f"rank {rank} failed: {error}"
    rank, code = next((r, c) for r, c in enumerate(codes) if c not in (None, 0))
    return f"rank {rank} {_exit_words(code or 0)}"


def _exit_words(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _end(workers: list[Any]) -> None:
    """No worker outlives the fit: terminate, then kill, whatever is still running."""
    workers = [process for process in workers if process.pid is not None]  # started
    for process in workers:
        if process.exitcode is None:
            process.terminate()
    for process in workers:
        process.join(timeout=3)
        if process.exitcode is None:
            process.kill()
            process.join(timeout=3)


def apply_result(learn: Learner, plan: Plan, result: dict[str, Any]) -> list[TrainState]:
    """Put rank 0's end of the run (:func:`train_rank`'s plain result) into the notebook's
    learner: weights, freeze state, optimizer, size and precompute, shuffling, the stages'
    states in ``learn.fits`` and their snapshots."""
    from nbtrain.core.checkpoints import record, restore_state
    from nbtrain.core.resume import loader_generator
    from nbtrain.core.state import Snapshot, TrainState

    restore_state(learn, result["learner"])
    generator = loader_generator(learn.data.train)
    if generator is not None and result["generator"] is not None:
        generator.set_state(result["generator"])
    states = []
    for done in result["states"]:
        index = done["stage"]
        state = TrainState(
            schedule=plan.schedules[index], fit=len(learn.fits), plan=plan, stage=index,
            run=done["run"],
        )  # fmt: skip
        state.history = [record(r) for r in done["history"]]
        state.it, state.status, state.message = done["it"], done["status"], done["message"]
        state.epoch, state.cycle = done["epoch"], done["cycle"]
        state.loss, state.smooth_loss = done["loss"], done["smooth_loss"]
        state.valid_loss, state.metrics = done["valid_loss"], dict(done["metrics"])
        state.lrs, state.elapsed = tuple(done["lrs"]), done["elapsed"]
        learn.fits.append(state)
        states.append(state)
        for snap in done["snapshots"]:
            learn.snapshots.append(Snapshot(**{**snap, "fit": state.fit}))
    if result.get("interrupted"):
        if states and states[-1].status == "stopped":
            states[-1].status = "interrupted"
        raise KeyboardInterrupt("the distributed fit was interrupted; the learner holds its end")
    return states


def plain_result(learn: Learner, states: Sequence[TrainState], first_snapshot: int) -> dict:
    """Rank 0's end of the run, as tensors, numbers, strings, lists and dicts only (it
    loads with ``weights_only=True``, also from a ``torchrun`` job's file)."""
    from nbtrain.core.checkpoints import learner_state
    from nbtrain.core.resume import loader_generator

    generator = loader_generator(learn.data.train)
    new = learn.snapshots[first_snapshot:]
    return {
        "format": RESULT_FORMAT,
        "world": dist.get_world_size() if dist.is_initialized() else 1,
        "stages": [state.plan.stages[state.stage].as_dict() for state in states if state.plan],
        "learner": learner_state(learn),
        "generator": generator.get_state() if generator is not None else None,
        "states": [
            {
                "stage": state.stage,
                "run": state.run,
                "it": state.it,
                "epoch": state.epoch,
                "cycle": state.cycle,
                "status": state.status,
                "message": state.message,
                "loss": state.loss,
                "smooth_loss": state.smooth_loss,
                "valid_loss": state.valid_loss,
                "metrics": dict(state.metrics),
                "lrs": list(state.lrs),
                "elapsed": state.elapsed,
                "history": [dataclasses.asdict(r) for r in state.history],
                "snapshots": [
                    {
                        "cycle": snap.cycle,
                        "epoch": snap.epoch,
                        "valid_loss": snap.valid_loss,
                        "metrics": dict(snap.metrics),
                        "state_dict": snap.state_dict,
                    }
                    for snap in new
                    if snap.fit == state.fit
                ],
            }
            for state in states
        ],
    }


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------- the worker side
class _Forward:
    """Rank 0's listener: every event to the notebook, batch events at most every 0.1 s
    (pickled at once: the state goes on changing while the queue's thread sends it)."""

    def __init__(self, messages: Any) -> None:
        self.messages, self.last = messages, -math.inf

    def _send(self, name: str, state: TrainState) -> None:
        self.messages.put(("event", 0, (name, pickle.dumps(state))))

    def __getattr__(self, attr: str) -> Any:
        if not attr.startswith("on_"):
            raise AttributeError(attr)
        name = attr.removeprefix("on_")

        def send(state: TrainState) -> None:
            if name in ("batch_start", "batch_end"):
                now = time.monotonic()
                if now - self.last < EVENT_INTERVAL_S:
                    return
                if name == "batch_end":
                    self.last = now
            self._send(name, state)

        return send


class _RankSync:
    """Every rank's listener. At each batch end all ranks learn whether any was asked to
    stop (one all-reduce of one number), so all stop after the same batch; at each epoch
    end the training loss becomes the mean over the ranks (each saw its own part)."""

    def __init__(self, stop: Any, device: torch.device) -> None:
        self.stop, self.device = stop, device

    def on_batch_end(self, state: TrainState) -> None:
        asked = state.stop_requested or (self.stop is not None and self.stop.is_set())
        flag = torch.tensor([1.0 if asked else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            state.request_stop()

    def on_epoch_end(self, state: TrainState) -> None:
        # rank 0's validation figures for every rank (BatchNorm statistics and kernels
        # may differ in the last bits), so that patience decides alike everywhere
        last = state.history[-1]
        figures: list[Any] = [last.valid_loss, last.metrics]
        dist.broadcast_object_list(figures, src=0)
        valid_loss, metrics = figures
        state.valid_loss, state.metrics = valid_loss, metrics
        last = dataclasses.replace(last, valid_loss=valid_loss, metrics=metrics)
        loss = torch.tensor([last.train_loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(loss)
        state.history[-1] = dataclasses.replace(
            last, train_loss=loss.item() / dist.get_world_size()
        )


def worker_main(rank: int, world: int, folder: str, messages: Any, stop: Any) -> None:
    """One rank: join the group, train the plan on this rank's shard, rank 0 writes the
    result. Any failure is sent to the notebook as one line, and the process exits 1."""
    # A kernel interrupt (SIGINT to the kernel's process group) must reach the notebook's
    # process only: it asks the ranks to stop, all at the same batch.
    os.setpgrp()
    _die_with_parent()
    try:
        with open(Path(folder) / "job.pkl", "rb") as f:
            job: Job = pickle.load(f)
        if job.gpus:  # before anything touches CUDA: this rank's GPU is its only one
            os.environ["CUDA_VISIBLE_DEVICES"] = job.gpus[rank]
        torch.set_num_threads(job.threads)
        device = torch.device("cuda", 0) if job.gpus else torch.device("cpu")
        if device.type == "cpu":
            tune_cpu()  # as Learner() does: a rank is a new process, built without it
        learn = load_learner((Path(folder) / "learner.pkl").read_bytes(), device)
        job.rng.restore(loader=False)
        backend = "nccl" if learn.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"file://{folder}/rendezvous",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=job.timeout_s),
        )
        result = train_rank(
            learn, job.stages, rank, world, messages=messages, stop=stop, marks=folder
        )
        if rank == 0:
            path = Path(folder) / "result.pt"
            torch.save(result, path)
            messages.put(("done", 0, str(path)))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # every failure is reported, then exit 1
        messages.put(("error", rank, f"{type(exc).__name__}: {_line(exc)}"))
        if os.environ.get("NBTRAIN_DEBUG"):
            traceback.print_exc()
        messages.close()
        messages.join_thread()  # the line reaches the notebook before the process ends
        os._exit(1)  # at once: a collective other ranks wait in must not hold this one


def train_rank(
    learn: Learner,
    stages: Sequence[Any],
    rank: int,
    world: int,
    *,
    messages: Any = None,
    stop: Any = None,
    marks: str | None = None,
) -> dict[str, Any] | None:
    """Train ``stages`` as rank ``rank`` of ``world`` (the process group is up); rank 0
    returns what the notebook's learner takes back (:func:`apply_result`)."""
    learn._shard = Shard(rank, world, learn.device, marks)
    learn.checkpoint_dir = False  # the notebook's learner keeps the result, not the ranks
    listeners: list[object] = [_RankSync(stop, learn.device)]
    if rank == 0 and messages is not None:
        listeners.append(_Forward(messages))
    first_snapshot = len(learn.snapshots)
    states = learn.fit_stages(stages, listeners=listeners)
    return plain_result(learn, states, first_snapshot) if rank == 0 else None


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the notebook's process dies (no orphans)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ------------------------------------------------------------- torchrun: a saved job
def save_job(learn: Learner, stages: Sequence[Any], path: str | os.PathLike) -> Path:
    """Write ``learn`` and ``stages`` for ``python -m nbtrain.launch`` under ``torchrun``
    (several machines, or GPUs the notebook does not see). ValueError, before anything is
    written, for stages that do not fit the learner or parts that cannot be sent."""
    import cloudpickle

    from nbtrain.core.resume import RNGStates

    stages = list(stages)
    learn.plan_stages(stages)  # checked here, not on the cluster
    job = {
        "format": JOB_FORMAT,
        "learner": check_sendable(learn),
        "stages": [stage.as_dict() for stage in stages],
        "rng": RNGStates.capture(),
    }
    path = Path(path)
    path.write_bytes(cloudpickle.dumps(job))
    return path


def load_result(learn: Learner, path: str | os.PathLike) -> list[TrainState]:
    """Put a ``python -m nbtrain.launch`` job's result (rank 0's file) into ``learn``, as
    after a fit with ``procs``; the file loads with ``weights_only=True``."""
    from nbtrain.core.stages import Stage

    result = torch.load(Path(path), weights_only=True)
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path} is not the result of python -m nbtrain.launch")
    stages = [Stage.from_dict(values) for values in result["stages"]]
    plan = learn.plan_stages(stages, procs=result["world"])
    return apply_result(learn, plan, result)


def launch_main(job_path: str, out: str, device: str = "auto") -> int:
    """One rank of a torchrun job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
    rendezvous come from torchrun's environment): train the job's stages; rank 0 writes
    the result to ``out`` (atomically) and prints a line per epoch. ``device``: ``"auto"``
    (this machine's GPU ``LOCAL_RANK`` when it has GPUs, else the CPU), ``"cuda"`` or
    ``"cpu"``, whatever the notebook trained on."""
    from nbtrain.core.stages import Stage

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    if not isinstance(job, dict) or job.get("format") != JOB_FORMAT:
        raise SystemExit(f"{job_path} is not a job written by nbtrain save_job")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if kind == "cuda":
        torch.cuda.set_device(local)
    where = torch.device("cuda", local) if kind == "cuda" else torch.device(kind)
    if kind == "cpu":
        tune_cpu()
    learn = load_learner(job["learner"], where)
    job["rng"].restore(loader=False)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    )
    if rank == 0:
        from nbtrain.demo import EpochPrinter

        learn.events.subscribe(EpochPrinter())
    stages = [Stage.from_dict(values) for values in job["stages"]]
    result = train_rank(learn, stages, rank, world)
    if rank == 0:
        target = Path(out)
        partial = target.with_name(target.name + ".partial")
        torch.save(result, partial)
        os.replace(partial, target)
        print(f"result: {target} (load it: nbtrain.load_result(learn, {str(target)!r}))")
    dist.barrier()
    dist.destroy_process_group()
    return 0
