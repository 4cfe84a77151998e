"""The bad-input survey (docs/faults.md): each bad input, given to the command a user would run, stops with exit
code 2 and one line naming the file, row, column or key, before anything is trained. Inputs are small copies of the
real samples in ../shared/data with one thing broken. The expected lines are the docs/faults.md table's, word for
word."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import to_yaml
from common.submission import fill_sample, validate
from common.errors import SubmissionError
from competitions.__main__ import load_task, main
from tests.conftest import shared_data

N_TRAIN, N_TEST = 12, 4


def copy_sample(workdir: Path, competition: str) -> Path:
    """data/<competition>/ with the first rows of the real sample (and their images), in the organisers' layout."""
    src, dest = shared_data(competition), workdir / "data" / competition
    dest.mkdir(parents=True)
    if competition == "usppm":
        files = {"train.csv": N_TRAIN, "test.csv": N_TEST, "sample_submission.csv": N_TEST}
    elif competition == "armyworm":
        files = {"Train.csv": N_TRAIN, "Test.csv": N_TEST, "SampleSubmission.csv": N_TEST}
    else:
        files = {"train_df.csv": N_TRAIN, "test_df.csv": N_TEST, "sample_submission.csv": N_TEST}
    for name, n in files.items():
        df = pd.read_csv(src / name)
        df = (df.iloc[::len(df) // n] if name == "train.csv" else df).head(n)  # usppm: 12 anchors, not one
        df.to_csv(dest / name, index=False)
        for column, folder in (("Image_id", "Images"), ("file_name", "train" if "train" in name else "test")):
            if column in df and name != "SampleSubmission.csv":
                (dest / folder).mkdir(exist_ok=True)
                for image in df[column]:
                    shutil.copy(src / folder / image, dest / folder / image)
    return dest


def edit_csv(path: Path, edit) -> None:
    df = pd.read_csv(path)
    df = edit(df)
    df.to_csv(path, index=False)


def fake_run(workdir: Path, competition: str, name: str, fold_of=lambda i: i % 2, overrides=()) -> Path:
    """A finished-looking run folder (config, classes, folds, OOF): enough for the steps that read runs first."""
    task = load_task(competition)
    cfg = task.config([f"data_dir=data/{competition}", f"run_name={name}", "folds=2", *overrides])
    train = pd.read_csv(workdir / f"data/{competition}" / ("train.csv" if competition == "usppm" else "Train.csv"))
    run = workdir / "runs" / competition / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "classes.json").write_text(json.dumps(["pred"]))
    folds = pd.DataFrame({task.id_column: train[task.id_column], "fold": [fold_of(i) for i in range(len(train))]})
    folds.to_csv(run / "folds.csv", index=False)
    folds.assign(target=train[task.target_column], pred=np.linspace(0, 1, len(train))).to_csv(run / "oof.csv",
                                                                                               index=False)
    (run / "metrics.json").write_text(json.dumps({"metric": task.metric, "greater_is_better": True, "cv": 0.5,
                                                  "folds": [0.5, 0.5]}))
    return run


# ---- the cases: (competition, what is wrong, set-up(workdir, data dir), command line, the error line) -------------
def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _two_runs_on_other_folds(workdir, data):
    fake_run(workdir, "usppm", "a")
    fake_run(workdir, "usppm", "b", fold_of=lambda i: (i // 2) % 2)


CASES = [
    ("usppm", "missing file: no train.csv",
     lambda w, d: (d / "train.csv").unlink(),
     ["train"], "data/usppm/train.csv: file not found"),
    ("usppm", "missing column: train.csv without context",
     lambda w, d: edit_csv(d / "train.csv", lambda df: df.drop(columns="context")),
     ["train"], "data/usppm/train.csv: missing column(s) 'context'; found 'id', 'anchor', 'target', 'score'"),
    ("usppm", "wrong type: a score 'high'",
     lambda w, d: edit_csv(d / "train.csv", lambda df: df.assign(score=df.score.astype(object).where(df.index != 2, "high"))),
     ["train"], "data/usppm/train.csv: column 'score' must be numbers in [0.0, 1.0]; 1 row(s) are not, the first at "
                "data row 3: 'high'"),
    ("usppm", "NaN: an empty score",
     lambda w, d: edit_csv(d / "train.csv", lambda df: df.assign(score=df.score.where(df.index != 4))),
     ["train"], "data/usppm/train.csv: column 'score' must be numbers in [0.0, 1.0]; 1 row(s) are not, the first at "
                "data row 5: nan"),
    ("usppm", "duplicates: an id twice",
     lambda w, d: edit_csv(d / "train.csv", lambda df: df.assign(id=df.id.where(df.index != 6, df.id[0]))),
     ["train"], "data/usppm/train.csv: id '37d61fd2272659b1' in column 'id' appears twice (data row 7)"),
    ("usppm", "empty file: train.csv of 0 bytes",
     lambda w, d: (d / "train.csv").write_bytes(b""),
     ["train"], "data/usppm/train.csv: the file is empty"),
    ("usppm", "empty file: a header and no rows",
     lambda w, d: (d / "train.csv").write_text("id,anchor,target,context,score\n"),
     ["train"], "data/usppm/train.csv: the file has a header but no rows"),
    ("usppm", "wrong encoding: train.csv saved as UTF-16",
     lambda w, d: (d / "train.csv").write_text((d / "train.csv").read_text(), encoding="utf-16"),
     ["train"], "data/usppm/train.csv: not a readable CSV ('utf-8' codec can't decode byte 0xff in position 0: "
                "invalid start byte)"),
    ("usppm", "unknown config key on the command line (lerning_rate=)",
     lambda w, d: None,
     ["train", "lerning_rate=1e-4"], "command line: unknown config key 'lerning_rate'; valid keys: "),
    ("usppm", "unknown config key in an experiment file (epoch: 3)",
     lambda w, d: (w / "exp.yaml").write_text("epoch: 3\n"),
     ["train", "experiment=exp.yaml"], "exp.yaml: unknown config key 'epoch'; did you mean 'epochs'? valid keys: "),
    ("usppm", "more folds than rows (folds=20 on 12 rows)",
     lambda w, d: None,
     ["train", "folds=20"], "12 rows cannot be split into 20 folds"),
    ("usppm", "missing weights: a model that is neither local, packaged nor reachable",
     lambda w, d: None,
     ["train", "model=no-such-org/no-such-model", "folds=2", "epochs=1"],
     "no-such-org/no-such-model: not a local folder, not packaged, not under "),
    ("usppm", "missing column: infer test_file= without anchor",
     lambda w, d: (fake_run(w, "usppm", "r"), edit_csv(d / "test.csv", lambda df: df.drop(columns="anchor"))),
     ["infer", "run_name=r", "test_file=data/usppm/test.csv"],
     "data/usppm/test.csv: missing column(s) 'anchor'; found 'id', 'target', 'context'"),
    ("usppm", "runs on different folds: ensemble of two runs with other splits",
     _two_runs_on_other_folds,
     ["ensemble", "runs=a b", "run_name=blend"],
     "run b does not share the folds of run a (6 of 12 rows in another fold or missing): blend runs made with the "
     "same data, fold_seed, folds and limit (or folds_from=)"),
    ("armyworm", "wrong type: a Label 'yes'",
     lambda w, d: edit_csv(d / "Train.csv", lambda df: df.assign(Label=df.Label.astype(object).where(df.index != 3, "yes"))),
     ["train"], "data/armyworm/Train.csv: column 'Label' must be 0 or 1; 1 row(s) are not, the first at data row 4: "
                "'yes'"),
    ("armyworm", "truncated image: a JPEG cut in half",
     lambda w, d: _cut_in_half(d / "Images" / pd.read_csv(d / "Train.csv").Image_id[1]),
     ["train"], "data/armyworm/Train.csv: 1 image(s) truncated, the first data/armyworm/Images/id_02mh3w48pmyc9.jpg "
                "(data row 2); fix the file or set bad_images=skip"),
    ("armyworm", "empty file: Test.csv of 0 bytes, at infer",
     lambda w, d: (fake_run(w, "armyworm", "r"), (d / "Test.csv").write_bytes(b"")),
     ["infer", "run_name=r"], "data/armyworm/Test.csv: the file is empty"),
    ("armyworm", "missing weights: weights= a file that is not there",
     lambda w, d: None,
     ["train", "weights=no/such/lite0.pth", "folds=2", "epochs=1"], "weights file not found: no/such/lite0.pth"),
    ("mvtec", "missing file: an image named in train_df.csv is not in train/",
     lambda w, d: (d / "train" / pd.read_csv(d / "train_df.csv").file_name[5]).unlink(),
     ["train"], "data/mvtec/train_df.csv: 1 image(s) missing on disk, the first data/mvtec/train/10005.jpg "
                "(data row 6); fix the file or set bad_images=skip"),
    ("mvtec", "duplicates: an index twice",
     lambda w, d: edit_csv(d / "train_df.csv", lambda df: df.assign(index=df["index"].where(df.index != 8, 0))),
     ["train"], "data/mvtec/train_df.csv: id 0 in column 'index' appears twice (data row 9)"),
    ("mvtec", "NaN: an empty label",
     lambda w, d: edit_csv(d / "train_df.csv", lambda df: df.assign(label=df.label.where(df.index != 2))),
     ["train"], "data/mvtec/train_df.csv: column 'label' is empty at data row 3"),
    ("mvtec", "unknown config key in a --config file (image_szie: 64)",
     lambda w, d: (w / "my.yaml").write_text("image_szie: 64\n"),
     ["train", "--config", "my.yaml"], "my.yaml: unknown config key 'image_szie'; did you mean 'image_size'? valid keys: "),
]


@pytest.mark.parametrize("competition, what, setup, argv, message", CASES, ids=[c[1] for c in CASES])
def test_a_bad_input_stops_with_one_line_naming_it(workdir, capsys, competition, what, setup, argv, message):
    data = copy_sample(workdir, competition)
    setup(workdir, data)
    command, rest = argv[0], argv[1:]
    args = rest if command in ("ensemble", "infer") else [f"data_dir=data/{competition}", *rest]
    with pytest.raises(SystemExit) as exit_info:
        main([competition, command, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, err
    line = err[-1] if err else ""
    assert line.startswith("error: " + message) if message.endswith(" ") else line == "error: " + message, line
    if command == "train":  # stopped before training: no fold was trained
        assert not list(workdir.glob("runs/*/*/fold*/done.json"))


def test_ids_in_another_order_than_the_sample_are_matched_by_id_and_a_reordered_file_is_refused(workdir):
    """Not an error: Test.csv rows in another order than SampleSubmission.csv. Submit fills the sample by id, so
    the leaderboard file keeps the sample's order; a submission whose rows are reordered is refused (validate)."""
    data = copy_sample(workdir, "armyworm")
    sample = pd.read_csv(data / "SampleSubmission.csv")
    shuffled = sample.Image_id[::-1].tolist()
    out = pd.read_csv(fill_sample(data / "SampleSubmission.csv", shuffled, range(len(shuffled)), workdir / "s.csv"))
    assert list(out.Image_id) == list(sample.Image_id) and list(out.Label) == list(range(len(shuffled)))[::-1]
    with pytest.raises(SubmissionError, match=r"s2.csv: id order differs from the sample at row 1: "
                                              r"'id_04athdtx2abyg.jpg' vs 'id_00exusbkgzw1b.jpg'"):
        out.iloc[::-1].to_csv(workdir / "s2.csv", index=False)
        validate(workdir / "s2.csv", data / "SampleSubmission.csv")
