"""Code similarity (DACON 235900): normalisation, pairs and folds by problem, BM25 hard negatives, the sampler,
bad input, both model kinds end to end on a few synthetic problems (the offline MiniLM, 1 epoch), and a short
bi-encoder run on the real corpus that must have learned."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rank_bm25 import BM25Okapi
from sklearn.metrics import roc_auc_score

from common.bm25 import word_tokens
from common.errors import DataError
from common.pairs import PairSampler, SpecialTokens, fair_budget, head_tail
from common.task import TARGET
from competitions.codesim.demo import make_dataset
from competitions.codesim.normalise import Normalizer, decode_source, strip_python
from competitions.codesim.task import CodesimTask, load_corpus
from tests.conftest import shared_data

TASK = CodesimTask()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("codesim") / "data", n_problems=12, n_test_problems=4)


def config(data: Path, *overrides):
    return TASK.config([f"data_dir={data}", "folds=3", *overrides])


# ---- normalisation ------------------------------------------------------------------------------------------------
SOURCE = '''#!/usr/bin/env python
"""Module docstring."""
import sys  # why


def f(x):
    """Doc
    on two lines"""
    s = "a # not a comment"   \n
    "a bare string" "concatenated"
    return "-".join(x) + s  # trailing
'''


def test_comments_removed_but_hash_in_strings_kept():
    out = Normalizer(docstrings=False)(SOURCE)
    assert "#!/usr" not in out and "# why" not in out and "# trailing" not in out
    assert '"a # not a comment"' in out and '"-".join(x)' in out
    assert '"""Module docstring."""' in out  # docstrings are their own step


def test_docstrings_and_bare_strings_removed():
    out = Normalizer(comments=False)(SOURCE)
    assert "Module docstring" not in out and "on two lines" not in out and "a bare string" not in out
    assert "# why" in out and '"-".join(x)' in out  # a string inside an expression stays
    assert strip_python('x = """not a docstring"""\n') == 'x = """not a docstring"""\n'


def test_blank_lines_and_trailing_spaces_each_switchable():
    assert Normalizer()(SOURCE) == ('import sys\ndef f(x):\n    s = "a # not a comment"\n'
                                    '    return "-".join(x) + s')
    keep_blank = Normalizer(blank_lines=False)(SOURCE)
    assert "\n\n" in keep_blank
    keep_trailing = Normalizer(trailing_space=False)(SOURCE)
    assert '"a # not a comment"   \n' in keep_trailing
    assert Normalizer(False, False, False, False)(SOURCE) == SOURCE.replace("\r\n", "\n")


@pytest.mark.parametrize("text", ['x = """never closed\n# gone\ny = 1\n',   # unterminated string
                                  "if x:\n        y = 1\n    # gone\n    z = 2\n",  # bad dedent
                                  "a = `x`  # backticks, Python 2\n# gone\n"])
def test_text_that_does_not_tokenize_falls_back_and_is_counted(text):
    normalise = Normalizer()
    out = normalise(text)
    assert normalise.fallbacks == 1 and "# gone" not in out and out.strip()


def test_python2_print_tokenizes_and_bad_bytes_decode():
    normalise = Normalizer()
    assert normalise('print "hi"  # greet\n') == 'print "hi"' and normalise.fallbacks == 0
    assert decode_source("x = 'é'\n".encode()) == ("x = 'é'\n", True)
    assert decode_source("# -*- coding: cp949 -*-\nx = '한'\n".encode("cp949"))[1] is True
    text, clean = decode_source(b"x = '\xff\xfe'\n")
    assert not clean and text.startswith("x = '")
    assert Normalizer()(None) == "" and Normalizer()(float("nan")) == ""  # an empty CSV cell


