"""A learner's resumable checkpoints: what goes in one, how one is checked against a
learner and put back, and how a learner is built again from one after a restart.

The files, the random states and the position in a fit live in :mod:`nbtrain.core.resume`,
which knows nothing of learners; this module is the Learner's side. ``Learner`` calls
it from ``fit_stages`` (:class:`CheckpointWriter`), ``resume_point``, ``resume`` and
``from_checkpoint``.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nbtrain.core import groups as G
from nbtrain.core.data import Labelled, Reseedable
from nbtrain.core.loop import user_stacklevel
from nbtrain.core.optimizers import OPTIMIZERS
from nbtrain.core.resume import (
    FORMAT,
    VERSION,
    CheckpointError,
    Position,
    ResumePoint,
    loader_generator,
    read_checkpoint,
)
from nbtrain.core.snapshot import check_state_dict
from nbtrain.core.stages import Plan, Stage
from nbtrain.core.state import EpochRecord, TrainState

if TYPE_CHECKING:
    from nbtrain.core.learner import Learner

L = TypeVar("L", bound="Learner")

# Writing a checkpoint at an epoch end waits until this many times its last cost has
# passed since the last one: at most ~2% of the fit (head epochs on cached activations
# take milliseconds, and would otherwise spend most of their time writing).
SPACING = 50


class CheckpointWarning(UserWarning):
    """A resumable checkpoint could not be written; the fit stops cleanly."""


class CheckpointWriter:
    """Writes one learner's checkpoints during a run: throttled at epoch ends, always
    as a fit ends; the first write that fails stops the fit with one line.

    ``writes`` and ``seconds`` count the run's checkpoints and their cost, ``last`` is
    the newest file, ``run`` the run's name, ``error`` the line of a write that failed.
    The run's first checkpoint is read back once: a file that could not be read when it
    is needed is worse than none.
    """

    def __init__(self) -> None:
        self.writes, self.seconds = 0, 0.0
        self.last: Path | None = None
        self.run = ""
        self.error: str | None = None
        self._cost, self._at = 0.0, -float("inf")

    def start_run(self, run: str) -> None:
        self.writes, self.seconds, self.error, self.run = 0, 0.0, None, run
        self._at = -float("inf")

    def write(
        self,
        learn: Learner,
        plan: Plan,
        index: int,
        histories: list[list[dict[str, Any]]],
        state: TrainState,
        position: Position,
    ) -> None:
        """Write where the run is: stage ``index`` of ``plan`` at ``position``."""
        store = learn.checkpoints
        while len(histories) <= index:
            histories.append([])
        histories[index] = [dataclasses.asdict(r) for r in state.history]
        if store is None or self.error:
            return
        now = time.perf_counter()
        if state.status == "running" and now - self._at < SPACING * self._cost:
            return
        body = payload(learn, plan, index, histories, state, position, run=self.run)
        finished = state.status == "done" and index == len(plan) - 1
        try:
            path = store.write(body, self.run, finished=finished)
            if self.writes == 0:
                read_checkpoint(path)  # once a run: it must load back (weights_only)
        except (OSError, CheckpointError) as exc:
            self.error = f"cannot write a checkpoint to {store.folder}: {_one_line(exc)}"
            warnings.warn(
                f"{self.error}; the fit stops here, the model holds its weights",
                CheckpointWarning,
                stacklevel=user_stacklevel(),
            )
            state.request_stop()
            return
        self.last = path
        self._cost = time.perf_counter() - now
        self._at = time.perf_counter()
        self.writes += 1
        self.seconds += self._cost


def payload(
    learn: Learner,
    plan: Plan,
    index: int,
    histories: list[list[dict[str, Any]]],
    state: TrainState,
    position: Position,
    *,
    run: str,
) -> dict[str, Any]:
    """Everything a checkpoint holds: tensors, numbers, strings, lists and dicts only."""
    data = learn.data
    cache = learn.feature_cache.last
    return {
        "format": FORMAT,
        "version": VERSION,
        "run": run,
        "fit": state.fit,
        "status": state.status,
        "stage": index,
        "plan": [s.as_dict() for s in plan.stages],
        "iters_per_epoch": [s.iters_per_epoch for s in plan.schedules],
        "position": position.as_dict(),
        "histories": histories[: index + 1],
        **learner_state(learn),
        "classes": list(data.classes) if isinstance(data, Labelled) else None,
        "snapshots": [  # what each cycle end scored (their weights stay in memory)
            {
                "fit": snap.fit,
                "cycle": snap.cycle,
                "epoch": snap.epoch,
                "valid_loss": snap.valid_loss,
                "metrics": dict(snap.metrics),
            }
            for snap in learn.snapshots
        ],
        "cache_key": cache.key if learn.uses_cache and cache is not None else None,
        "source": plain(_current(learn.source, data)),
        "built_from": f"a model of class {qualname(learn.model)} and data of class "
        f"{type(data).__name__}",
        "learner_path": str(learn.path.resolve()),
    }


def _current(source: dict[str, Any] | None, data: Any) -> dict[str, Any] | None:
    """``source`` with the data's settings as they are now (a later ``bs`` or
    ``num_workers`` is what the learner is built again with)."""
    if not source or "data_settings" not in source:
        return source
    settings = {
        name: getattr(data, name)
        for name in source["data_settings"]
        if isinstance(getattr(data, name, None), int | bool)
    }
    return {**source, "data_settings": settings}


def plain(value: Any) -> Any:
    """``value`` with numpy's numbers as Python's (``np.float64(0.25)`` from a grid of
    settings would make the checkpoint unreadable with ``weights_only``)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool | str | None):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def resume_point(learn: Learner, path: Path) -> ResumePoint:
    """The checkpoint at ``path``, read and checked against ``learn``; nothing changes."""
    body = read_checkpoint(path)
    check(learn, body, path)
    stages = [Stage.from_dict(d) for d in body["plan"]]
    try:
        plan = learn.plan_stages(stages)
    except ValueError as exc:
        raise CheckpointError(f"{path}: its plan cannot run here: {exc}") from None
    planned = [s.iters_per_epoch for s in plan.schedules]
    if planned != list(body["iters_per_epoch"]):
        raise CheckpointError(
            f"{path}: the data gives {planned[0]} batches per epoch, the run had "
            f"{body['iters_per_epoch'][0]}; recreate the data as it was "
            "(same files, batch size)"
        )
    index, position = int(body["stage"]), Position.from_dict(body["position"])
    histories = body["histories"]
    if body["status"] == "done":
        if index + 1 >= len(plan):
            raise CheckpointError(f"{path}: that run finished; there is nothing to resume")
        return ResumePoint(path, body, plan, index + 1, None, histories)
    return ResumePoint(path, body, plan, index, position, histories)


