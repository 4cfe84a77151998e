"""runtime=onnx (common/onnx_runtime.py): each family's fold models exported to ONNX and run with ONNX Runtime give
the torch models' predictions within 1e-4 on real samples (text regression, cross-encoder pairs, bi-encoder pairs
with each program embedded once, an image with TTA views, image + features); a graph follows its checkpoint's
weights; quantize=int8 and bad settings."""
import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from common import api, cli, onnx_runtime
from common.errors import ConfigError
from competitions.armyworm.task import ArmywormTask
from competitions.codesim.demo import make_dataset
from competitions.codesim.task import CodesimTask
from competitions.usppm.task import UsppmTask
from tests.conftest import shared_data

TOLERANCE = 1e-4


def same_predictions(task, run, test_path, **overrides) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's predictions of test_path under torch and under runtime=onnx; they agree within TOLERANCE. Torch
    predicts in fp32, as the graph does: a run trained where precision=auto chose bf16 would predict in bf16."""
    overrides = {"precision": "fp32", **overrides}
    eager = api.predict(task, run, test_path, **overrides)
    graph = api.predict(task, run, test_path, runtime="onnx", **overrides)
    columns = [c for c in eager.columns if c != task.id_column]
    assert (graph[task.id_column] == eager[task.id_column]).all()
    assert np.abs(graph[columns].to_numpy() - eager[columns].to_numpy()).max() < TOLERANCE
    return eager, graph


@pytest.fixture
def usppm_run(one_fold_run, tmp_path):
    """A private copy of the shared tiny USPPPM run `one` (MiniLM, fold 0 trained): graphs land in it only."""
    runs_dir = tmp_path / "runs"
    shutil.copytree(one_fold_run / "usppm" / "one", runs_dir / "usppm" / "one")
    return runs_dir


def test_text_regression_graph_matches_torch_follows_its_weights_and_int8_reports_its_cost(usppm_run, tmp_path,
                                                                                         capsys):
    task, data = UsppmTask(), shared_data("usppm")
    run = api.open_run(task, "one", usppm_run)
    where = {"runs_dir": str(usppm_run), "data_dir": str(data)}
    test = tmp_path / "test.csv"
    pd.read_csv(data / "test.csv").head(24).to_csv(test, index=False)
    same_predictions(task, run, test, **where)
    fold0 = run.fold_dir(0)
    first = json.loads((fold0 / "model.onnx.json").read_text())
    assert first["weights"] == onnx_runtime.weights_fingerprint(run.checkpoint(0))

    # New weights in the checkpoint (a retrained fold): the graph is exported again and follows them.
    weights = load_file(str(run.checkpoint(0)))
    head = next(k for k in weights if k.endswith("fc.bias"))
    weights[head] = weights[head] + 0.5
    save_file(weights, str(run.checkpoint(0)))
    eager, graph = same_predictions(task, run, test, **where)
    assert json.loads((fold0 / "model.onnx.json").read_text())["weights"] != first["weights"]

    # int8: the OOF again, with the metric change against the run's torch OOF printed.
    cli.rescore(task, ["run_name=one", f"runs_dir={usppm_run}", f"data_dir={data}", "runtime=onnx", "quantize=int8"])
    printed = capsys.readouterr().out
    assert "runtime=onnx quantize=int8: pearson" in printed and "with torch" in printed
    assert (fold0 / "model.int8.onnx").is_file() and (run.dir / "oof_runtime=onnx_quantize=int8.csv").is_file()
    int8_ops = {node.op_type for node in onnx.load(str(fold0 / "model.int8.onnx")).graph.node}
    assert "MatMulInteger" in int8_ops and "ConvInteger" not in int8_ops
    assert json.loads((fold0 / "model.int8.onnx.json").read_text())["quantization"] == onnx_runtime.INT8_SETTINGS


@pytest.fixture(scope="module")
def codesim_runs(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("codesim") / "data", n_problems=12, n_test_problems=4)
    runs_dir = tmp_path_factory.mktemp("runs")
    tiny = ["folds=2", "train_folds=[0]", "epochs=1", "pairs_per_epoch=16", "batch_size=16", "max_len=48",
            "valid_positives=2", f"data_dir={data}", f"runs_dir={runs_dir}"]
    task = CodesimTask()
    runs = {name: api.train(task, task.config([*tiny, f"run_name={name}", *extra]))
            for name, extra in (("cross", ["experiment=cross"]), ("bi", []))}
    return data, runs


def test_cross_encoder_pairs_with_swap_tta_match_torch(codesim_runs):
    data, runs = codesim_runs
    same_predictions(CodesimTask(), runs["cross"], data / "test.csv", tta=True, data_dir=str(data))


def test_bi_encoder_graph_embeds_each_distinct_program_once_and_matches_torch(codesim_runs, monkeypatch):
    data, runs = codesim_runs
    task = CodesimTask()
    embedded = []
    call = onnx_runtime.OnnxModel.__call__
    monkeypatch.setattr(onnx_runtime.OnnxModel, "__call__",
                        lambda self, **inputs: embedded.append(len(inputs["input_ids"])) or call(self, **inputs))
    same_predictions(task, runs["bi"], data / "test.csv", data_dir=str(data))
    test = task.load_test(runs["bi"].config([f"data_dir={data}"]), data / "test.csv")
    distinct = pd.concat([test["code1"], test["code2"]]).nunique()
    assert sum(embedded) == distinct < 2 * len(test)  # the embedding network alone was exported


def test_image_with_tta_views_matches_torch(workdir):
    task, data = ArmywormTask(), shared_data("armyworm")
    run = api.train(task, task.config([f"data_dir={data}", "run_name=img", "limit=32", "image_size=64", "epochs=1",
                                       "folds=2", "train_folds=[0]", "batch_size=8"]))
    test = workdir / "test.csv"
    pd.read_csv(data / "Test.csv").head(10).to_csv(test, index=False)
    eager, _ = same_predictions(task, run, test, tta=True, tta_transforms=["hflip", "vflip"], data_dir=str(data))
    plain = api.predict(task, run, test, data_dir=str(data))
    assert not np.allclose(plain["pred"], eager["pred"])  # the views were averaged


def test_image_plus_features_with_tta_matches_torch(growth_toy):
    task = growth_toy
    run = api.train(task, task.config(["run_name=fusion"]))
    same_predictions(task, run, task.config().data_dir + "/train.csv", tta=True)
    assert (run.fold_dir(1) / "model.onnx").is_file()


def test_bad_runtime_settings_are_config_errors_naming_the_key(monkeypatch):
    cfg = UsppmTask().config
    with pytest.raises(ConfigError, match="runtime must be torch or onnx, got 'tensorrt'"):
        onnx_runtime.uses_onnx(cfg(["runtime=tensorrt"]))
    with pytest.raises(ConfigError, match="quantize must be null or int8"):
        onnx_runtime.uses_onnx(cfg(["runtime=onnx", "quantize=int4"]))
    with pytest.raises(ConfigError, match="needs runtime=onnx"):
        onnx_runtime.uses_onnx(cfg(["quantize=int8"]))
    assert not onnx_runtime.uses_onnx(cfg())
    real = onnx_runtime.importlib.util.find_spec
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec", lambda n: None if n == "onnxruntime" else real(n))
    with pytest.raises(ConfigError, match=r"runtime=onnx needs onnxruntime, not installed: pip install onnxruntime=="):
        onnx_runtime.uses_onnx(cfg(["runtime=onnx"]))