def test_corpus_dedupes_within_a_problem_and_counts_fallbacks(demo_data, capsys):
    corpus, extra = load_corpus(config(demo_data, "sample_train=null"), demo_data)
    files = set(corpus["file"])
    assert "problem003_92.py" not in files and "problem003_1.py" in files  # same program once a comment is gone
    assert {"problem001_90.py", "problem002_91.py"} <= files  # Python 2 / does not tokenize: kept, not a crash
    assert extra is None
    assert "1 duplicate(s) dropped; 1 did not tokenize" in capsys.readouterr().out
    corpus, _ = load_corpus(config(demo_data, "sample_train=null", "dedupe=false"), demo_data)
    assert "problem003_92.py" in set(corpus["file"])


# ---- pairs, folds, BM25, sampler ----------------------------------------------------------------------------------
def test_scored_pairs_are_balanced_and_folds_are_by_problem(demo_data):
    cfg = config(demo_data)
    train = TASK.load_train(cfg)
    folds = TASK.folds(cfg, train)
    assert train["pair_id"].is_unique
    assert ((train["problem1"] == train["problem2"]) == (train["similar"] == 1)).all()
    code = train[~train["pair_id"].str.startswith("sample_train")]
    assert abs(code["similar"].mean() - 0.5) < 0.05
    sides = pd.concat([pd.DataFrame({"problem": train["problem1"], "fold": folds}),
                       pd.DataFrame({"problem": train["problem2"], "fold": folds})])
    assert (sides[sides.fold >= 0].groupby("problem")["fold"].nunique() == 1).all()  # one fold per problem
    crossing = train["fold1"] != train["fold2"]
    assert (folds[crossing] == -1).all() and (folds[~crossing] >= 0).all()
    assert (folds[~train["pair_id"].str.startswith("sample_train")] >= 0).all()  # code/ pairs all scored
    sample = train[train["pair_id"].str.startswith("sample_train")]
    assert len(sample) == 12 and set(sample["similar"]) == {0, 1}  # sample_train.csv adds its pairs


def test_mining_uses_training_files_only_and_hard_negatives_are_bm25_top_hits(demo_data, tmp_path):
    cfg = config(demo_data, "hard_negatives=3")
    train = TASK.load_train(cfg)
    folds = TASK.folds(cfg, train)
    corpus, _ = load_corpus(cfg, demo_data)
    for k in range(3):
        rows = train[(folds != k) & (folds >= 0)]
        valid = train[folds == k]
        pool = TASK.fit_fold(cfg, rows.reset_index(drop=True), tmp_path / f"fold{k}")
        held_out = set(valid["problem1"]) | set(valid["problem2"])
        assert not set(pool["problem"]) & held_out, "a validation problem is in the training pool"
        assert not set(pool["file"]) & (set(valid["file1"]) | set(valid["file2"]))
        mined = [n for names in pool["hard"] for n in names.split()]
        assert mined and set(mined) <= set(pool["file"])
        # The same top-3 straight from rank-bm25 over the pool
        code = dict(zip(corpus["file"], corpus["code"]))
        docs = [word_tokens(code[f]) for f in pool["file"]]
        bm25 = BM25Okapi(docs)
        problems = pool["problem"].to_numpy()
        for i in range(len(pool)):
            scores = np.round(bm25.get_scores(docs[i]), 9)
            scores[problems == problems[i]] = -np.inf
            top = sorted(range(len(pool)), key=lambda j: (-scores[j], j))[:3]
            assert pool["hard"].iloc[i].split() == pool["file"].iloc[top].tolist()
        assert TASK.load_fold(cfg, tmp_path / f"fold{k}").equals(pool)


def test_sampler_replays_an_epoch_from_the_generator_and_keeps_its_shares():
    groups = np.repeat(np.arange(20), 4)
    hard = np.array([[(i + 4) % 80, (i + 8) % 80] for i in range(80)])
    g = torch.Generator()
    sampler = PairSampler(groups, 2000, positive_share=0.3, hard=hard, hard_share=0.5, generator=g)
    g.manual_seed(7)
    first = list(sampler)
    g.manual_seed(7)
    assert list(sampler) == first and len(first) == len(sampler) == 2000
    g.manual_seed(8)
    assert list(sampler) != first
    labels = np.array([y for _, _, y in first])
    assert all((groups[i] == groups[j]) == bool(y) and i != j for i, j, y in first)
    assert abs(labels.mean() - 0.3) < 0.04
    hard_pairs = {(i, int(j)) for i in range(80) for j in hard[i]}
    neg = [(i, j) for i, j, y in first if not y]
    share = np.mean([(i, j) in hard_pairs or (j, i) in hard_pairs for i, j in neg])
    assert 0.45 < share < 0.6  # half drawn from the hard list (+ random ones that happen to be on it)


