"""nbtrain against fastai v2 and a hand-written PyTorch loop, on the same data and model.

    pip install -e ".[bench]"     # fastai, for this benchmark only
    python bench/vs_fastai.py [--data PATH] [--size 224] [--bs 32] [--repeats 3] [--warmup 1]
        [--lr-find-iters 100] [--no-own] [--no-own-lr-find] [--no-checklist]
        [--unfrozen-iters 40] [--unfrozen-cycles 2] [--final-size 288] [--fastai-lr 2e-3]
        [--fastai-freeze-epochs 2] [--fastai-sgdr] [--write bench/RESULTS.md]

Same data (nbtrain's file list, so hymenoptera's bad GIF is skipped by all), same model (the
offline EfficientNet-Lite0 body plus Dropout(0.25) + Linear, the same initial weights), same
three layer groups, loss, normalization (mean = std = 0.5), batch size and epochs:

0. fastai as it comes (Adam, NCHW, ``train_bn=True``, 2 DataLoader workers), alone in a fresh
   process with glibc's default allocator, as a fastai user runs it: seconds per epoch
   (``fit_sgdr(1, 1)``: nbtrain's per-iteration cosine), then its lr_find;
1. seconds per epoch (train + validation pass), body frozen, then unfrozen, in this process,
   the contenders taking turns (the order rotates every round; medians of ``--repeats``
   rounds, and of the per-round ratios to the hand-written loop): nbtrain (``fit_cycles``,
   precompute off), a hand-written loop (SGD momentum 0.9, per-iteration cosine, nbtrain's
   loaders), and fastai with ``num_workers=0``, also channels-last, also ``train_bn=False``;
2. lr_find (fresh learners, body frozen, fresh process): wall time and every suggestion rule;
   nbtrain on cached activations (cache build timed apart) and through images, fastai;
3. the checklist, each from nothing in a fresh process: nbtrain's recipe of bench/checklist.py
   (precompute, augmentation, unfreeze, SGDR, progressive resizing) against fastai's
   ``fine_tune`` with as many epochs over images (as it comes, and as "w0 CL"), optionally a
   2018-style ``fit_sgdr`` recipe too: validation accuracy and wall time after every stage.

Section 1's process calls nbtrain's ``tune_cpu`` (glibc ``mallopt``: freed memory is kept),
which all its contenders share. It helps the hand-written loop as much as nbtrain, but not
fastai with workers: fastai forks new workers every epoch, each fork makes the kept heap
copy-on-write, and the epoch (and whoever runs next) spends seconds in page faults. Hence
fastai as it comes runs in its own process, and section 1 has fastai with ``num_workers=0``.
The tables are printed and written between markers into ``--write`` (the rest of that file is
kept). Every time, printed or in the tables, has its kernel-time share beside it (system over
user + system CPU time, DataLoader workers included, measured in the process that ran it), so
that page faults show at once. Targets: nbtrain's epoch time <= fastai's, accuracy >= fastai's,
checklist wall time <= 0.5x fastai's for the same or better accuracy. The last lines printed
are the summary.
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from nbtrain import Learner, spread_lrs
from nbtrain.core.cpu import tune_cpu
from nbtrain.core.features import FeatureCache
from nbtrain.core.lr_range import suggest_valley
from nbtrain.vision import ImageData
from nbtrain.vision.learner import ImageClassifier
from nbtrain.vision.models import OFFLINE_ARCH, body_groups, create_body

from cputime import Clock, Timing, fmt, from_json, median, timed, to_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
BEGIN, END = "<!-- vs_fastai:begin -->", "<!-- vs_fastai:end -->"
RANDOM_HEAD = 'nbtrain, head_init="random"'
RULES = ("valley", "steep", "minimum", "slide")


# ------------------------------------------------------------------------ models
def make_model(n_classes: int, seed: int) -> ImageClassifier:
    """The model nbtrain's ``Learner.pretrained`` builds, with the same initial head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ImageClassifier(create_body(OFFLINE_ARCH), n_classes, dropout=0.25)


