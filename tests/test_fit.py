"""The shared training loop (wsss.fit): poly LR per parameter group, the time budget, the non-finite loss error,
exact resume in both feeding modes, and each trainer built on it (DeepLab, CAM classifier, saliency net) interrupted
mid-run and resumed to the weights of an uninterrupted run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from wsss import fit as fit_module
from wsss.errors import StageError
from wsss.fit import FitState, fit, restore, training_state


class Tiny(nn.Module):
    """A 2-layer net whose training draws from torch's global RNG (dropout), so exact resume needs the RNG state."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.backbone(x))))


def _tiny(seed: int = 0, momentum: float = 0.9):
    torch.manual_seed(seed)
    model = Tiny()
    groups = [{"params": model.backbone.parameters(), "lr_scale": 0.1},
              {"params": model.head.parameters(), "lr_scale": 1.0}]
    return model, torch.optim.SGD(groups, lr=0.0, momentum=momentum)


def _batches(n: int, start: int = 0):
    """Batch ``k`` is a function of ``k`` alone, so the tail from ``start`` is what a resumed run reads."""
    for k in range(start, n):
        g = torch.Generator().manual_seed(k)
        x = torch.randn(3, 4, generator=g)
        yield x, (x[:, 0] > 0).long()


def _ce(logits, target):
    return nn.functional.cross_entropy(logits, target)


# ------------------------------------------------------------------------------------------- the loop
def test_poly_lr_at_known_steps_with_each_group_at_its_scale():
    model, opt = _tiny()
    seen = []
    state = fit(model, opt, _batches(10), _ce, lr=0.1, total_steps=10, power=0.9, progress=False,
                on_step=lambda s: seen.append((s.step, s.lr, [g["lr"] for g in opt.param_groups])))
    assert [step for step, _, _ in seen] == list(range(1, 11))
    for k, (_, base, (backbone, head)) in enumerate(seen):
        expect = 0.1 * (1 - k / 10) ** 0.9  # the rate step k trained at (step k + 1 is done)
        assert base == pytest.approx(expect, rel=1e-12)
        assert head == pytest.approx(expect, rel=1e-12) and backbone == pytest.approx(0.1 * expect, rel=1e-12)
    assert seen[0][1] == pytest.approx(0.1) and seen[5][1] == pytest.approx(0.1 * 0.5 ** 0.9)
    assert state.step == 10 and state.complete and not state.budget_spent and len(state.losses) == 10
    assert state.images == 30 and all(math.isfinite(v) for v in state.losses)


def test_a_time_budget_decays_the_rate_to_zero_and_ends_the_schedule(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: now[0])

    def timed(n):  # each batch arrives 10 s after the previous one
        for k, batch in enumerate(_batches(n)):
            now[0] = 10.0 * k
            yield batch

    model, opt = _tiny()
    rates = []
    state = fit(model, opt, timed(1000), _ce, lr=0.1, total_steps=1000, budget=50.0, progress=False,
                on_step=lambda s: rates.append(s.lr))
    # step k trains at elapsed 10 k s: the budget's progress (10 k / 50) runs ahead of the steps' (k / 1000)
    assert rates == pytest.approx([0.1 * (1 - k / 5) ** 0.9 for k in range(6)])
    assert rates[-1] == 0.0 and state.step == 6 and state.budget_spent and state.complete
    assert state.elapsed == 50.0
    again = fit(model, opt, timed(1000), _ce, lr=0.1, total_steps=1000, budget=50.0, state=state, progress=False)
    assert again.step == 6 and again.losses == []  # a spent budget trains no further
    # a resumed budget counts the seconds spent before: 30 s spent, so the first step is already at progress 0.6
    model, opt, now[0] = *_tiny(), 0.0
    rates = []
    fit(model, opt, timed(3), _ce, lr=0.1, total_steps=1000, budget=50.0, state=FitState(step=0, elapsed=30.0),
        progress=False, on_step=lambda s: rates.append(s.lr))
    assert rates[0] == pytest.approx(0.1 * 0.4 ** 0.9)


def test_under_a_time_budget_the_bar_counts_to_where_the_budget_ends(monkeypatch):
    """The progress total (its % and time left) follows the pace: step s done at 10 (s - 1) s of a 50 s budget
    -> s * 50 / (10 (s - 1)) steps, at least s + 1, at most --iterations; the spent budget's step at the end."""
    now = [0.0]
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: now[0])
    totals = []

    class Bar:
        def __init__(self, *, total, **_):
            self.total, self.n = total, 0

        def update(self, n=1):
            self.n += n
            totals.append(self.total)

        def set_postfix(self, **_):
            pass

        def close(self):
            totals.append(("closed", self.n, self.total))

    monkeypatch.setattr(fit_module, "progress_bar", Bar)

    def timed(n):
        for k, batch in enumerate(_batches(n)):
            now[0] = 10.0 * k
            yield batch

    model, opt = _tiny()
    fit(model, opt, timed(1000), _ce, lr=0.1, total_steps=1000, budget=50.0)
    assert totals == [1000, 10, 8, 7, 6, 7, ("closed", 6, 6)]
    totals.clear()
    model, opt = _tiny()
    fit(model, opt, _batches(4), _ce, lr=0.1, total_steps=4, budget=1e6)  # the iterations end first
    assert totals[-1] == ("closed", 4, 4)


