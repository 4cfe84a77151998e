"""Inference throughput of both encoders on real pairs (README, Inference speed):
python -m competitions.codesim.speed 192   (N scored pairs of atcoder_python_grouped, the pretrained MiniLM)"""
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common.task import FoldContext, model_inputs
from competitions.codesim.task import CodesimTask

DATA = "../shared/data/code_similarity/atcoder_python_grouped"


def main(n: int) -> None:
    task = CodesimTask()
    for extra in ([], ["experiment=cross", "tta=false"], ["experiment=cross", "tta=true"]):
        cfg = task.config([f"data_dir={DATA}", "max_len=128", "batch_size=32", *extra])
        df = task.load_train(cfg).sample(n, random_state=0).reset_index(drop=True)
        ctx = FoldContext(0, Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp()))
        model = task.build_model(cfg, 1, ctx, pretrained=True).eval()
        start = time.time()
        loader = DataLoader(task.dataset(cfg, df, "test", ctx), batch_size=cfg.batch_size,
                            collate_fn=task.collate_fn(cfg, ctx))
        with torch.no_grad():
            for batch in loader:
                for view in task.tta_views(cfg, batch):
                    model(**model_inputs(view))
        seconds = time.time() - start
        distinct = len(set(df.code1) | set(df.code2))
        print(f"{cfg.encoder} tta={cfg.tta}: {n} pairs ({distinct} distinct programs) in {seconds:.1f} s = "
              f"{n / seconds:.1f} pairs/s, {distinct / seconds:.1f} programs/s", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 192)