class HandWritten:
    """A plain PyTorch loop: SGD momentum 0.9, per-iteration cosine, channels-last like
    nbtrain; a frozen body is in eval mode with ``requires_grad=False``."""

    def __init__(self, model: ImageClassifier, data: ImageData) -> None:
        self.model = model.to(memory_format=torch.channels_last)
        self.data = data
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.freeze()

    def freeze(self) -> None:
        self.model.body.requires_grad_(False)
        self.frozen = True

    def unfreeze(self) -> None:
        self.model.requires_grad_(True)
        self.frozen = False

    def epoch(self, lr: float) -> float:
        model, opt, train = self.model, self.opt, self.data.train
        n = len(train)
        model.train()
        if self.frozen:
            model.body.eval()
        for i, (xb, yb) in enumerate(train):
            for group in opt.param_groups:
                group["lr"] = lr / 2 * (1 + math.cos(math.pi * i / n))
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            loss.item()  # the one sync per step nbtrain and fastai also do
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        right = total = 0
        with torch.inference_mode():
            for xb, yb in self.data.valid:
                out = model(xb.contiguous(memory_format=torch.channels_last))
                right += int((out.argmax(1) == yb).sum())
                total += len(yb)
        return right / total


# ------------------------------------------------------------------------ fastai
def fastai_dls(data: ImageData, workers: int | None = None):
    """fastai DataLoaders over nbtrain's exact items (train and valid), nbtrain's batch size.

    Training: fastai's ``RandomResizedCrop(size, min_scale=0.35)`` (on PIL images, in the
    workers), then on the batch flip (p=0.5), rotation up to 10 degrees and brightness and
    contrast (0.2), applied always (``p_affine = p_lighting = 1``), no zoom, no warp.
    Validation: nbtrain's own eval crop (shorter side to size/0.875, center crop), because
    fastai's validation crop squashes the whole photo to a square first. Normalized with
    mean = std = 0.5. The last short training batch is kept, as nbtrain does.
    """
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        FuncSplitter,
        ImageBlock,
        Normalize,
        PILImage,
        RandomResizedCrop,
        Transform,
        aug_transforms,
    )

    size = data.size
    resize = round(size / 0.875)

    class EvalCrop(Transform):  # (fastai dispatches on the annotation: no string annotations)
        split_idx, order = 1, 1  # validation only

        def encodes(self, img: PILImage) -> PILImage:
            img = v2.functional.resize(img, resize, antialias=True)
            return PILImage(v2.functional.center_crop(img, [size, size]))

    train_crop = RandomResizedCrop(size, min_scale=0.35)
    train_crop.split_idx = 0  # training only; validation goes through EvalCrop
    # lists, not tuples: fastai maps its transforms over the elements of a tuple
    items = [[p, data.classes[y], False] for p, y in data.train_items]
    items += [[p, data.classes[y], True] for p, y in data.valid_items]
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=data.classes)),
        get_x=itemgetter(0),
        get_y=itemgetter(1),
        splitter=FuncSplitter(itemgetter(2)),
        item_tfms=[train_crop, EvalCrop()],
        batch_tfms=[
            *aug_transforms(
                max_rotate=10.0,
                max_zoom=1.0,
                max_warp=0.0,
                max_lighting=0.2,
                p_affine=1.0,
                p_lighting=1.0,
            ),
            Normalize.from_stats(list(data.mean), list(data.std)),
        ],
    )
    kw = {} if workers is None else {"num_workers": workers}  # None: fastai's default (CPUs)
    dls = block.dataloaders(items, bs=data.bs, drop_last=False, device=torch.device("cpu"), **kw)
    if len(dls.train_ds) != len(data.train_items) or len(dls.valid_ds) != len(data.valid_items):
        raise RuntimeError("fastai's data set differs from nbtrain's item list")
    return dls


@dataclass(frozen=True)
class FastaiConfig:
    """How fastai is set up: DataLoader workers (None: its default, one per CPU),
    channels-last model, ``train_bn``."""

    name: str
    workers: int | None = None
    cl: bool = False
    train_bn: bool = True


AS_IT_COMES = FastaiConfig("fastai")
W0 = FastaiConfig("fastai w0", workers=0)
TUNED = FastaiConfig("fastai w0 CL", workers=0, cl=True)
TUNED_NO_BN = FastaiConfig("fastai w0 CL train_bn=False", workers=0, cl=True, train_bn=False)