def test_a_non_finite_loss_stops_before_the_step_with_the_fix():
    model, opt = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saves = []
    calls = []

    def blows_up(logits, target):
        calls.append(1)
        return _ce(logits, target) * (float("inf") if len(calls) == 3 else 1.0)

    with pytest.raises(StageError, match=r"run/x: the training loss became inf at iteration 3; lower --lr \(now "
                                         r"0\.1\) and rerun with --overwrite"):
        fit(model, opt, _batches(10), blows_up, lr=0.1, total_steps=10, checkpoint_every=2, where="run/x",
            save=lambda s: saves.append((s.step, {k: v.clone() for k, v in model.state_dict().items()})),
            progress=False)
    assert [step for step, _ in saves] == [2]  # the checkpoint before the bad step stays the last one
    after_two = saves[0][1]
    assert all(torch.equal(model.state_dict()[k], after_two[k]) for k in after_two)  # the bad step was not taken
    assert not all(torch.equal(before[k], after_two[k]) for k in before)


def test_iterations_resume_exactly_and_need_the_rng_state():
    model, opt = _tiny()
    fit(model, opt, _batches(6), _ce, lr=0.1, total_steps=6, seed=3, progress=False)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    saved = {}
    model, opt = _tiny()
    half = fit(model, opt, _batches(6), _ce, lr=0.1, total_steps=6, seed=3, stop_at=3, checkpoint_every=100,
               save=lambda s: saved.update(training_state(model, opt), step=s.step), progress=False)
    assert saved["step"] == 3 and half.step == 3 and not half.complete  # a stop writes a checkpoint
    torch.manual_seed(999)  # another process: another global RNG state

    def resume(checkpoint):
        model, opt = _tiny(seed=5)  # other initial weights: the checkpoint's replace them
        state = fit(model, opt, _batches(6, start=3), _ce, lr=0.1, total_steps=6, seed=3,
                    state=FitState(step=checkpoint["step"]), restore_from=checkpoint, progress=False)
        return state, model

    state, model = resume(saved)
    assert state.start_step == 3 and state.step == 6 and state.complete
    for key, value in reference.items():
        assert torch.equal(model.state_dict()[key], value), key
    # without the RNG states the dropout masks differ, and so do the weights
    _, other = resume({k: v for k, v in saved.items() if k != "rng"})
    assert not all(torch.equal(other.state_dict()[k], v) for k, v in reference.items())


def test_epochs_feed_positions_and_checkpoint_every_epoch():
    positions, epochs_seen = [], []

    def epoch_batches(epoch):  # 3 positions an epoch, the last left out (as the saliency net's lone last image)
        return _batches(epoch * 3 + 2, start=epoch * 3)

    model, opt = _tiny()
    saves = []
    state = fit(model, opt, epoch_batches, _ce, lr=0.1, epochs=3, steps_per_epoch=3, progress=False,
                on_step=lambda s: positions.append(s.step),
                on_epoch=lambda s: epochs_seen.append((s.epoch, len(s.epoch_losses), sum(s.epoch_sizes))),
                save=lambda s: saves.append((s.epoch, s.complete)))
    assert positions == [1, 2, 4, 5, 7, 8]
    assert epochs_seen == [(1, 2, 6), (2, 2, 6), (3, 2, 6)]
    assert saves == [(1, False), (2, False), (3, True)] and state.complete and state.epoch == 3
    resumed = fit(model, opt, epoch_batches, _ce, lr=0.1, epochs=3, steps_per_epoch=3, progress=False,
                  state=FitState(epoch=3))
    assert resumed.losses == [] and resumed.complete  # nothing left to train


def test_restore_reads_an_old_bare_torch_rng_state():
    model, opt = _tiny()
    torch.manual_seed(11)
    expect = torch.rand(3)
    torch.manual_seed(11)
    saved = {"model": model.state_dict(), "rng": torch.get_rng_state()}  # a classifier.pt of before the shared loop
    torch.manual_seed(0)
    restore(saved, model, opt)
    assert torch.equal(torch.rand(3), expect)


