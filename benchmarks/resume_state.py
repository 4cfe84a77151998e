"""Seconds one epoch-end resume state takes to write (accelerator.save_state + trainer_state.json), for the two
models of the trainer-overhead benchmark: python -m benchmarks.resume_state"""
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from accelerate import Accelerator

from common.text import create_text_model
from common.checkpoints import save_resume_state
from common.vision import create_image_model

TEXT_INPUTS = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
MODELS = {
    "MiniLM": (lambda d: create_text_model("sentence-transformers/all-MiniLM-L6-v2", 1, d, True), TEXT_INPUTS),
    "EfficientNet-Lite0": (lambda d: create_image_model("tf_efficientnet_lite0", 1, True),
                           {"image": torch.zeros(2, 3, 64, 64)}),
}

for name, (build, inputs) in MODELS.items():
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp))
        optimizer = torch.optim.AdamW(model.parameters())
        model(**inputs).sum().backward()
        optimizer.step()  # the optimizer's state exists, as after an epoch
        accelerator = Accelerator(cpu=True)
        model, optimizer = accelerator.prepare(model, optimizer)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            save_resume_state(accelerator, Path(tmp), {"epoch": 1})
            times.append(time.perf_counter() - start)
        print(f"{name}: resume state {statistics.median(times[1:]):.2f} s (median of 3 after a warm-up)")
