"""IPython magics: ``%lr_find``, ``%fit_cycles``/``%%fit_cycles``, ``%freeze``,
``%unfreeze``, ``%layers`` and ``%nbtrain_config``.

Each magic parses its line with ``magic_arguments`` (so ``%lr_find?`` shows the usage),
looks the learner up in the user's namespace, evaluates expressions there, checks
*everything* before changing anything, calls the core and hands the result to a view.
A mistake raises ``UsageError``: one line, no traceback, nothing changed. How a fit runs,
and how its Stop button reaches a busy kernel, is in :mod:`nbtrain.fit_job`.
"""

from __future__ import annotations

import difflib
import keyword
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.utils.process import arg_split

from nbtrain.core.learner import Learner
from nbtrain.core.resume import ResumePoint
from nbtrain.core.stages import STAGE_KEYS, Stage, StageError
from nbtrain.fit_job import PREPARERS, FitJob, run_async, transform_async_cells
from nbtrain.stages import parse_cell
from nbtrain.views import frontend, show

__all__ = [
    "NbtrainMagics",
    "last_view",
    "load_ipython_extension",
    "run_async",
    "unload_ipython_extension",
]

LEARNER_HINT = "Learner.pretrained(data)"


# ------------------------------------------------------------------------ magics
def _exclusive(line: str, *groups: tuple[str, ...]) -> None:
    """Refuse options that contradict each other (argparse would let the last one win)."""
    words = {word.partition("=")[0] for word in line.split()}
    for group in groups:
        used = [option for option in group if option in words]
        if len(used) > 1:
            raise UsageError(f"{' and '.join(used)} contradict each other; give one of them")


