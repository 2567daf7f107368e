"""+experiment=text_auto: the planner's choices from the training split, the encoder it builds, and
the plan travelling in the checkpoint (eval and predict rebuild the planned model)."""

import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from lightdist.text.auto import TextAutoPlanner, word_counts
from lightdist.text.data.tokenizer import TextTokenizer
from lightdist.text.models.auto import AutoTextClassifier
from lightdist.text.models.bag import NGramBag
from lightdist.text.models.cnn import KimCNN
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs
from tests.helpers.text_files import rows, write_folder_corpus, write_table

WORDS = "market shares profit, goal; striker! film award-winning café 2024 data".split()


def corpus(n: int, words: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n texts of about `words` words (some punctuation), labels in 3 classes."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=max(1, int(rng.integers(words // 2, words * 3 // 2 + 1)))))
             for _ in range(n)]
    return texts, rng.integers(0, 3, size=n)


def python_words(text: str) -> int:
    """Words as the tokenizer's Whitespace pre-tokenizer splits them (an independent count: Python's re)."""
    return len(re.findall(r"\w+|[^\w\s]+", text))


def expected(planner: TextAutoPlanner, texts: list[str], vocab_size: int) -> dict:
    """The planner's documented rules, recomputed here from its settings."""
    counts = np.array([python_words(t) for t in texts], dtype=np.float64)
    length = 8 * math.ceil(np.percentile(counts, planner.length_percentile) / 8)
    distinct = {w for t in texts for w in re.findall(r"\w+", t.lower())}
    epochs = math.ceil(planner.target_steps / math.ceil(len(texts) / planner.batch_size))
    return {"max_length": min(planner.max_length, max(planner.min_length, length)),
            "tokenizer": "word" if len(distinct) + 2 <= vocab_size else "wordpiece",
            "encoder": "cnn" if len(texts) >= planner.cnn_from else "fasttext",
            "max_epochs": min(planner.max_epochs, max(planner.min_epochs, epochs))}


def test_word_counts_match_the_pre_tokenizer():
    texts, _ = corpus(50, 20)
    texts += ["", "   ", "naïve café, déjà-vu!", "tab\tand\nnewline"]
    assert word_counts(texts).tolist() == [python_words(t) for t in texts]
    chunked = pa.chunked_array([pa.array(texts[:10], pa.large_string()), pa.array(texts[10:], pa.large_string())])
    assert word_counts(chunked).tolist() == word_counts(texts).tolist()


@pytest.mark.parametrize("vocab_size", [8, 100])
@pytest.mark.parametrize("words", [4, 60, 400])
@pytest.mark.parametrize("n", [100, 700])
def test_the_plan_follows_the_rules_on_short_and_long_small_and_large_corpora(words, n, vocab_size):
    texts, labels = corpus(n, words)
    planner = TextAutoPlanner(cnn_from=500, target_steps=200, min_epochs=2, max_epochs=15, max_length=256)
    tokenizer = TextTokenizer(model="bpe", max_length=7, vocab_size=vocab_size)
    plan = planner.plan(pa.chunked_array([pa.array(texts, pa.large_string())]), labels, tokenizer)
    want = expected(planner, texts, vocab_size)
    assert plan["tokenizer"] == {"model": want["tokenizer"], "max_length": want["max_length"]}
    assert (tokenizer.model, tokenizer.max_length) == (want["tokenizer"], want["max_length"])
    assert plan["model"]["encoder"] == want["encoder"]
    assert plan["trainer"] == {"max_epochs": want["max_epochs"]}
    assert plan["corpus"]["train_size"] == n and plan["corpus"]["classes"] == len(set(labels.tolist()))
    assert json.loads(json.dumps(plan)) == plan  # JSON-able: it goes into checkpoints
    assert planner.plan(texts, labels, TextTokenizer(vocab_size=vocab_size)) == plan  # deterministic (every rank)


def test_short_and_long_corpora_get_different_plans():
    planner = TextAutoPlanner(cnn_from=300, target_steps=100)
    short = planner.plan(*corpus(100, 5))
    long = planner.plan(*corpus(400, 300))
    assert short["tokenizer"]["max_length"] == planner.min_length < long["tokenizer"]["max_length"]
    assert short["model"]["encoder"] == "fasttext" and long["model"]["encoder"] == "cnn"
    assert short["trainer"]["max_epochs"] > long["trainer"]["max_epochs"]