def check(learn: Learner, body: dict[str, Any], path: Path) -> None:
    """CheckpointError, in one line, unless the checkpoint fits ``learn``."""
    check_state_dict(learn.model, body["model"], source=str(path))
    groups = len(body["trainable"])
    if groups != learn.n_groups:
        raise CheckpointError(
            f"{path} is of a learner with {groups} layer groups; this one has {learn.n_groups}"
        )
    classes = list(learn.data.classes) if isinstance(learn.data, Labelled) else None
    if body["classes"] is not None and classes is not None and body["classes"] != classes:
        raise CheckpointError(
            f"{path} was trained on the classes {body['classes']}; this learner's data "
            f"has {classes}"
        )
    own = [len(g["params"]) for g in learn.opt.state_dict()["param_groups"]]
    theirs = [len(g["params"]) for g in body["optimizer"]["param_groups"]]
    if own != theirs:
        raise CheckpointError(f"{path}: its optimizer has other parameter groups than this one")


def restore(learn: Learner, point: ResumePoint) -> None:
    """Put back what the checkpoint holds (:func:`restore_state`), the random states,
    and (in a learner that has not seen the run: a restarted kernel) the run's finished
    stages in ``learn.fits``."""
    restore_state(learn, point.payload)
    p = point.payload
    if point.start is None:  # the next stage starts where the finished one ended
        rng = Position.from_dict(p["position"]).rng_epoch
        if rng is not None:
            rng.restore(loader_generator(learn.data.train))
    if not any(state.run == point.run for state in learn.fits):
        for index in range(point.first):
            schedule = point.plan.schedules[index]
            state = TrainState(
                schedule=schedule, fit=len(learn.fits), plan=point.plan, stage=index, run=point.run
            )
            state.history = [record(r) for r in point.histories[index]]
            state.it, state.status = schedule.total_iters, "done"
            learn.fits.append(state)