def _identifier(name: str, option: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{option} needs a variable name, got {name!r}")
    return name


@magics_class
class NbtrainMagics(Magics):
    """nbtrain's magics; ``%load_ext nbtrain`` registers them."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self.last: dict[str, Any] = {}  # the last view each magic showed (tests, notebooks)

    # ---- helpers ---------------------------------------------------------------------
    @property
    def ip(self) -> InteractiveShell:
        """The shell the magics are registered with."""
        if self.shell is None:
            raise UsageError("nbtrain's magics need an IPython shell; run %load_ext nbtrain")
        return self.shell

    @property
    def ns(self) -> dict[str, Any]:
        """The user's namespace."""
        return self.ip.user_ns

    def _parse(self, magic: Callable, line: str) -> Any:
        try:
            args = parse_argstring(magic, line)
        except (UsageError, ValueError) as exc:  # ValueError: unbalanced quotes
            hint, name = "", magic.__name__
            text = str(exc)
            if "unrecognized arguments" in text:
                unknown = [w for w in text.split(":", 1)[1].split() if w.startswith("--")]
                parser = magic.parser  # type: ignore[attr-defined]  # from @magic_arguments
                known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
                close = [
                    difflib.get_close_matches(w.replace("_", "-"), known, n=1) for w in unknown
                ]
                if any(close):
                    hint = "; did you mean " + ", ".join(c[0] for c in close if c) + "?"
                elif "--lr" in known:
                    hint = '; quote an expression with spaces, e.g. --lr "[lr/9, lr/3, lr]"'
            raise UsageError(f"{exc}{hint}; see %{name}? for the options") from None
        # argparse lets a repeated option silently win; here it is a mistake.
        options = [w.split("=", 1)[0] for w in arg_split(line) if w.startswith("--")]
        repeated = sorted({o for o in options if options.count(o) > 1})
        if repeated:
            raise UsageError(f"{', '.join(repeated)} given more than once; give each option once")
        return args

    def _learner(self, name: str) -> Learner:
        ns = self.ns
        if not name.isidentifier():
            raise UsageError(f"{name!r} is not a variable name; give the name of a Learner")
        if name not in ns:
            learners = [k for k, v in ns.items() if isinstance(v, Learner) and k[:1] != "_"]
            close = difflib.get_close_matches(name, learners, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"create one with {name} = {LEARNER_HINT}"
            )
            raise UsageError(f"no learner named {name!r} in the namespace; {hint}")
        learn = ns[name]
        if not isinstance(learn, Learner):
            raise UsageError(
                f"{name!r} is of type {type(learn).__name__}, not a Learner; "
                f"create one with {name} = {LEARNER_HINT}"
            )
        return learn

    def _ev(self, expr: str, what: str) -> Any:
        """Evaluate ``expr`` in the user's namespace. Quotes around the whole expression
        only group it (``--lr "[lr/9, lr/3, lr]"``, ``lr="lr / 3"``) and are dropped."""
        if (
            len(expr) >= 2
            and expr[0] == expr[-1]
            and expr[0] in "'\""
            and expr[0] not in expr[1:-1]
        ):
            expr = expr[1:-1]
        try:
            return self.ip.ev(expr)
        except Exception as exc:
            raise UsageError(
                f"{what}: cannot evaluate {expr!r}: {type(exc).__name__}: {exc}"
            ) from None

    def _int(self, expr: str | None, what: str, *, default: int | None = None) -> int | None:
        if expr is None:
            return default
        value = self._ev(expr, what)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{what} must be a whole number, got {value!r}")
        return value

    def _widgets(self) -> bool:
        return frontend.use_widgets(self.shell)

    # ---- %lr_find ----------------------------------------------------------------------
    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @argument(
        "--start",
        default="1e-7",
        metavar="LR",
        help="first rate, an expression; a list gives one rate per group (default 1e-7)",
    )
    @argument("--end", default="10", metavar="LR", help="last rate of the last group (default 10)")
    @argument("--iters", default="100", metavar="N", help="mini-batches in the sweep (default 100)")
    @argument("--seed", default=None, metavar="N", help="seed the sweep, for a repeatable curve")
    @argument(
        "--procs",
        default=None,
        metavar="N",
        help="the range test runs in one process; N > 1 says why in one line",
    )
    @argument(
        "--into",
        default="lr",
        metavar="NAME",
        help="variable that receives the picked rate (default lr)",
    )
    @line_magic
    def lr_find(self, line: str) -> None:
        """Run the LR range test and pick a learning rate from its plot.

        The rate grows exponentially from --start to --end over --iters mini-batches
        (Smith, arXiv:1506.01186); the model, optimizer and RNG are left as they were.
        The selector shows the smoothed loss against the rate (log scale) with every
        suggestion rule marked (valley, the default, is pre-selected). A click on the
        plot picks the nearest swept rate; "Use suggestion" takes the default again.
        Every pick is stored at once in the variable named by --into (default lr).
        Without widgets: prints the suggestions, shows a static plot and stores the
        suggestion.

        Example: %lr_find learn --end 1 --into lr
        """
        args = self._parse(self.lr_find, line)
        learn = self._learner(args.learner)
        into = _identifier(args.into, "--into")
        if isinstance(self.ns.get(into), Learner):
            raise UsageError(f"--into {into} would overwrite a Learner; name another variable")
        start, end = self._ev(args.start, "--start"), self._ev(args.end, "--end")
        if not isinstance(end, int | float) or isinstance(end, bool):
            raise UsageError(f"--end must be a number, got {end!r}")
        iters, seed = self._int(args.iters, "--iters"), self._int(args.seed, "--seed")
        widgets = self._widgets()
        sweep = show.SweepProgress(iters or 0) if widgets else None
        try:
            result = learn.lr_find(
                start,
                float(end),
                iters,
                seed=seed,
                on_step=sweep.on_step if sweep else None,
                procs=args.procs,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.last["lr_find"] = show.lr_finder(result, self.ns, into, widgets=widgets, sweep=sweep)

    # ---- %fit_cycles / %%fit_cycles ----------------------------------------------------
    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @argument(
        "--lr",
        default=None,
        metavar="EXPR",
        help="maximum rate: a number, one per layer group, or a slice; an expression "
        'evaluated in the namespace, e.g. --lr "[lr/9, lr/3, lr]" (default: lr)',
    )
    @argument("--cycles", default=None, metavar="N", help="number of SGDR cycles (default 1)")
    @argument(
        "--cycle-len", default=None, metavar="L", help="epochs in the first cycle (default 1)"
    )
    @argument(
        "--cycle-mult",
        default=None,
        metavar="M",
        help="each cycle is this many times longer (default 1)",
    )
    @argument(
        "--size", default=None, metavar="S", help="image size for this run (progressive resizing)"
    )
    @argument(
        "--precompute",
        action="store_const",
        const="True",
        default=None,
        help="train the head on cached body activations while the body is frozen",
    )
    @argument(
        "--no-precompute",
        action="store_const",
        const="False",
        dest="precompute",
        help="train through the images",
    )
    @argument(
        "--unfreeze",
        action="store_const",
        const="0",
        dest="freeze_to",
        default=None,
        help="train every layer group first",
    )
    @argument(
        "--freeze",
        action="store_const",
        const="-1",
        dest="freeze_to",
        help="train only the head first",
    )
    @argument(
        "--freeze-to",
        dest="freeze_to",
        metavar="K",
        help="freeze the groups before K first (negative counts from the end)",
    )
    @argument(
        "--seed", default=None, metavar="N", help="seed every RNG first, for a repeatable run"
    )
    @argument(
        "--opt",
        default=None,
        metavar="NAME",
        help="train with this optimizer from now on: sgd (momentum 0.9, the default) or "
        "adamw (its rates are ~10x lower: run %%lr_find again)",
    )
    @argument(
        "--patience",
        default=None,
        metavar="N",
        help="train until the validation loss stops improving for N epochs (one-epoch "
        "cycles; --cycles is then the most epochs), keeping the best epoch's weights",
    )
    @argument(
        "--procs",
        default=None,
        metavar="N",
        help="train on N worker processes with torch.distributed (one per GPU on CUDA, gloo "
        "on the CPU); auto: every GPU. The global batch is N x bs",
    )
    @argument(
        "--scale-lr",
        action="store_true",
        help="with --procs N: multiply every rate by N, for the N x larger global batch",
    )
    @argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="go on with the last unfinished run (stopped, interrupted, failed, or a kernel "
        "that died) from its newest checkpoint in models/resume, or from PATH",
    )
    @line_cell_magic
    def fit_cycles(self, line: str, cell: str | None = None) -> None:
        """Train with SGDR (cosine annealing with warm restarts, arXiv:1608.03983).

        Line magic: one run, e.g.
            %fit_cycles learn --lr 1e-2 --cycles 3 --cycle-len 1 --cycle-mult 2
        The first cycle lasts --cycle-len epochs, each later one --cycle-mult times
        longer (3, 1, 2 -> 1 + 2 + 4 = 7 epochs). Values are Python expressions evaluated
        in the namespace; --lr defaults to the variable lr (set by %lr_find).

        Cell magic: one stage per line, run in order under one progress display whose
        planned LR curve is drawn before the first batch. A stage is key=value tokens
        (keys: lr, cycles, cycle_len, cycle_mult, size, precompute, seed, freeze_to,
        patience, opt)
        and the flags freeze / unfreeze; options on the %%fit_cycles line are every
        stage's defaults, except --seed, which seeds the run once, before the first
        stage. Blank lines and # comments are skipped. Every line is checked before the
        first stage runs. Example:
            %%fit_cycles learn
            lr=lr cycles=1 precompute=True
            lr=lr cycles=3 precompute=False
            unfreeze lr=[lr/9, lr/3, lr] cycles=3 cycle_mult=2

        The display shows progress, each group's rate, the loss over the planned LR
        curve and a table per epoch; its Stop button ends training at the next batch
        boundary (later stages do not run). Without widgets: one line per epoch.

        --procs N trains the same stages on N worker processes (torch.distributed: one
        GPU each on CUDA, gloo on the CPU), each on its part of every global batch of
        N x bs; the display, the table and Stop work as in one process, and the learner
        holds the result. A worker that fails ends every rank, and leaves the learner as
        it was: --procs 2 on a model class defined in the notebook works too.

        While it runs, resumable checkpoints go to models/resume (learn.checkpoint_dir).
        After a Stop, an interrupt, an error or a dead kernel (rebuild the learner as
        before first), go on from where it stopped, on the same curve:
            %fit_cycles learn --resume
        """
        job = self.prepare_fit(line, cell)
        error: BaseException | None = None
        try:
            job.run()
        except BaseException as exc:
            error = exc
            raise
        finally:
            job.finish(error)

    def prepare_fit(self, line: str, cell: str | None) -> FitJob:
        """Parse the line and cell, plan every stage on the learner (which checks them)
        and display the view: nothing runs yet."""
        args = self._parse(self.fit_cycles, line)
        point, procs = None, None
        if args.resume is not None:
            learn, point = self.parse_resume(args, line, cell)
            plan = point.plan
        else:
            learn, wheres, stages = self.parse_fit(line, cell)
            if args.procs is not None:  # a number, an expression, or auto
                procs = "auto" if args.procs == "auto" else self._ev(args.procs, "--procs")
            try:
                plan = learn.plan_stages(stages, procs=procs, scale_lr=args.scale_lr)
            except StageError as exc:
                raise UsageError(f"{wheres[exc.index]}: {exc.reason}") from None
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        view, handle, listeners = show.fit_progress(plan, learn, widgets=self._widgets())
        self.last["fit_cycles"] = view
        job = FitJob(learn, plan, view, handle, listeners=listeners, resume=point)
        job.procs = procs
        return job

    def parse_resume(
        self, args: Any, line: str, cell: str | None
    ) -> tuple[Learner, ResumePoint]:
        """The learner and its checked checkpoint for ``--resume [PATH]``; the run goes on
        with the checkpoint's plan, so nothing else may be given. A name that is not
        bound yet (a restarted kernel) gets the learner built again from the checkpoint,
        once the checkpoint is known to resume."""
        flags = [t.split("=")[0] for t in arg_split(line) if t.startswith("--")]
        given = [flag for flag in flags if flag != "--resume"]
        if given or (cell is not None and self._cell(cell)):
            what = given[0] if given else "stage lines"
            raise UsageError(
                f"--resume goes on with the plan in the checkpoint; {what} cannot be given with it"
            )
        try:
            if args.learner.isidentifier() and args.learner not in self.ns:
                learn = Learner.from_checkpoint(args.resume or None)
                point = learn.resume_point(learn.last_checkpoint)
                self.ns[args.learner] = learn
                return learn, point
            learn = self._learner(args.learner)
            return learn, learn.resume_point(args.resume or None)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def parse_fit(self, line: str, cell: str | None) -> tuple[Learner, list[str], list[Stage]]:
        """The learner, and each stage with where it was written (``"line 3"``), its
        expressions evaluated in the user's namespace (not yet checked against the
        learner)."""
        args = self._parse(self.fit_cycles, line)
        _exclusive(
            line, ("--precompute", "--no-precompute"), ("--unfreeze", "--freeze", "--freeze-to")
        )
        learn = self._learner(args.learner)
        defaults = {key: getattr(args, key) for key in STAGE_KEYS}
        raw_stages = [("%fit_cycles", {})] if cell is None else self._cell(cell)
        wheres, stages = [], []
        for i, (where, raw) in enumerate(raw_stages):
            # --seed seeds the run once: later stages go on from where the RNGs are (the
            # same seed in every stage would repeat each stage's first batches)
            shared = {
                k: v for k, v in defaults.items() if v is not None and not (k == "seed" and i)
            }
            wheres.append(where)
            stages.append(self._stage({**shared, **raw}, where))
        return learn, wheres, stages

    @staticmethod
    def _cell(cell: str) -> list[tuple[str, dict[str, str]]]:
        try:
            return parse_cell(cell)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _stage(self, raw: dict[str, str], where: str) -> Stage:
        """One stage from its raw expressions, evaluated in the user's namespace."""
        if "lr" not in raw and "lr" not in self.ns:
            raise UsageError(
                f"{where}: no rate given and no variable lr; pass lr=... (--lr), "
                "or run %lr_find first"
            )
        values: dict[str, Any] = {
            key: expr.strip("'\"") if key == "opt" else self._ev(expr, f"{where}: {key}")
            for key, expr in raw.items()
        }  # an optimizer is named (opt=adamw), not an expression
        if "lr" not in values:
            values["lr"] = self.ns["lr"]
        try:
            return Stage(**values)
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None

    # ---- layer groups ------------------------------------------------------------------
    def _show_layers(self, learn: Learner) -> None:
        self.last["layers"] = show.layers(learn, widgets=self._widgets())

    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @argument(
        "--to",
        default=None,
        metavar="K",
        help="freeze the groups before K and train the rest (default: all but the head)",
    )
    @line_magic
    def freeze(self, line: str) -> None:
        """Freeze layer groups, then show the layer-freeze panel.

        Without --to only the last group (the head) trains; --to K freezes groups
        0..K-1 and trains K and later (negative K counts from the end). Takes effect at
        once: the next fit and lr_find use it (the optimizer keeps its momentum).
        """
        args = self._parse(self.freeze, line)
        learn = self._learner(args.learner)
        to = self._int(args.to, "--to")
        try:
            if to is None:
                learn.freeze()
            else:
                learn.freeze_to(to)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self._show_layers(learn)

    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @line_magic
    def unfreeze(self, line: str) -> None:
        """Make every layer group trainable, then show the layer-freeze panel."""
        learn = self._learner(self._parse(self.unfreeze, line).learner)
        learn.unfreeze()
        self._show_layers(learn)

    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @line_magic
    def layers(self, line: str) -> None:
        """Show the layer-freeze panel: one row per layer group with its name, parameter
        count, a trainable toggle (acts at once), BatchNorm mode and rate multiplier.
        Without widgets: the same as a table."""
        self._show_layers(self._learner(self._parse(self.layers, line).learner))

    # ---- %show_batch, %interpret -------------------------------------------------------
    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @argument("--n", default="16", metavar="N", help="how many images (default 16)")
    @argument(
        "--augmented",
        action="store_true",
        help="through the training transform (random crops, flips, rotations, jitter)",
    )
    @argument("--seed", default=None, metavar="N", help="draw these images (default: new ones)")
    @line_magic
    def show_batch(self, line: str) -> None:
        """Show training images as the model sees them: after the eval transform (or
        the training one with --augmented), de-normalised, with their labels. The
        "Draw again" button draws others; without widgets, one static figure."""
        args = self._parse(self.show_batch, line)
        learn = self._learner(args.learner)
        n = self._ev(args.n, "--n")
        seed = self._ev(args.seed, "--seed") if args.seed is not None else None
        try:
            self.last["show_batch"] = show.batch(
                learn, n=n, augmented=args.augmented, seed=seed, widgets=self._widgets()
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    @no_var_expand
    @magic_arguments()
    @argument("learner", help="name of a Learner in the namespace, e.g. learn")
    @argument("--k", default="9", metavar="K", help="top losses to show (default 9)")
    @line_magic
    def interpret(self, line: str) -> None:
        """Look at the mistakes on the validation images: the confusion matrix (a click
        on a cell shows its images) and the K images with the highest loss."""
        args = self._parse(self.interpret, line)
        learn = self._learner(args.learner)
        k = self._ev(args.k, "--k")
        try:
            self.last["interpret"] = show.interpretation(learn, k=k, widgets=self._widgets())
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    # ---- %nbtrain_config ---------------------------------------------------------------
    @no_var_expand
    @magic_arguments()
    @argument(
        "--widgets",
        action="store_const",
        const="widgets",
        dest="mode",
        default=None,
        help="always use widgets",
    )
    @argument(
        "--text", action="store_const", const="text", dest="mode", help="always use plain text"
    )
    @argument(
        "--auto",
        action="store_const",
        const="auto",
        dest="mode",
        help="widgets inside a kernel, text elsewhere (the default)",
    )
    @line_magic
    def nbtrain_config(self, line: str) -> None:
        """Choose the front end of nbtrain's displays and print the choice.

        --widgets or --text force one; --auto (the default) uses widgets inside a
        Jupyter kernel and text elsewhere. The environment variable NBTRAIN_FRONTEND
        (widgets, text, auto) applies when none is forced here.
        """
        args = self._parse(self.nbtrain_config, line)
        if args.mode is not None:
            frontend.set_mode(args.mode)
        print(frontend.describe(self.shell))


def last_view(kind: str, shell: Any = None) -> Any:
    """The last view a magic displayed: ``"lr_find"``, ``"fit_cycles"`` or ``"layers"``."""
    shell = shell if shell is not None else frontend.current_shell()
    magics = shell.magics_manager.registry.get("NbtrainMagics") if shell else None
    if magics is None:
        raise ValueError("nbtrain is not loaded; run %load_ext nbtrain")
    if kind not in magics.last:
        raise ValueError(f"no {kind} view shown yet")
    return magics.last[kind]


def load_ipython_extension(ip: Any) -> None:
    """Register the magics and the async rewrite of ``%fit_cycles`` cells."""
    magics = NbtrainMagics(ip)
    ip.register_magics(magics)
    PREPARERS["fit_cycles"] = magics.prepare_fit
    if transform_async_cells not in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.append(transform_async_cells)


def unload_ipython_extension(ip: Any) -> None:
    """Remove what :func:`load_ipython_extension` added, and the front-end override."""
    manager = ip.magics_manager
    instance = manager.registry.pop("NbtrainMagics", None)
    if instance is not None and PREPARERS.get("fit_cycles") == instance.prepare_fit:
        del PREPARERS["fit_cycles"]
    for kind, names in NbtrainMagics.magics.items():
        for name in names:
            fn = manager.magics[kind].get(name)
            if fn is not None and getattr(fn, "__self__", None) is instance:
                del manager.magics[kind][name]
    while transform_async_cells in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.remove(transform_async_cells)
    frontend.set_mode(None)