def test_token_budget_is_fair_and_keeps_head_and_tail():
    assert fair_budget(10, 20, 100) == (10, 20)
    assert fair_budget(10, 200, 100) == (10, 90) and fair_budget(200, 10, 100) == (90, 10)
    assert fair_budget(200, 300, 100) == (50, 50)
    assert head_tail(list(range(10)), 4) == [0, 1, 8, 9] and head_tail([1, 2], 4) == [1, 2]
    assert head_tail(list(range(10)), 4, head_share=1.0) == [0, 1, 2, 3]


def test_special_tokens_match_the_tokenizer():
    from common.text import load_tokenizer
    tok = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2", Path("/nonexistent"))
    special = SpecialTokens(tok)
    a, b = "x = int(input())", "print(sum(a))"
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (a, b)]
    assert special.pair(*ids) == dict(tok(a, b)) and special.single(ids[0]) == tok(a)["input_ids"]


# ---- bad input ----------------------------------------------------------------------------------------------------
def write_test(path: Path, rows, columns=("pair_id", "code1", "code2")) -> Path:
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_bad_test_files_name_file_and_row(demo_data, tmp_path):
    cfg = config(demo_data, f"test_file={tmp_path / 'x.csv'}")
    missing = write_test(tmp_path / "missing.csv", [(1, "a = 1")], ("pair_id", "code1"))
    with pytest.raises(DataError, match=r"missing\.csv: missing column\(s\) 'code2'"):
        TASK.load_test(cfg, missing)
    twice = write_test(tmp_path / "twice.csv", [(1, "a", "b"), (2, "c", "d"), (1, "e", "f")])
    with pytest.raises(DataError, match=r"twice\.csv: id \S*1\S* in column 'pair_id' appears twice \(data row 3\)"):
        TASK.load_test(cfg, twice)
    empty = write_test(tmp_path / "empty.csv", [(1, "", "print(1)"), (2, "x = 1", None)])
    df = TASK.load_test(cfg, empty)  # an empty program is scored, not an error
    assert df["code1"].tolist() == ["", "x = 1"] and df["code2"].tolist() == ["print(1)", ""]


def test_test_ids_must_match_the_sample_submission(tmp_path, demo_data):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    test = pd.read_csv(data / "test.csv")
    test.loc[4, "pair_id"] = 9999
    test.to_csv(data / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test\.csv: data row 5 has pair_id '9999' where .*sample_submission\.csv"):
        TASK.load_test(config(data), data / "test.csv")
    test.iloc[:-1].assign(pair_id=pd.read_csv(data / "sample_submission.csv")["pair_id"].iloc[:-1]).to_csv(
        data / "test.csv", index=False)
    with pytest.raises(DataError, match=r"sample_submission\.csv: data row \d+ onwards \(1 rows\) are not in"):
        TASK.load_test(config(data), data / "test.csv")


def test_missing_code_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"code: folder not found"):
        TASK.load_train(config(tmp_path))


def test_real_corpus_loads_as_it_is():
    data = shared_data("code_similarity/atcoder_python_grouped")
    cfg = config(data, "folds=5")
    train = TASK.load_train(cfg)
    folds = TASK.folds(cfg, train)
    assert train["problem1"].nunique() == 100 and (folds >= 0).all() and np.bincount(folds).min() > 100
    assert abs(train["similar"].mean() - 0.5) < 0.02 and TARGET not in train


