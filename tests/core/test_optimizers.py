"""The optimizer as a choice: SGD with momentum (the course's) or AdamW, by name, from a
stage, a magic or the Learner; a resumed run goes on with the optimizer it had."""

from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from nbtrain.core import Learner, Stage
from nbtrain.views import frontend
from tests.core.test_resume import Interrupt, new_learner, same, weights


def test_a_stage_switches_the_optimizer_and_the_rest_stays(tmp_path):
    learn = new_learner(tmp_path)
    assert learn.opt_name == "sgd" and isinstance(learn.opt, torch.optim.SGD)
    learn.freeze()
    frozen = {k: v.clone() for k, v in learn.model[0].state_dict().items()}
    learn.fit_stages([Stage(1e-3, cycles=2, opt="adamw")])
    assert learn.opt_name == "adamw" and isinstance(learn.opt, torch.optim.AdamW)
    assert len(learn.opt.param_groups) == learn.n_groups
    assert all(torch.equal(v, learn.model[0].state_dict()[k]) for k, v in frozen.items())
    assert learn.opt.param_groups[-1]["lr"] > 0  # the loop writes the rates into AdamW's groups
    learn.fit_stages([Stage(0.01, opt="sgd")])
    assert isinstance(learn.opt, torch.optim.SGD)


def test_a_learner_made_with_adamw_by_name(tmp_path):
    learn = Learner(new_learner(tmp_path).model, new_learner(tmp_path).data, opt_func="adamw")
    assert isinstance(learn.opt, torch.optim.AdamW) and learn.opt_name == "adamw"
    with pytest.raises(ValueError, match="no optimizer 'adam'; these are: sgd, adamw"):
        Learner(learn.model, learn.data, opt_func="adam")
    with pytest.raises(ValueError, match="opt must be one of sgd, adamw, got 'lamb'"):
        Stage(0.1, opt="lamb")


def test_a_run_that_switched_to_adamw_resumes_bit_for_bit(tmp_path):
    plan = [Stage(0.1, cycles=2, seed=0), Stage(1e-3, cycles=2, opt="adamw")]
    reference = new_learner(tmp_path / "ref")
    reference.fit_stages(plan)
    run = new_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(plan, listeners=[Interrupt(21, "batch_end")])
    fresh = new_learner(tmp_path / "fresh", init_seed=9)  # starts with SGD
    fresh.checkpoint_dir = run.checkpoints.folder
    fresh.resume()
    assert fresh.opt_name == "adamw"
    assert same(weights(fresh), weights(reference))


def test_the_magic_takes_opt_by_name(tmp_path):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nbtrain")
    frontend.set_mode("text")
    try:
        learn = ip.user_ns["learn"] = new_learner(tmp_path)
        with capture_output():
            ip.run_line_magic("fit_cycles", "learn --lr 1e-3 --opt adamw")
        assert learn.opt_name == "adamw"
        with capture_output():
            ip.run_cell_magic("fit_cycles", "learn", "lr=0.01 opt=sgd\n")
        assert learn.opt_name == "sgd"
        with pytest.raises(UsageError, match="opt must be one of sgd, adamw"):
            ip.run_line_magic("fit_cycles", "learn --lr 0.01 --opt adam")
    finally:
        frontend.set_mode(None)
        ip.user_ns.pop("learn", None)