def test_forced_choices_and_refused_settings():
    texts, labels = corpus(100, 5)
    plan = TextAutoPlanner(encoder="cnn", tokenizer="bpe").plan(texts, labels)
    assert plan["model"]["encoder"] == "cnn" and plan["tokenizer"]["model"] == "bpe"
    from lightdist.errors import ConfigError

    with pytest.raises(ConfigError, match="data.planner.encoder"):
        TextAutoPlanner(encoder="lstm")
    with pytest.raises(ConfigError, match="length_percentile"):
        TextAutoPlanner(length_percentile=0)


@pytest.mark.parametrize("encoder, kind", [("fasttext", NGramBag), ("cnn", KimCNN), (None, NGramBag)])
def test_the_model_builds_the_planned_encoder(encoder, kind):
    plan = {"model": {"encoder": encoder}} if encoder else None
    model = AutoTextClassifier(vocab_size=50, num_classes=3, pad_id=0, plan=plan, embed_dim=24, channels=8)
    assert isinstance(model.encoder, kind)
    assert model.encoder.embed.weight.shape[1] == 24  # a config key overrides the encoder's default
    tokens = torch.randint(1, 50, (4, 9))
    assert model(tokens, torch.tensor([9, 5, 1, 3])).shape == (4, 3)
    with pytest.raises(ValueError, match="encoder 'lstm'"):
        AutoTextClassifier(50, 3, plan={"model": {"encoder": "lstm"}})


def test_the_experiment_composes_with_a_folder_corpus(tmp_path):
    """data=text_folder under +experiment=text_auto: the planner plans the folder corpus."""
    from hydra.utils import instantiate

    from lightdist.config.compose import compose

    write_folder_corpus(tmp_path / "corpus", per_class=12)
    cfg = compose(["+experiment=text_auto", "data=text_folder", f"data.corpus.path={tmp_path / 'corpus'}",
                   f"paths.output_dir={tmp_path / 'run'}", "data.val_size=3", "data.test_size=3"])
    assert cfg.data.corpus._target_.endswith("FolderCorpus") and cfg.data.planner.batch_size == cfg.data.batch_size
    facts = instantiate(cfg.data).facts()
    assert facts["plan"]["corpus"]["train_size"] == facts["train_size"] == 36 - 6
    assert facts["max_length"] == facts["plan"]["tokenizer"]["max_length"]


def test_the_plan_travels_in_the_checkpoint_to_eval_and_predict(workdir):
    """One small run on a generated table with the CNN forced by a size rule that only this training
    split meets: eval and predict rebuild the CNN from the checkpoint's plan (the model's default
    without a plan is the bag, which would not load the weights)."""
    table = write_table(workdir / "news.csv", rows(n_per_class=30), "csv")
    run_cli(["+experiment=text_auto", f"data.corpus.train={table}", "data.corpus.text_columns=[title,body]",
             "data.corpus.label_column=topic", "data.planner.cnn_from=50", "data.planner.target_steps=1",
             "data.planner.min_epochs=2", "data.planner.max_epochs=2", "model.embed_dim=16", "model.channels=8",
             "trainer.max_epochs=7", "logger=csv", *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "text_auto")
    line = re.search(r"text_auto plan: (\{.*\})", (run_dir / "train.log").read_text())
    plan = json.loads(line.group(1))
    assert plan["model"]["encoder"] == "cnn" and plan["trainer"]["max_epochs"] == 2
    assert read_summary(run_dir)["epochs"] == 2  # the plan's, not trainer.max_epochs
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint.items() if k == "TextDataModule"]
    assert state["plan"] == plan

    from lightdist.runs import load_run

    run = load_run(run_dir, ckpt="last")
    assert isinstance(run.model.encoder, KimCNN) and run.facts["plan"] == plan
    run_cli(["eval", f"run_dir={run_dir}", "ckpt=last", "trainer.enable_progress_bar=false"], cwd=workdir)
    proc = run_cli(["predict", f"run_dir={run_dir}", "ckpt=last", "text=striker goal in the league match"],
                   cwd=workdir)
    assert any(name in proc.stdout for name in ("World", "Sports", "Business", "Sci/Tech"))