# ---- both model kinds end to end (tiny: 1 epoch, 2 folds, a few dozen pairs) -------------------------------------
# fold 0 of 2 only; its scored pairs: 2 positives and 2 negatives of each of its ~6 problems
TINY = ["folds=2", "train_folds=[0]", "epochs=1", "pairs_per_epoch=16", "batch_size=16", "max_len=48",
        "valid_positives=2"]


@pytest.fixture(scope="module")
def tiny_runs(demo_data, tmp_path_factory):
    from common import api
    runs_dir = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, extra in (("cross", ["experiment=cross"]), ("bi", ["in_batch_pairs=false"]), ("bi-inbatch", [])):
        cfg = TASK.config([f"data_dir={demo_data}", f"runs_dir={runs_dir}", f"run_name={name}", *TINY, *extra])
        runs[name] = api.train(TASK, cfg)
    return runs


@pytest.mark.parametrize("name", ["cross", "bi", "bi-inbatch"])
def test_train_infer_submit_end_to_end(tiny_runs, demo_data, name, tmp_path, monkeypatch):
    from common import api
    from common.submission import validate
    monkeypatch.chdir(tmp_path)  # submissions/ lands here
    run = tiny_runs[name]
    for f in ["oof.csv", "folds.csv", "metrics.json", "threshold.json", "fold0/pairs_pool.csv",
              "fold0/model.safetensors"]:
        assert (run.dir / f).is_file(), f
    oof, folds = pd.read_csv(run.oof_path), pd.read_csv(run.folds_path)
    assert len(oof) == (folds["fold"] == 0).sum() and oof["pred"].between(0, 1).all()
    assert run.config().encoder == name.split("-")[0]

    path = api.submit(TASK, run, runs_dir=str(run.dir.parent.parent), data_dir=str(demo_data))
    sub, sample = pd.read_csv(path), pd.read_csv(demo_data / "sample_submission.csv")
    validate(sub, sample)  # the sample's ids in its order
    assert list(sub.columns) == ["pair_id", "similar"] and set(sub["similar"]) <= {0, 1}
    # the cut tuned on the OOF is the one submit used
    preds = pd.read_csv(run.test_preds_path)
    assert (sub["similar"].to_numpy() == (preds["pred"] >= run.threshold()).astype(int).to_numpy()).all()


def test_bi_encoder_learns_on_the_real_corpus(tmp_path):
    """A short run on the real corpus (fold 0 of 5, 64 training pairs) tells unseen problems' pairs apart: the tiny
    runs above check the plumbing, this one that what comes out is a model (0.84 accuracy, AUC 0.87 when written)."""
    from common import api
    data = shared_data("code_similarity/atcoder_python_grouped")
    cfg = TASK.config([f"data_dir={data}", f"runs_dir={tmp_path}", "run_name=learns", "folds=5",
                       "train_folds=[0]", "epochs=1", "pairs_per_epoch=64", "batch_size=16", "max_len=64",
                       "valid_positives=2"])
    run = api.train(TASK, cfg)
    oof = pd.read_csv(run.oof_path)
    majority = max(oof["target"].mean(), 1 - oof["target"].mean())
    accuracy = ((oof["pred"] >= run.threshold()) == oof["target"]).mean()
    assert len(oof) >= 60 and accuracy > majority + 0.2 and roc_auc_score(oof["target"], oof["pred"]) > 0.75


def test_pairs_score_the_same_both_ways_and_infer_takes_any_test_file(tiny_runs, demo_data, tmp_path):
    from common import cli
    test = pd.read_csv(demo_data / "test.csv").head(6)
    test.loc[0, "code1"] = ""  # an empty program is scored
    forward, backward = tmp_path / "forward.csv", tmp_path / "backward.csv"
    test.to_csv(forward, index=False)
    test.rename(columns={"code1": "code2", "code2": "code1"})[["pair_id", "code1", "code2"]].to_csv(backward, index=False)
    from common import api
    for name, run in tiny_runs.items():
        sa, sb = (api.predict(TASK, run, f, data_dir=str(demo_data)) for f in (forward, backward))
        assert np.allclose(sa["pred"], sb["pred"], atol=1e-5), name  # swap TTA (cross), symmetric (bi)
    run = tiny_runs["cross"]
    out = cli.infer(TASK, ["run_name=cross", f"runs_dir={run.dir.parent.parent}", f"data_dir={demo_data}",
                           f"test_file={forward}", f"out={tmp_path}/preds.csv"])
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["pair_id", "similar"] and len(preds) == 6 and set(preds["similar"]) <= {0, 1}


