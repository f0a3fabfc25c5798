"""The run engine: resume gives the same losses, NaN guard, checkpoint errors, DDP on CPU (gloo)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from config import make_config
from stages import engine
from stages.checkpoints import CheckpointError, load_checkpoint
from stages.images import image_grid


def _cfg(out_dir, **kw):
    base = dict(out_dir=str(out_dir), device="cpu", progress=False, log_interval=1, image_log_interval=2,
                seed=3, num_workers=0)
    base.update(kw)
    return make_config([], **base)


def _problem(run):
    """A small regression with dropout (uses the global RNG) and batches from a generator."""
    torch.manual_seed(run.seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    model = engine.wrap_model(model, run)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    gen = torch.Generator().manual_seed(run.seed)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    record = []

    def step_fn(step):
        x = torch.randn(8, 4, generator=gen)
        loss = (model(x) - x @ w).square().mean()
        record.append(float(loss.detach()))
        return {"loss": loss, "mse": loss.detach()}

    return model, opt, sched, gen, step_fn, record


def _train(cfg, total, validate=True, step_fn_wrap=None):
    run = engine.setup(cfg)
    model, opt, sched, gen, step_fn, record = _problem(run)
    fn = step_fn if step_fn_wrap is None else step_fn_wrap(step_fn)
    val = (lambda step: {"err": float(sum(p.detach().abs().sum() for p in model.parameters()))}) if validate else None
    imgs = lambda step: {"grid": image_grid(torch.ones(2, 1, 16, 16), None, None)}  # noqa: E731
    out = engine.train(run, model, opt, sched, fn, total, steps_per_epoch=3, validate_fn=val,
                       best_key="err", generators=[gen], image_fn=imgs)
    engine.teardown(run)
    return model, record, out


def test_resume_reproduces_uninterrupted_run(tmp_path):
    _, full, _ = _train(_cfg(tmp_path / "a"), 10)
    _, first, _ = _train(_cfg(tmp_path / "b"), 6)       # "killed" after its epoch-2 checkpoint
    model_b, rest, _ = _train(_cfg(tmp_path / "b", resume=True), 10)
    assert first + rest == full
    ck = load_checkpoint(tmp_path / "b" / "latest.pt")
    assert ck["step"] == 10 and ck["epoch"] == 3 and ck["config"]["resume"] is True
    assert ck["scheduler"]["last_epoch"] == 3                 # StepLR stepped once per 3-step epoch
    assert (tmp_path / "b" / "best.pt").is_file() and (tmp_path / "b" / "config.yaml").is_file()
    assert not list((tmp_path / "b").glob("*.tmp"))
    assert list((tmp_path / "b" / "tb").glob("events.*"))


def test_nan_guard_saves_last_good_and_names_step(tmp_path):
    def wrap(step_fn):
        def fn(step):
            out = step_fn(step)
            if step == 4:
                return {"loss": out["loss"] * float("nan"), "mse": out["mse"]}
            return out
        return fn

    cfg = _cfg(tmp_path)
    run = engine.setup(cfg)
    model, opt, sched, gen, step_fn, _ = _problem(run)
    fn = wrap(step_fn)
    with pytest.raises(engine.NonFiniteLoss, match=r"step 4: loss=nan, mse="):
        engine.train(run, model, opt, sched, fn, 10, 3, generators=[gen])
    engine.teardown(run)
    good = load_checkpoint(tmp_path / "last_good.pt")
    assert good["step"] == 4
    for k, v in model.state_dict().items():                  # the weights were not touched by the NaN step
        assert torch.equal(good["model"][k], v)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="latest.pt"):
        engine.setup(_cfg(tmp_path, resume=True))


def test_image_grid_draws_joints():
    depth = torch.ones(3, 1, 32, 32)
    joints = torch.zeros(3, 21, 3)                  # every joint at the crop centre
    img = image_grid(depth, torch.zeros(3, 1, 32, 32), joints, n=2)
    assert img.shape == (3, 64, 64)
    assert img[:, 16, 16].sum() > 0 and img[:, 2, 2].sum() == 0   # joint drawn, background black
    assert torch.allclose(img[:, 5, 40], torch.full((3,), 0.5))    # rendered tile: depth 0 -> grey


def test_device_selection():
    assert engine.select_device("cpu").type == "cpu"
    assert engine.select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model, record, _ = _train(_cfg(out_dir), 4, validate=False)
    torch.save({"state": engine.unwrap(model).state_dict(), "record": record}, f"{out_dir}/rank{rank}.pt")


def test_ddp_two_processes_gloo_identical_weights(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["record"] != b["record"]                 # each rank saw its own batches ...
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k])   # ... yet the weights stay identical
    assert (tmp_path / "latest.pt").is_file()


def test_weight_average_follows_the_closed_form_and_restores():
    from stages.averaging import WeightAverage
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    avg = WeightAverage(net, 0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)                       # the trained weights jump by 1 and stay there
        net[1].num_batches_tracked.fill_(7)
    for _ in range(5):
        avg.update(net)
    for k, v in avg.state_dict().items():     # avg_n = w + 0.9^n (w0 - w)
        if k.endswith("num_batches_tracked"):
            assert int(v) == 7
        else:
            want = net.state_dict()[k] + 0.9 ** 5 * (w0[k] - net.state_dict()[k])
            torch.testing.assert_close(v, want)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    with avg.applied(net):
        torch.testing.assert_close(net[0].weight, avg.state_dict()["0.weight"])
    torch.testing.assert_close(net[0].weight, own["0.weight"])
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)


def test_weight_average_module_is_the_average():
    """keep_module: a frozen eval-mode copy whose forward uses the averaged weights."""
    from stages.averaging import WeightAverage
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net, 0.5, keep_module=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(2.0)
    avg.update(net)
    m = avg.module
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    torch.testing.assert_close(m[0].weight, net[0].weight - 1.0)     # halfway after one step at 0.5
    x = torch.randn(4, 3)
    net.eval()
    with avg.applied(net):
        expected = net(x)
    torch.testing.assert_close(m(x), expected)
    avg.load_state_dict({k: torch.zeros_like(v) for k, v in avg.state_dict().items()})
    assert float(m[0].weight.abs().sum()) == 0.0


def test_engine_saves_the_average_and_resumes_both_exactly(tmp_path):
    def train(out, total, resume=False):
        run = engine.setup(_cfg(out, resume=resume))
        model, opt, sched, gen, step_fn, record = _problem(run)
        engine.train(run, model, opt, sched, step_fn, total, steps_per_epoch=3, generators=[gen],
                     average_decay=0.8)
        engine.teardown(run)
        return load_checkpoint(out / "latest.pt"), record

    full, _ = train(tmp_path / "a", 9)
    train(tmp_path / "b", 6)
    resumed, _ = train(tmp_path / "b", 9, resume=True)
    for key in ("model", "train_model"):
        for k, v in full[key].items():
            torch.testing.assert_close(resumed[key][k], v, rtol=0, atol=0)
    moved = [float((full["model"][k] - full["train_model"][k]).abs().max()) for k in full["model"]]
    assert max(moved) > 1e-4                  # the saved weights are the average, not the last ones