def fastai_learner(dls, n_classes: int, seed: int, path: Path, config: FastaiConfig):
    """A fastai Learner on the same model and layer groups, frozen (its defaults otherwise:
    Adam, weight decay 0.01). ``train_bn=False`` adds ``BnFreeze``, so that frozen BatchNorm
    layers keep their statistics, as nbtrain's do."""
    from fastai.vision.all import BnFreeze, CrossEntropyLossFlat, Learner, accuracy, params

    model = make_model(n_classes, seed)
    early, late = body_groups(model.spec)

    def splitter(m):
        return [params(early), params(late), params(m.head)]

    learn = Learner(
        dls,
        model,
        loss_func=CrossEntropyLossFlat(),
        metrics=accuracy,
        splitter=splitter,
        train_bn=config.train_bn,
        path=path,
        cbs=[] if config.train_bn else [BnFreeze()],
    )
    if config.cl:
        learn.to_channelslast(use_amp=False)
        learn.model.to(memory_format=torch.channels_last)
    learn.freeze()
    return learn


def fastai_seed(seed: int) -> None:
    """Seed fastai's RNGs (Python, numpy, torch), before its DataLoaders are made: they draw
    their shuffling generator from ``random`` then."""
    from fastai.torch_core import set_seed

    set_seed(seed)


def fastai_quiet(learn):
    """No progress bar, no printed table (nbtrain prints nothing in a script either)."""
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(learn.no_bar())
    stack.enter_context(learn.no_logging())
    return stack


def fastai_epoch(learn, lr: float) -> float:
    with fastai_quiet(learn):
        learn.fit_sgdr(1, 1, lr_max=lr)
    return float(learn.recorder.values[-1][2])


# ------------------------------------------------------------------- measuring
Stages = list[tuple[str, float, Timing]]  # (stage, validation accuracy, time since start)
Times = dict[str, list[Timing]]  # contender: time of each timed round


@dataclass
class Contender:
    name: str
    epoch: Callable[[], Any]
    times: list[Timing] = field(default_factory=list)


def paired(times: Times, name: str, ref: str) -> float:
    """Median over rounds of ``name``'s time / ``ref``'s time in the same round: robust to
    the machine drifting between rounds."""
    pairs = zip(times[name], times[ref], strict=True)
    return statistics.median(a.wall / b.wall for a, b in pairs)


def race(title: str, contenders: list[Contender], repeats: int, warmup: int) -> Times:
    """Rounds of one epoch per contender, the order rotating; warm-up rounds untimed.
    Returns each contender's times, round by round."""
    for r in range(warmup + repeats):
        shift = r % len(contenders)
        line = []
        for c in contenders[shift:] + contenders[:shift]:
            with timed() as t:
                c.epoch()
            if r >= warmup:
                c.times.append(t)
            line.append(f"{c.name} {fmt(t)}")
        tag = "warm-up" if r < warmup else f"round {r - warmup + 1}"
        print(f"  {title} {tag}: " + ", ".join(line), flush=True)
    return {c.name: c.times for c in contenders}


def fastai_lr_find(learn, iters: int) -> tuple[Timing, dict[str, float], float | None]:
    """fastai's lr_find with all four of its rules; (time, rates, nbtrain's valley rule
    on fastai's curve)."""
    from fastai.vision.all import minimum, slide, steep, valley

    with timed() as seconds, fastai_quiet(learn):
        found = learn.lr_find(
            num_it=iters, show_plot=False, suggest_funcs=(valley, steep, minimum, slide)
        )
    curve = [float(v) for v in learn.recorder.lrs], [float(v) for v in learn.recorder.losses]
    return seconds, {k: float(getattr(found, k)) for k in RULES}, suggest_valley(*curve)