def test_bi_encoder_embeds_each_distinct_program_once(tiny_runs, demo_data):
    from common.predict import fold_context, load_fold_model
    from common.task import model_inputs
    run = tiny_runs["bi"]
    cfg = run.config([f"data_dir={demo_data}"])
    test = TASK.load_test(cfg, demo_data / "test.csv")
    ctx = fold_context(TASK, cfg, run, 0)
    model = load_fold_model(TASK, cfg, run, ctx, 1).eval()
    embedded = []
    model.backbone.register_forward_hook(lambda m, args, kwargs, out: embedded.append(len(kwargs["input_ids"])),
                                         with_kwargs=True)
    loader = torch.utils.data.DataLoader(TASK.dataset(cfg, test, "test", ctx), batch_size=8,
                                         collate_fn=TASK.collate_fn(cfg, ctx))
    with torch.no_grad():
        for batch in loader:
            model(**model_inputs(batch))
    distinct = pd.concat([test["code1"], test["code2"]]).nunique()
    assert sum(embedded) == distinct < 2 * len(test)


def in_batch_items():
    """Three sampled pairs over five distinct programs (keys 10-14) of groups 0, 0, 1, 1, 2."""
    item = lambda ka, kb, ga, gb, y: {"ids_a": [ka, 1], "ids_b": [kb], "key_a": ka, "key_b": kb, "index": 0,
                                      "target": y, "group_a": ga, "group_b": gb}
    return [item(10, 11, 0, 0, 1.0), item(12, 10, 1, 0, 0.0), item(13, 14, 1, 2, 0.0)]


def test_in_batch_pairs_label_every_pair_of_distinct_programs_by_group():
    from common.pairs import GROUPS, in_batch_pairs, pair_batch
    batch = pair_batch(in_batch_items(), pad_id=0)
    groups = batch[GROUPS].tolist()
    assert batch["keys"].tolist() == [10, 11, 12, 13, 14] and groups == [0, 0, 1, 1, 2]
    inputs, y = in_batch_pairs(batch)
    labels = {(i, j): t for i, j, t in zip(inputs["a"].tolist(), inputs["b"].tolist(), y.tolist())}
    assert labels == {(i, j): float(groups[i] == groups[j]) for i in range(5) for j in range(i + 1, 5)}
    for i, j, t in zip(batch["a"].tolist(), batch["b"].tolist(), batch["target"].tolist()):
        assert labels[min(i, j), max(i, j)] == t  # the sampled pairs are among them, with their labels
    assert GROUPS not in inputs and "target" not in inputs and inputs["input_ids"] is batch["input_ids"]


def test_in_batch_loss_weighs_positives_and_negatives_half_each(demo_data):
    from common.errors import ConfigError
    from common.pairs import pair_batch
    cfg = config(demo_data, "in_batch_pairs=true")
    seen = []

    def every_pair_at_cosine_one(input_ids, attention_mask, keys, a, b):
        seen.append(len(a))
        return torch.ones(len(a), 1)

    loss = TASK.train_loss(cfg, every_pair_at_cosine_one, pair_batch(in_batch_items(), 0), TASK.loss_fn(cfg, None, None))
    # 10 pairs, 2 positives (loss 0) and 8 negatives (loss 1): balanced 0.5, where a plain mean would give 0.8
    assert seen == [10] and loss.item() == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="in_batch_pairs=true needs encoder=bi"):
        TASK.in_batch(config(demo_data, "experiment=cross", "in_batch_pairs=true"))


