"""One fine-tuning step's numbers held fixed while its code is made faster (issue 16).

The values in tests/data/step_values.json were written by this file at the commit before the speed
work (`python tests/test_step_values.py --write`, 2026-12-02, torch 2.13.0+cpu): every loss term of
one `tiny` 2-stage fine-tuning step (synthetic and real-batch terms, 4 + 4 samples, 128 points,
untrained network so the point-to-mesh search sees far meshes) and the gradient norm of every
parameter tensor of the network.  A faster implementation must give the same numbers to float32
rounding (relative 1e-4, absolute 1e-6).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VALUES = ROOT / "tests" / "data" / "step_values.json"
REL, ABS = 1e-4, 1e-6


def step_values() -> dict[str, float]:
    """Loss terms and per-parameter gradient norms of one seeded fine-tuning step."""
    from types import SimpleNamespace

    from config import make_config
    from datasets.synthetic import SyntheticHands
    from losses.finetune import synthetic_losses
    from render.camera import crop_intrinsics
    from stages.common import build_parts
    from stages.finetune import real_loss_total

    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = make_config([], net="tiny", stage_num=2, batch_size=4, num_points=128, hand_model="standin",
                      device="cpu", train_stage="finetune")
    hand, renderer, model = build_parts(cfg, device)
    synth = SyntheticHands(cfg, hand, renderer, "original")
    gen, point_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    s = synth.batch(4, gen, device)
    r = synth.batch(4, gen, device)
    x = {"depth": r["clean"], "center": r["center"], "cube": r["cube"], "K_crop": crop_intrinsics(r["K"], r["M"]),
         "frame_mask": torch.ones(4, 128, 128, dtype=torch.bool)}
    run = SimpleNamespace(autocast=lambda: torch.autocast("cpu", enabled=False))
    outs = model(s["clean"], s["center"], s["cube"], crop_intrinsics(s["K"], s["M"]))
    terms = synthetic_losses(outs, s, hand, cfg)
    _, real_terms, stats, _ = real_loss_total(model, x, renderer, hand, cfg, run, point_gen)
    terms.update(real_terms)
    sum(terms.values()).backward()
    values = {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
    values.update({f"stat/{k}": float(v) for k, v in stats.items()})
    values.update({f"grad/{n}": float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None})
    return values


def test_fine_tuning_step_gives_the_recorded_numbers():
    expected = json.loads(VALUES.read_text())
    got = step_values()
    assert set(got) == set(expected)
    bad = {k: (got[k], v) for k, v in expected.items() if abs(got[k] - v) > ABS + REL * abs(v)}
    assert not bad, f"{len(bad)} of {len(expected)} values differ (got, recorded): {dict(list(bad.items())[:8])}"
    assert any(v != 0 for k, v in expected.items() if k.startswith("loss/real")), "the real-batch terms must act"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        VALUES.parent.mkdir(exist_ok=True)
        VALUES.write_text(json.dumps(step_values(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {VALUES}")