def fmt_rates(rates: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {rates[k]:.1e}" if rates.get(k) else f"{k} -" for k in RULES)


# --------------------------------------------------- in this process (tune_cpu on)
def time_epochs(args, data: ImageData, tmp: Path) -> tuple[Times, Times]:
    """Seconds per epoch of the contenders that fork no DataLoader workers during the race
    (nbtrain's and the hand-written loop's persistent workers start in the warm-up round),
    body frozen, then unfrozen, in this process. fastai with workers forks new ones every
    epoch, and each fork makes this process's kept heap copy-on-write: whoever runs next
    pays the page faults too, so fastai as it comes runs in a process of its own."""
    n, lr = len(data.classes), args.lr
    nb = Learner.pretrained(data)  # precompute off: every epoch goes through the images
    hand = HandWritten(make_model(n, args.seed), data)
    dls = fastai_dls(data, 0)
    fas = {c.name: fastai_learner(dls, n, args.seed, tmp, c) for c in (W0, TUNED, TUNED_NO_BN)}
    epochs = {"nbtrain": partial(nb.fit_cycles, lr), "hand-written": partial(hand.epoch, lr)}
    epochs |= {name: partial(fastai_epoch, learn, lr) for name, learn in fas.items()}
    print("1. seconds per epoch (train + validation), one process, body frozen")
    frozen = race("frozen", [Contender(k, f) for k, f in epochs.items()], args.repeats, args.warmup)
    for learner in (nb, hand, *fas.values()):
        learner.unfreeze()
    del epochs[TUNED_NO_BN.name]  # the same as TUNED once nothing is frozen
    print("   body unfrozen (the process is warm: no warm-up round)")
    unfrozen = race("unfrozen", [Contender(k, f) for k, f in epochs.items()], args.repeats, 0)
    return frozen, unfrozen


# ------------------------------------------------------------ parts (subprocesses)
def part_own(args, tmp: Path) -> dict[str, Any]:
    """fastai as it comes, alone in a process with glibc's default allocator (no tune_cpu),
    as a fastai user runs it: seconds per epoch, then lr_find on a fresh learner."""
    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, seed=args.seed)
    fastai_seed(args.seed)
    dls = fastai_dls(data)
    fa = fastai_learner(dls, len(data.classes), args.seed, tmp, AS_IT_COMES)
    epochs = [Contender("fastai", partial(fastai_epoch, fa, args.lr))]
    print("0. fastai as it comes, in its own process (glibc's default allocator)")
    out: dict[str, Any] = {"frozen": race("frozen", epochs, args.repeats, args.warmup)}
    fa.unfreeze()
    epochs[0].times = []
    out["unfrozen"] = race("unfrozen", epochs, args.repeats, 0)
    if args.own_lr_find:
        fa = fastai_learner(dls, len(data.classes), args.seed, tmp, AS_IT_COMES)
        seconds, rates, _ = fastai_lr_find(fa, args.lr_find_iters)
        out["lr_find"] = (seconds, rates)
        print(f"  fastai lr_find: {fmt(seconds, '.1f')}; {fmt_rates(rates)}", flush=True)
    return out


def part_lr_find(args, tmp: Path) -> dict[str, Any]:
    """lr_find on fresh learners, body frozen, in a fresh process, in the checklist's order:
    nbtrain's cache build and lr_find on it, nbtrain through images (precompute off), then
    fastai w0 CL."""
    print(f"2. lr_find, {args.lr_find_iters} iterations, fresh learners, body frozen")
    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, seed=args.seed)
    out: dict[str, Any] = {}
    nb = Learner.pretrained(data, precompute=True, head_init="random")  # fastai's start
    nb.feature_cache = FeatureCache(tmp / "cache-lr-find")  # empty: built and timed
    with timed() as t:
        nb.features()
    out["cache build"] = t
    with timed() as t:
        found = nb.lr_find(iters=args.lr_find_iters, seed=args.seed)
    out["nbtrain cached"] = (t, found.suggestions)
    print(
        f"  nbtrain, cached: {fmt(t)} (+ cache build "
        f"{fmt(out['cache build'], '.1f')}); {fmt_rates(found.suggestions)}",
        flush=True,
    )
    nb.precompute = False
    with timed() as t:
        found = nb.lr_find(iters=args.lr_find_iters, seed=args.seed)
    out["nbtrain"] = (t, found.suggestions)
    out["fastai rule on nbtrain"] = suggest_valley(found.lrs, found.losses, clear_drop=0.0)
    print(f"  nbtrain, images: {fmt(t, '.1f')}; {fmt_rates(found.suggestions)}")
    fastai_seed(args.seed)
    fa = fastai_learner(fastai_dls(data, TUNED.workers), len(data.classes), args.seed, tmp, TUNED)
    seconds, rates, ours = fastai_lr_find(fa, args.lr_find_iters)
    out[TUNED.name] = (seconds, rates)
    out["nbtrain rule on fastai"] = ours
    print(f"  {TUNED.name}: {fmt(seconds, '.1f')}; {fmt_rates(rates)}", flush=True)
    return out