def test_mnrl_ranks_one_positive_pair_per_problem_with_sentence_transformers_loss(demo_data):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from common.errors import ConfigError
    from common.pairs import pair_batch
    items = [*in_batch_items(), {**in_batch_items()[0], "key_a": 15, "key_b": 16, "ids_a": [1, 5], "ids_b": [1, 6]},
             {**in_batch_items()[0], "key_a": 13, "key_b": 17, "group_a": 1, "group_b": 1}]
    batch = pair_batch(items, pad_id=0)  # positives: (10, 11) and (15, 16) of problem 0, (13, 17) of problem 1
    emb = torch.nn.functional.normalize(torch.randn(len(batch["keys"]), 8), dim=-1)
    cfg = config(demo_data, "in_batch_pairs=true", "loss=mnrl", "mnrl_scale=10")
    loss = TASK.train_loss(cfg, lambda **inputs: emb, batch, TASK.loss_fn(cfg, None, None))
    pos = {k: r for r, k in enumerate(batch["keys"].tolist())}
    anchors, positives = emb[[pos[10], pos[13]]], emb[[pos[11], pos[17]]]  # the second pair of problem 0 is left out
    expected = MultipleNegativesRankingLoss(model=None, scale=10).compute_loss_from_embeddings([anchors, positives], None)
    assert loss.item() == pytest.approx(expected.item())
    cfg = config(demo_data, "in_batch_pairs=false", "loss=mnrl")
    with pytest.raises(ConfigError, match="loss=mnrl needs in_batch_pairs=true"):
        TASK.train_loss(cfg, lambda **inputs: emb, pair_batch([{k: v for k, v in it.items() if "group" not in k}
                                                              for it in items], 0), TASK.loss_fn(cfg, None, None))


def test_in_batch_training_batches_carry_each_programs_problem(demo_data, tmp_path):
    from common.pairs import GROUPS
    from common.task import FoldContext
    cfg = config(demo_data, "in_batch_pairs=true")
    train = TASK.load_train(cfg)
    ctx = FoldContext(fold=0, dir=tmp_path, run_dir=tmp_path)
    ctx.state = TASK.fit_fold(cfg, train[TASK.folds(cfg, train) == 1].reset_index(drop=True), tmp_path)
    ctx.generator.manual_seed(0)
    sampled = list(TASK.train_sampler(cfg, train, ctx))[:8]
    data = TASK.dataset(cfg, None, "train", ctx)
    batch = TASK.collate_fn(cfg, ctx)([data[k] for k in sampled])
    problem_of = dict(zip(data.keys, ctx.state["problem"]))
    assert [problem_of[k] for k in batch["keys"].tolist()] == \
        ctx.state["problem"].unique()[batch[GROUPS].numpy()].tolist()


def test_experiment_configs_load():
    for path in sorted((Path(TASK.config_path).parent / "experiments").glob("*.yaml")):
        cfg = TASK.config([f"experiment={path.stem}"])
        assert cfg.encoder in ("cross", "bi") and cfg.model, path.name


# ---- the query expansion probe (competitions/codesim/neighbours.py) -----------------------------------------------
def test_query_expansion_probe_embeds_what_the_run_scored(tiny_runs, demo_data):
    """The probe's cosines are the run's own plain predictions (a fp32 rescore without expansion: the probe embeds in
    fp32 and expands by itself)."""
    from common import api
    from competitions.codesim.neighbours import fold_embeddings, scored_files
    run = tiny_runs["bi-inbatch"]
    path, _ = api.rescore(TASK, run, runs_dir=str(run.dir.parent.parent), precision="fp32", query_expansion=0)
    rescored = pd.read_csv(path)
    corpus, _ = TASK.corpus(run.config())
    code = dict(zip(corpus["file"], corpus["code"]))
    sides = scored_files(TASK, run.config(), rescored)
    files = sorted(set(sides[0]) | set(sides[1]))
    emb = fold_embeddings(TASK, run, 0, [code[f] for f in files]).numpy()
    where = {f: i for i, f in enumerate(files)}
    cosine = (emb[sides[0].map(where)] * emb[sides[1].map(where)]).sum(1)
    assert np.allclose(cosine, rescored["pred"], atol=1e-5)


