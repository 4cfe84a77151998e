"""Zindi Makerere Fall Armyworm: maize leaf photo -> probability of fall-armyworm damage (ROC-AUC).

Raw layout: Train.csv (Image_id,Label), Test.csv (Image_id), SampleSubmission.csv (Image_id,<target>), Images/.
The submission's target column is read from SampleSubmission.csv: Zindi's says Target, re-uploads say Label.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from common.folds import FoldSpec
from common.io import DataError
from common.task import read_frame
from common.vision import ImageTask


class ArmywormTask(ImageTask):
    name = "armyworm"
    kind = "binary"          # one logit, BCE-with-logits, sigmoid probability (common/task.py)
    metric = "roc_auc"
    id_column = "Image_id"   # the file name in Images/, extension included (id_02amazy34fgh2.jpg)
    target_column = "Label"  # 0 healthy, 1 damaged
    fold_spec = FoldSpec(stratify="Label")
    sample_submission = "SampleSubmission.csv"
    config_path = Path(__file__).with_name("config.yaml")

    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        path = self.data_dir(cfg) / "Train.csv"
        df = read_frame(path, [self.id_column, self.target_column], id_column=self.id_column)
        labels = df[self.target_column]
        bad = ~pd.to_numeric(labels, errors="coerce").isin([0, 1])
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise DataError(f"{path}: column {self.target_column!r} must be 0 or 1; {int(bad.sum())} row(s) are "
                            f"not, the first at data row {row + 1}: {str(labels.iloc[row])!r}")
        df[self.target_column] = df[self.target_column].astype(int)
        return self.attach_images(cfg, df, df[self.id_column], self.image_dir(cfg, "Images"), path)

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        # Only the ids are needed: a labelled list (Train.csv format) can be scored as well.
        df = read_frame(path, [self.id_column], id_column=self.id_column)
        return self.attach_images(cfg, df, df[self.id_column], self.image_dir(cfg, "Images"), path)

    def test_path(self, cfg: DictConfig) -> Path:
        return Path(cfg.test_file) if cfg.test_file else self.data_dir(cfg) / "Test.csv"