def part_nbtrain_checklist(args, tmp: Path, head_init: str) -> tuple[Stages, Timing]:
    """bench/checklist.py's recipe, from nothing (data, model, an empty feature cache).
    The accuracy of a stage is the validation accuracy of its fit's last epoch.
    ``head_init="random"`` starts the head as fastai's does; nbtrain's default starts it
    from the ImageNet classifier's rows when the classes are ImageNet classes."""
    clock = Clock()
    rows: Stages = []

    def stage(name: str, state) -> None:
        acc = state.history[-1].metrics["accuracy"]
        rows.append((name, acc, clock.elapsed()))
        print(f"  nbtrain {name}: accuracy {acc:.4f} at {fmt(rows[-1][2], '.1f')}", flush=True)

    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, seed=args.seed)
    learn = Learner.pretrained(data, precompute=True, head_init=head_init)
    learn.feature_cache = FeatureCache(tmp / "cache-checklist")  # empty: built and timed
    learn.features()
    found = learn.lr_find(seed=args.seed)
    lr = found.suggestion
    stage("head on cached activations, 2 epochs", learn.fit_cycles(lr, 2, seed=args.seed))
    learn.precompute = False
    stage("+ augmentation, 2 epochs", learn.fit_cycles(lr, 2, seed=args.seed))
    learn.unfreeze()
    learn.bn_freeze()
    ratios = spread_lrs(1.0, learn.n_groups, factor=3)
    found = learn.lr_find(
        start=[1e-7 * r for r in ratios], iters=args.unfrozen_iters, seed=args.seed
    )
    top = min(found.suggestion or lr / 10, lr / 10)  # as bench/checklist.py
    rates = spread_lrs(top, learn.n_groups, factor=3)
    print(f"  nbtrain rates: head {lr:.1e}, unfrozen {', '.join(f'{r:.1e}' for r in rates)}")
    n = 2**args.unfrozen_cycles - 1
    state = learn.fit_cycles(rates, args.unfrozen_cycles, cycle_mult=2, seed=args.seed)
    stage(f"+ unfreeze, lr_find, SGDR {n} epochs", state)
    if args.final_size:
        learn.set_size(args.final_size)
        stage(f"+ {args.final_size} px, 1 epoch", learn.fit_cycles(rates, 1, seed=args.seed))
    return rows, clock.elapsed()


def part_fastai_checklist(args, tmp: Path, config: FastaiConfig, recipe: str):
    """fastai from nothing: DataLoaders, Learner, then ``fine_tune`` (or the 2018-style
    ``fit_sgdr`` recipe) with as many epochs over images as nbtrain's recipe."""
    from fastai.vision.all import Callback

    clock = Clock()
    rows: Stages = []

    class EpochClock(Callback):
        order = 100  # after the Recorder has the epoch's metrics

        def after_epoch(self) -> None:
            acc = float(self.learn.recorder.values[-1][2])
            rows.append((f"epoch {len(rows) + 1}", acc, clock.elapsed()))
            print(
                f"  {config.name} {recipe} {rows[-1][0]}: accuracy {acc:.4f} at "
                f"{fmt(rows[-1][2], '.1f')}",
                flush=True,
            )

    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, seed=args.seed)
    fastai_seed(args.seed)
    learn = fastai_learner(
        fastai_dls(data, config.workers), len(data.classes), args.seed, tmp, config
    )
    learn.add_cb(EpochClock())
    frozen, unfrozen = args.fastai_freeze_epochs, fastai_unfrozen_epochs(args)
    with fastai_quiet(learn):
        if recipe == "fine_tune":
            learn.fine_tune(unfrozen, base_lr=args.fastai_lr, freeze_epochs=frozen)
        else:  # 2018 style: frozen SGDR, unfrozen SGDR with cycle_mult=2, a larger size
            learn.fit_sgdr(1, frozen, lr_max=args.fastai_lr)  # cycle_mult=1 divides by 0
            learn.unfreeze()
            lrs = slice(args.fastai_lr / 200, args.fastai_lr / 2)  # fine_tune's rates
            learn.fit_sgdr(args.unfrozen_cycles, 1, lr_max=lrs, cycle_mult=2)
            if args.final_size:
                learn.dls = fastai_dls(data.with_size(args.final_size), config.workers)
                learn.fit_sgdr(1, 1, lr_max=lrs)
    return rows, clock.elapsed()


def fastai_unfrozen_epochs(args) -> int:
    return 2**args.unfrozen_cycles - 1 + (1 if args.final_size else 0)


PARTS = (
    "own",
    "lr-find",
    "checklist-nbtrain",
    "checklist-nbtrain-random",
    "checklist-fastai",
    "checklist-fastai-tuned",
    "sgdr-tuned",
)


