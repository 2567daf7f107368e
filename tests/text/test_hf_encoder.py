"""model=hf_encoder: a tiny random BERT and its WordPiece tokenizer, written here (no network), as a
pretrained model folder. Its tokenizer, pooling, layer-wise lr decay and the linear schedule; then
the real CLI: fine-tuning on the generated BBC corpus, eval, predict, a resume, and 2 gloo
processes under FSDP and under ZeRO."""

import json
import math
from functools import partial

import pytest
import torch
from torch import nn

from lightdist.errors import ConfigError
from lightdist.tasks.schedules import linear
from lightdist.text.data.pretrained import PretrainedTokenizer
from lightdist.text.models.pretrained import HFEncoderClassifier
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs
from tests.helpers.hf_models import write_tiny_bert

MAX_POSITIONS = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), max_positions=MAX_POSITIONS)


def padded(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = nn.utils.rnn.pad_sequence([torch.tensor(x) for x in ids], batch_first=True, padding_value=pad_id)
    return tokens, torch.tensor([len(x) for x in ids])


def test_the_tokenizer_adds_the_special_tokens_and_cuts_at_the_models_positions(tiny):
    tok = PretrainedTokenizer(str(tiny), max_length=512)
    (ids,) = tok.encode(["Shares in the bank rose"])
    assert tok.tokens("Shares rose")[0] == "[CLS]" and tok.tokens("Shares rose")[-1] == "[SEP]"
    assert tok.encode([""]) == [[ids[0], ids[-1]]]  # an empty text is [CLS] [SEP], never empty
    assert tok.max_length == MAX_POSITIONS  # 512 asked, the model has 64 positions
    assert len(tok.encode(["match " * 500])[0]) == MAX_POSITIONS
    short = PretrainedTokenizer(str(tiny), max_length=8)
    assert len(short.encode(["match " * 500])[0]) == 8 and short.fingerprint() != tok.fingerprint()
    assert tok.pad_id == tok.tokenizer.token_to_id("[PAD]") and tok.unk_id == tok.tokenizer.token_to_id("[UNK]")
    assert tok.fitted and tok.fit(["ignored"]) is tok
    again = PretrainedTokenizer(str(tiny), max_length=8)
    again.load_state(json.loads(json.dumps(short.state())))  # JSON-able, as checkpoints keep it
    assert again.encode(["Shares rose"]) == short.encode(["Shares rose"])
    assert again.fingerprint() == short.fingerprint()


def test_pooling_ignores_padding(tiny):
    """The same logits for a text alone and in a batch padded to a longer one (float64: exact enough)."""
    tok = PretrainedTokenizer(str(tiny))
    ids = tok.encode(["Goal for the striker", "The bank said profit and prices rose over the quarter today"])
    for pooling in ("cls", "mean"):
        torch.manual_seed(0)
        model = HFEncoderClassifier(str(tiny), num_classes=3, pooling=pooling).double().eval()
        together = model(*padded(ids, tok.pad_id))
        alone = model(*padded(ids[:1], tok.pad_id))
        torch.testing.assert_close(together[:1], alone)
        garbage = padded(ids, tok.pad_id)[0]
        garbage[0, len(ids[0]):] = 7  # what fills the padding does not matter either
        torch.testing.assert_close(model(garbage, padded(ids, tok.pad_id)[1]), together)


def test_the_model_refuses_a_tokenizer_it_cannot_read(tiny):
    with pytest.raises(ConfigError, match="embeds"):
        HFEncoderClassifier(str(tiny), num_classes=2, vocab_size=10**6)
    with pytest.raises(ConfigError, match="64 positions"):
        HFEncoderClassifier(str(tiny), num_classes=2, max_length=65)
    with pytest.raises(ConfigError, match=r"^model.path=.*nowhere: no Hugging Face model there"):
        HFEncoderClassifier(str(tiny / "nowhere"), num_classes=2)
    with pytest.raises(ConfigError, match=r"^model.path=.*nowhere is not a folder"):
        PretrainedTokenizer(str(tiny / "nowhere"))


def test_layer_depths_and_lr_factors_per_group(tiny):
    from lightdist.callbacks.transfer import LayerLearningRateDecay, transfer_callbacks
    from lightdist.tasks.base import Task

    model = HFEncoderClassifier(str(tiny), num_classes=3)
    depths = model.layer_depths()
    assert set(depths) == {name for name, _ in model.named_parameters()}
    assert depths["encoder.embeddings.word_embeddings.weight"] == 0
    assert depths["encoder.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["encoder.encoder.layer.1.output.dense.weight"] == 2
    assert depths["head.weight"] == depths["head.bias"] == 3

    task = Task(partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01))
    task.model = model
    (callback,) = transfer_callbacks(layer_lr_decay=0.5)
    callback.setup(None, task, "fit")
    optimizer = task.configure_optimizers()
    seen = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = next(n for n, q in model.named_parameters() if q is p)
            assert math.isclose(group["lr"], 1e-3 * 0.5 ** (3 - depths[name])), name
            decayed = not (name.endswith("bias") or "LayerNorm" in name)
            assert group["weight_decay"] == (0.01 if decayed else 0.0), name  # exemptions kept
            seen += 1
    assert seen == sum(1 for _ in model.parameters())

    class NoDepths(nn.Module):
        head = nn.Linear(2, 2)

    task.model = NoDepths()
    with pytest.raises(ConfigError, match=r"layer_depths\(\).*NoDepths"):
        LayerLearningRateDecay(0.5).setup(None, task, "fit")
    with pytest.raises(ConfigError, match="layer_lr_decay=1.5 must be in"):
        transfer_callbacks(layer_lr_decay=1.5)


def test_linear_schedule_warms_up_then_decays_to_the_floor():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear(optimizer, total_steps=110, steps_per_epoch=10, warmup_ratio=0.1, warmup_start_factor=0.0,
                      min_lr_ratio=0.1)["scheduler"]
    factors = [schedule.lr_lambdas[0](s) for s in (0, 5, 11, 60, 110, 200)]
    assert factors == pytest.approx([0.0, 5 / 11, 1.0, 1 - 0.9 * 49 / 99, 0.1, 0.1])


def test_preflight_names_the_missing_model_path():
    from lightdist.config.checks import preflight

    with pytest.raises(ConfigError, match=r"missing required value\(s\): model.path"):
        preflight(["+experiment=text_finetune", "data.corpus.train=x.csv"], with_data=False)


# -- the real CLI ------------------------------------------------------------------------------------
def small(tiny, steps: int) -> list[str]:
    return ["+experiment=text_finetune", "trainer=cpu", "data=bbc_news", f"model.path={tiny}",
            "data.train_subset=120", "data.val_subset=40", "data.test_subset=40", "data.batch_size=8",
            "data.tokenizer.max_length=48",
            f"trainer.max_steps={steps}", "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1", "optimizer.lr=1e-3", *QUIET]


def test_fine_tune_then_eval_predict_and_resume(tiny, workdir):
    options = ["transfer.layer_lr_decay=0.8", "model.gradient_checkpointing=true"]
    run_cli([*small(tiny, 4), *options], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "text_finetune")
    summary = read_summary(run_dir)
    assert summary["global_step"] == 4 and "test/acc" in summary["test"]
    saved = json.loads((run_dir / "tokenizer.json").read_text())
    assert saved["model"]["type"] == "WordPiece" and saved["truncation"]["max_length"] == 48  # the model's own

    run_cli(["eval", f"run_dir={run_dir}", "ckpt=last", "trainer.enable_progress_bar=false"], cwd=workdir)
    (report,) = (run_dir / "eval").glob("*_test/report.json")
    assert json.loads(report.read_text())["accuracy"] >= 0.0
    proc = run_cli(["predict", f"run_dir={run_dir}", "ckpt=last", "text=Shares and profit rose at the bank"],
                   cwd=workdir)
    (line,) = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert line["label"] in {"business", "entertainment", "politics", "sports", "tech"}
    assert abs(sum(line["probs"].values()) - 1) < 1e-5

    # export: the graph traced (lengths.max() slices: torch.export refuses it), checked on test batches
    run_cli(["optimize", f"run_dir={run_dir}", "ckpt=last", "steps=[export]", "export.formats=[onnx]",
             "eval_batches=2", "latency.runs=1", "latency.warmup=0", "latency.compile=false"], cwd=workdir)
    (report,) = (run_dir / "optimized").glob("*/report.json")
    assert "parity passed" in (report.parent / "report.md").read_text()

    run_cli([*small(tiny, 6), *options, f"run_dir={run_dir}", "ckpt_path=last"], cwd=workdir)  # 2 more steps
    assert read_summary(run_dir)["global_step"] == 6


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_2"])
def test_two_gloo_processes_under_a_sharding_strategy(tiny, workdir, strategy):
    # FSDP on CPU: fp32; Lightning's FSDP clips by value only
    options = ["trainer.precision=32-true", "trainer.gradient_clip_val=null"] if strategy == "fsdp" else []
    run_cli([*small(tiny, 3), "trainer=cpu_ddp", f"strategy={strategy}", *options], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "text_finetune")
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    assert math.isfinite(summary["test"]["test/loss"])