# ------------------------------------------------------------------------------------- the three trainers
class Killed(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def _kill_after(monkeypatch, module, saves: int):
    real = module.save_checkpoint
    count = []

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        count.append(1)
        if len(count) == saves:
            raise Killed

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    return lambda: monkeypatch.setattr(module, "save_checkpoint", real)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_deeplab_training_killed_mid_run_resumes_to_the_same_weights(demo_root, tmp_path, monkeypatch):
    import wsss.trainers.segmentation as train
    from wsss.config import TrainConfig
    from wsss.datasets import open_dataset
    from wsss.io import read_csv
    from wsss.runtime import load_checkpoint
    from wsss.stages.train import run_train

    torch.set_num_threads(1)
    ds = open_dataset(demo_root, "train")
    config = TrainConfig(iterations=5, batch_size=2, crop_size=32, checkpoint_every=1, loader_workers=0,
                         optimizer="sgd", lr=1e-3)
    one = run_train("segnet_basic", config, ds, tmp_path / "one", device="cpu", progress=False)
    unpatch = _kill_after(monkeypatch, train, saves=2)
    with pytest.raises(Killed):
        run_train("segnet_basic", config, ds, tmp_path / "two", device="cpu", progress=False)
    unpatch()
    ckpt = tmp_path / "two/train/segnet_basic/checkpoint.pt"
    assert load_checkpoint(ckpt)["iteration"] == 2
    torch.manual_seed(1234)
    two = run_train("segnet_basic", config, ds, tmp_path / "two", device="cpu", progress=False)
    assert two.start_iteration == 2 and two.iterations == 5 and not two.stopped_early
    a, b = load_checkpoint(one.checkpoint), load_checkpoint(ckpt)
    _assert_same_weights(a["model"], b["model"])
    assert a["iteration"] == b["iteration"] == 5 and set(a) == set(b)
    columns = ("iteration", "epoch", "lr")  # not the timings, nor the loss (the mean over this call's iterations)
    rows = [[r[k] for k in columns] for r in read_csv(ckpt.parent / "log.csv")]
    assert rows == [[r[k] for k in columns] for r in read_csv(one.checkpoint.parent / "log.csv")]
    assert [r[0] for r in rows] == ["5"] and float(rows[0][2]) == pytest.approx(1e-3 * 0.2 ** 0.9, rel=1e-5)


@pytest.mark.slow
def test_cam_classifier_killed_mid_run_resumes_to_the_same_weights(demo_root, tmp_path, monkeypatch):
    import wsss.trainers.cam_classifier as tc
    from wsss.config import CamConfig
    from wsss.datasets import open_dataset

    torch.set_num_threads(1)
    config = CamConfig(backbone="resnet18", weights="none", epochs=3, batch_size=4, crop_size=32,
                       resize_long=(40, 64), lr=1e-2, optimizer="sgd", backbone_lr_scale=0.5, bf16="off",
                       device="cpu")
    ds = open_dataset(demo_root, "train")
    ref = tc.read_checkpoint(tc.train_classifier(ds, tmp_path / "ref", config))
    unpatch = _kill_after(monkeypatch, tc, saves=2)
    with pytest.raises(Killed):
        tc.train_classifier(ds, tmp_path / "run", config)
    unpatch()
    mid = tc.read_checkpoint(tmp_path / "run" / tc.CHECKPOINT)
    assert mid["epoch"] == 2 and not mid["complete"] and "optimizer" in mid and len(mid["log"]) == 2
    torch.manual_seed(1234)
    got = tc.read_checkpoint(tc.train_classifier(ds, tmp_path / "run", config))
    assert got["epoch"] == ref["epoch"] == 3 and got["complete"] and "optimizer" not in got
    _assert_same_weights(ref["model"], got["model"])
    # the log rows agree but for the timings (epoch, steps, images, loss, lr)
    assert [r.split(",")[:5] for r in got["log"]] == [r.split(",")[:5] for r in ref["log"]]
    assert [r.split(",")[0] for r in got["log"]] == ["1", "2", "3"]


@pytest.mark.slow
def test_saliency_net_killed_mid_run_resumes_to_the_same_weights(demo_root, tmp_path, monkeypatch):
    import wsss.stages.saliency as stage
    from wsss.config import SaliencyConfig
    from wsss.datasets import open_dataset
    from wsss.io import load_checkpoint

    torch.set_num_threads(1)
    ds = open_dataset(demo_root, "train")  # 9 images, batches of 4: the lone last image of each epoch is left out
    config = SaliencyConfig(backbone="resnet18", weights="none", input_size=32, epochs=3, batch_size=4)
    (tmp_path / "ref").mkdir()
    ref = load_checkpoint(stage.train_saliency_stage(config, ds, tmp_path / "ref"))
    (tmp_path / "run").mkdir()
    unpatch = _kill_after(monkeypatch, stage, saves=1)
    with pytest.raises(Killed):
        stage.train_saliency_stage(config, ds, tmp_path / "run")
    unpatch()
    assert load_checkpoint(tmp_path / "run" / stage.CHECKPOINT)["epoch"] == 1
    assert not (tmp_path / "run" / stage.FINAL).exists()
    torch.manual_seed(1234)
    got = load_checkpoint(stage.train_saliency_stage(config, ds, tmp_path / "run"))
    assert got["epoch"] == ref["epoch"] == 3
    _assert_same_weights(ref["model"], got["model"])
    assert [r[:2] for r in got["log"]] == [r[:2] for r in ref["log"]]  # epoch and mean loss, not the seconds
    assert np.all(np.diff([r[1] for r in ref["log"]]) != 0)  # three real epochs, not one repeated