def run_part(args, tmp: Path) -> Any:
    if args.part == "own":
        return part_own(args, tmp)
    if args.part == "lr-find":
        return part_lr_find(args, tmp)
    if args.part.startswith("checklist-nbtrain"):
        head_init = "random" if args.part.endswith("-random") else "auto"
        return part_nbtrain_checklist(args, tmp, head_init)
    if args.part != "checklist-fastai":
        tune_cpu()  # the tuned fastai runs get nbtrain's allocator setting too
    config = AS_IT_COMES if args.part == "checklist-fastai" else TUNED
    return part_fastai_checklist(
        args, tmp, config, "fit_sgdr" if "sgdr" in args.part else "fine_tune"
    )


def spawn(part: str, *, keep_malloc: bool) -> Any:
    """Run one part in a fresh Python process; its lines are shown as they come, its result
    is the JSON on its last line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if keep_malloc:
        env["NBTRAIN_KEEP_MALLOC"] = "1"  # glibc's default allocator, as fastai runs alone
    cmd = [sys.executable, __file__, *sys.argv[1:], "--part", part]
    result = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = from_json(line[len("RESULT ") :])
            else:
                print(line, end="", flush=True)
    if proc.returncode or result is None:
        raise RuntimeError(f"part {part!r} failed (exit status {proc.returncode})")
    return result


# ------------------------------------------------------------------ reporting
def machine() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import fastai

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": f"{model}, {cpus} cores, {mem:.0f} GiB RAM, no GPU",
        "torch": f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"fastai {fastai.__version__}, Python {platform.python_version()}",
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(path: Path, body: str) -> None:
    """Replace the text between the markers (or put it first); keep the rest of the file."""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = "# nbtrain against fastai\n\n" + block + "\n" + text
    path.write_text(text)


def cell(t: Timing, spec: str = ".2f") -> str:
    """A table cell: seconds (the column says so) and the kernel-time share."""
    return fmt(t, spec, unit="")


def rates_cells(found: dict[str, float | None]) -> list[str]:
    return [f"{found[k]:.1e}" if found.get(k) else "-" for k in RULES]


def epoch_table(frozen: Times, unfrozen: Times, own: dict[str, Times] | None) -> str:
    """Median seconds per epoch, and the median over rounds of the ratio to the
    hand-written loop in the same round; fastai as it comes from its own process."""
    rows = []
    for name in dict.fromkeys([*frozen, *unfrozen]):
        row = [name]
        for times in (frozen, unfrozen):
            if name in times:
                row += [cell(median(times[name])), f"{paired(times, name, 'hand-written'):.3f}"]
            else:
                row += ["-", "-"]
        rows.append(row)
    if own:
        row = ["fastai as it comes (own process, glibc default allocator)"]
        for phase, times in (("frozen", frozen), ("unfrozen", unfrozen)):
            theirs = median(own[phase]["fastai"])
            row += [cell(theirs), f"{theirs.wall / median(times['hand-written']).wall:.2f}*"]
        rows.append(row)
    header = ["", "frozen s/epoch", "x hand-written", "unfrozen s/epoch", "x hand-written"]
    return markdown_table(header, rows)


def build_report(args, info, data, res: dict[str, Any]) -> str:
    own = res.get("own")
    out = [
        "## Machine and command",
        "",
        *(f"- {v}" for v in info.values()),
        f"- `{' '.join(['python bench/vs_fastai.py', *sys.argv[1:]])}`",
        f"- data: {Path(args.data).name}, {len(data.train_items)} train / "
        f"{len(data.valid_items)} valid images (nbtrain's list, used by all), {args.size} px, "
        f"batch {args.bs}",
        "",
        "Contenders: **nbtrain** `fit_cycles(lr)` (precompute off, channels-last, frozen "
        "BatchNorm in eval mode, 2 persistent DataLoader workers); **hand-written**: SGD "
        "momentum 0.9, per-iteration cosine, channels-last, on nbtrain's loaders; **fastai** "
        "`fit_sgdr(1, 1, lr)` (the same per-iteration cosine) as it comes: Adam, NCHW, "
        "`train_bn=True`, its default 2 DataLoader workers, forked anew every epoch; **w0**: "
        "`num_workers=0`; **CL**: `to_channelslast(use_amp=False)`; **train_bn=False**: plus "
        "`BnFreeze` (nbtrain's frozen semantics).",
        "",
        f"## Seconds per epoch (train + validation pass; median of {args.repeats} rounds, "
        f"frozen after {args.warmup} warm-up round)",
        "",
        "One process with nbtrain's allocator setting (`tune_cpu`), the contenders taking "
        'turns; "x hand-written" is the median of the per-round ratios. fastai as it comes '
        "ran alone in a process of its own (its ratio, marked *, is across processes).",
        "",
        epoch_table(res["frozen"], res["unfrozen"], own),
    ]
    find = res["lr_find"]
    out += [
        "",
        f"## lr_find ({args.lr_find_iters} iterations, body frozen, fresh learners)",
        "",
        'All start from the same random head (nbtrain with `head_init="random"`).',
        "",
    ]
    rows = [
        [
            "nbtrain, images (precompute off)",
            cell(find["nbtrain"][0], ".1f"),
            *rates_cells(find["nbtrain"][1]),
        ],
        [
            f"nbtrain, cached activations (+ {fmt(find['cache build'], '.1f')} to build the cache)",
            cell(find["nbtrain cached"][0]),
            *rates_cells(find["nbtrain cached"][1]),
        ],
        [
            f"{TUNED.name} (Adam)",
            cell(find[TUNED.name][0], ".1f"),
            *rates_cells(find[TUNED.name][1]),
        ],
    ]
    if "own" in res and "lr_find" in res["own"]:
        seconds, found = res["own"]["lr_find"]
        rows.append(
            ["fastai as it comes, own process (Adam)", cell(seconds, ".1f"), *rates_cells(found)]
        )
    out.append(markdown_table(["", "seconds", *RULES], rows))
    out += [
        "",
        f"Same curves, other rule: nbtrain's valley on fastai's curve "
        f"{find['nbtrain rule on fastai']:.1e}; fastai's valley (`clear_drop=0`) on nbtrain's "
        f"image curve {find['fastai rule on nbtrain']:.1e}.",
    ]
    checklist = res.get("checklist", {})
    if checklist:
        out += ["", "## Checklist, each from nothing in a fresh process", ""]
        rows = []
        for name, (stages, total) in checklist.items():
            rows.append([f"**{name}**", f"**{stages[-1][1]:.4f}**", f"**{cell(total, '.0f')}**"])
            rows += [[f"&nbsp;&nbsp;{s}", f"{a:.4f}", cell(t, ".0f")] for s, a, t in stages]
        out.append(markdown_table(["", "valid accuracy", "wall s (cumulative)"], rows))
        out += [
            "",
            "nbtrain starts its head from the ImageNet classifier's `ant` and `bee` rows "
            '(`head_init="auto"`, its default); with `head_init="random"` it starts from the '
            "same random head as fastai. "
            f"nbtrain: bench/checklist.py's recipe (unfrozen lr_find {args.unfrozen_iters} "
            f"steps, {args.unfrozen_cycles} SGDR cycles, final size {args.final_size or 'off'}). "
            f"fastai: `fine_tune({fastai_unfrozen_epochs(args)}, base_lr={args.fastai_lr}, "
            f"freeze_epochs={args.fastai_freeze_epochs})`, the same epochs over images.",
        ]
    return "\n".join(out) + "\n"


def summary(res: dict[str, Any]) -> list[str]:
    lines = ["summary:"]
    for phase in ("frozen", "unfrozen"):
        times = res[phase]
        ours = median(times["nbtrain"])
        text = f"  {phase} epoch: nbtrain {fmt(ours)} = "
        text += f"{paired(times, 'nbtrain', 'hand-written'):.3f}x hand-written"
        verdicts = []
        if "own" in res:
            theirs = median(res["own"][phase]["fastai"])
            text += f"; {ours.wall / theirs.wall:.2f}x fastai as it comes ({fmt(theirs)})"
            verdicts.append(("as it comes", ours.wall <= theirs.wall))
        name = TUNED_NO_BN.name if phase == "frozen" else TUNED.name
        ratio = paired(times, "nbtrain", name)
        text += f"; {ratio:.3f}x {name}"
        verdicts.append((name, ratio <= 1))
        met = ", ".join(f"{'met' if ok else 'MISSED'} vs {n}" for n, ok in verdicts)
        lines.append(text + f" (target <= 1: {met})")
        if phase == "frozen":
            cost = paired(times, TUNED.name, TUNED_NO_BN.name)
            lines.append(
                f"  fastai's train_bn=True default: {cost:.2f}x the frozen epoch of "
                "train_bn=False (both w0 CL)"
            )
    for name, (stages, total) in res.get("checklist", {}).items():
        if name.startswith("nbtrain"):
            continue
        nb_stages, nb_total = res["checklist"]["nbtrain"]
        acc, nb_acc = stages[-1][1], nb_stages[-1][1]
        reach = next((t for _, a, t in nb_stages if a >= acc), None)
        whole = nb_total.wall <= 0.5 * total.wall and nb_acc >= acc
        lines.append(
            f"  checklist vs {name}: accuracy {nb_acc:.4f} vs {acc:.4f} "
            f"({'met' if nb_acc >= acc else 'MISSED'}, target >=); whole recipe "
            f"{fmt(nb_total, '.0f')} vs {fmt(total, '.0f')} = {nb_total.wall / total.wall:.2f}x "
            f"({'met' if whole else 'MISSED'}, target <= 0.5x); "
            + (
                f"nbtrain had {acc:.4f} or better after {fmt(reach, '.0f')} = "
                f"{reach.wall / total.wall:.2f}x "
                f"({'met' if reach.wall <= 0.5 * total.wall else 'MISSED'})"
                if reach is not None
                else "nbtrain never had that accuracy"
            )
        )
    if RANDOM_HEAD in res.get("checklist", {}):
        stages, total = res["checklist"][RANDOM_HEAD]
        lines.append(
            f"  {RANDOM_HEAD} (fastai's start): accuracy {stages[-1][1]:.4f} in "
            f"{fmt(total, '.0f')}; head on cached activations {stages[0][1]:.4f} at "
            f"{fmt(stages[0][2], '.0f')}"
        )
    return lines


# ----------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("NBTRAIN_DATA", str(DEFAULT_DATA)))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per contender")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before each race")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak rate of the timed epochs")
    ap.add_argument("--lr-find-iters", type=int, default=100)
    ap.add_argument(
        "--own",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time fastai as it comes in its own process (glibc's default allocator)",
    )
    ap.add_argument("--own-lr-find", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--checklist", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--unfrozen-iters", type=int, default=40, help="nbtrain's unfrozen lr_find")
    ap.add_argument("--unfrozen-cycles", type=int, default=2, help="SGDR cycles, cycle_mult=2")
    ap.add_argument("--final-size", type=int, default=288, help="progressive resizing (0: off)")
    ap.add_argument("--fastai-lr", type=float, default=2e-3, help="fine_tune's base_lr")
    ap.add_argument("--fastai-freeze-epochs", type=int, default=2)
    ap.add_argument("--fastai-sgdr", action="store_true", help="also a fastai fit_sgdr recipe")
    ap.add_argument("--write", default=str(ROOT / "bench" / "RESULTS.md"), help="'' to skip")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: one subprocess
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # the GIF; precompute + augmentation; fastai's notices
    tmp = Path(tempfile.mkdtemp(prefix="nbtrain-vs-fastai-"))
    if args.part:
        print("RESULT " + to_json(run_part(args, tmp)), flush=True)
        return

    clock = Clock()
    info = machine()
    print("\n".join(info.values()))
    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, seed=args.seed)
    print(
        f"data: {args.data}: {len(data.train_items)} train / {len(data.valid_items)} valid "
        f"({len(data.bad_files)} bad file(s) skipped by all), {args.size} px, batch {args.bs}, "
        f"{len(data.train)} + {len(data.valid)} batches per epoch"
    )
    res: dict[str, Any] = {}
    # Fresh processes first, while this one is small (its kept heap would crowd them).
    if args.own:
        res["own"] = spawn("own", keep_malloc=True)
    if args.checklist:
        print("3. checklist, each from nothing in a fresh process")
        res["checklist"] = {"nbtrain": spawn("checklist-nbtrain", keep_malloc=False)}
        res["checklist"][RANDOM_HEAD] = spawn("checklist-nbtrain-random", keep_malloc=False)
        res["checklist"]["fastai"] = spawn("checklist-fastai", keep_malloc=True)
        res["checklist"][TUNED.name] = spawn("checklist-fastai-tuned", keep_malloc=False)
        if args.fastai_sgdr:
            res["checklist"][f"{TUNED.name} fit_sgdr"] = spawn("sgdr-tuned", keep_malloc=False)
    res["lr_find"] = spawn("lr-find", keep_malloc=False)
    print("cpu tuning for this process (all its contenders):", tune_cpu())
    res["frozen"], res["unfrozen"] = time_epochs(args, data, tmp)

    report = build_report(args, info, data, res)
    print()
    print(report)
    if args.write:
        write_results(Path(args.write), report)
        print(f"written to {args.write}")
    print(f"bench wall time {fmt(clock.elapsed(), '.0f')}")
    print("\n".join(summary(res)))


if __name__ == "__main__":
    main()