def learner_state(learn: Learner) -> dict[str, Any]:
    """Weights, freeze state, optimizer, grad scaler, image size and precompute: what
    :func:`restore_state` puts back (a checkpoint's, a distributed fit's rank 0's)."""
    data = learn.data
    return {
        "model": learn.model.state_dict(),
        "optimizer": learn.opt.state_dict(),
        "opt": learn.opt_name,
        "scaler": learn.scaler.state_dict() if learn.scaler is not None else None,
        "trainable": learn.trainable,
        "bn_frozen": learn.bn_frozen,
        "precompute": learn.precompute,
        "size": getattr(data, "size", None) if learn.can_resize() else None,
        "data_seed": getattr(data, "seed", None),
    }


def restore_state(learn: Learner, p: dict[str, Any]) -> None:
    """Weights, freeze state, optimizer, grad scaler, image size and precompute."""
    if p["size"] is not None and getattr(learn.data, "size", None) != p["size"]:
        learn.set_size(int(p["size"]))
    seed, data = p["data_seed"], learn.data
    if isinstance(data, Reseedable) and seed not in (None, getattr(data, "seed", None)):
        data.reseed(int(seed))
    learn.model.load_state_dict(p["model"])
    for group, flag in zip(learn.groups, p["trainable"], strict=True):
        G.set_trainable(group, bool(flag))
    learn.bn_frozen = bool(p["bn_frozen"])
    if p.get("opt") in OPTIMIZERS:  # the optimizer the run was using (a stage may switch)
        learn.set_optimizer(p["opt"])
    learn.opt.load_state_dict(p["optimizer"])
    if learn.scaler is not None and p["scaler"] is not None:
        learn.scaler.load_state_dict(p["scaler"])
    learn.precompute = bool(p["precompute"])  # possible: it was when this was written


def qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def rebuild(cls: type[L], payload: dict[str, Any], path: Path) -> L:
    """A learner built as the checkpoint's ``source`` says, or CheckpointError naming
    what the notebook must build first."""
    then = f"build it as before, then call learn.resume({str(path)!r})"
    source = payload.get("source")
    if not source or source.get("from") != "pretrained":
        raise CheckpointError(
            f"{path} holds a learner built from {payload.get('built_from', 'code')} in your "
            f"notebook, which a checkpoint cannot hold; {then}"
        )
    if source["arch"] is None:
        raise CheckpointError(
            f"{path} holds a learner whose body is a module of class {source['arch_class']} "
            f"from your notebook; {then}"
        )
    if source["not_plain"]:
        raise CheckpointError(
            f"{path} holds a learner built with {', '.join(source['not_plain'])}, which a "
            f"checkpoint cannot hold; {then}"
        )
    if source["data"] is None:
        raise CheckpointError(
            f"{path} holds a learner on data of class {source['data_class']}, not read by "
            f"ImageData.from_folder or from_csv; create the data and {then}"
        )
    from nbtrain.vision.data import ImageData  # images: needs PIL and torchvision

    try:
        data = ImageData.from_source(source["data"], **source["data_settings"])
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read its data again ({_one_line(exc)}); "
            f"create the data and {then}"
        ) from None
    learn = cls.pretrained(
        data,
        source["arch"],
        pretrained=False,  # every weight comes from the checkpoint: nothing to download
        head=source.get("head", "linear"),  # checkpoints before the mlp head had only this
        dropout=source["dropout"],
        head_init="random",
        seed=source["seed"],
        path=payload.get("learner_path"),
        **source["options"],
    )
    learn.source = source
    return learn


def record(values: dict[str, Any]) -> EpochRecord:
    values = dict(values)
    values["lrs"] = tuple(values["lrs"])
    return EpochRecord(**values)