def test_query_expansion_scores_pairs_on_expanded_embeddings_and_needs_a_bi_encoder(tiny_runs, demo_data):
    from common import api
    from common.errors import ConfigError
    from common.pairs import expand_neighbours
    from competitions.codesim.neighbours import fold_embeddings
    run, where = tiny_runs["bi-inbatch"], dict(data_dir=str(demo_data), precision="fp32")
    test = TASK.load_test(run.config([f"data_dir={demo_data}"]), demo_data / "test.csv")
    texts = list(pd.unique(pd.concat([test["code1"], test["code2"]])))
    emb = expand_neighbours(fold_embeddings(TASK, run, 0, texts), 2).numpy()
    at = {t: i for i, t in enumerate(texts)}
    expected = np.clip((emb[test["code1"].map(at)] * emb[test["code2"].map(at)]).sum(1), 0, 1)
    assert run.config().query_expansion == 2  # the default
    plain = api.predict(TASK, run, query_expansion=0, **where)["pred"]
    expanded = api.predict(TASK, run, **where)["pred"]
    assert np.allclose(expanded, expected, atol=1e-5) and not np.allclose(expanded, plain, atol=1e-3)
    with pytest.raises(ConfigError, match="query_expansion needs encoder=bi"):
        api.predict(TASK, tiny_runs["cross"], query_expansion=2, **where)
    # rescore: the OOF without expansion, and the cut tuned again on it (the run's cut was tuned on expanded cosines)
    from common.metrics import get_metric, tune_threshold
    path, scores = api.rescore(TASK, run, runs_dir=str(run.dir.parent.parent), query_expansion=0, **where)
    oof = pd.read_csv(path)
    cut = tune_threshold(oof["target"].to_numpy(), oof["pred"].to_numpy(), get_metric("accuracy"))
    assert scores["retuned"]["threshold"] == pytest.approx(cut, abs=1e-6)  # the CSV keeps 10 digits
    assert scores["retuned"]["cv"] == ((oof["pred"] >= cut) == oof["target"]).mean() >= scores["cv"]


def test_bad_query_expansion_stops_training_before_the_run_folder_is_written(demo_data, tmp_path):
    from common import api
    from common.errors import ConfigError
    for bad, message in (("encoder=cross", "query_expansion needs encoder=bi"),
                         ("query_expansion=-1", "query_expansion must be 0 .off. or a number of neighbours, got -1")):
        cfg = TASK.config([f"data_dir={demo_data}", f"runs_dir={tmp_path}", "run_name=bad", *TINY, "in_batch_pairs=false",
                           "query_expansion=2", bad])
        with pytest.raises(ConfigError, match=message):
            api.train(TASK, cfg)
        assert not (tmp_path / "codesim/bad").exists()  # refused before the run folder: the fixed command may reuse it


def test_query_expansion_pulls_a_program_towards_its_nearest_and_draws_use_each_program_once():
    from common.pairs import expand_neighbours as expand
    from competitions.codesim.neighbours import sparse_draw
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.6, 0.8],
                                                      [0.0, 0.0, 1.0]]), dim=-1)
    out = expand(emb, 1)
    assert torch.allclose(out.norm(dim=1), torch.ones(4))
    assert out[0] @ out[1] > emb[0] @ emb[1] and out[2] @ out[3] > emb[2] @ emb[3]
    problems = np.repeat(np.arange(10), 3)
    for seed in range(5):
        pairs = sparse_draw(problems, np.random.default_rng(seed))
        used = [i for i, j, _ in pairs] + [j for i, j, _ in pairs]
        assert len(used) == len(set(used)) and all(same == (problems[i] == problems[j]) for i, j, same in pairs)
        assert 0 < sum(same for *_, same in pairs) < len(pairs)
