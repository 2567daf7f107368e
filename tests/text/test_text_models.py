"""Text encoders: shapes, exact independence from padding, gradients, and their building blocks."""

from types import SimpleNamespace

import pytest
import torch

from lightdist.errors import ConfigError
from lightdist.text.models.bag import NGramBag, hashed_ngrams
from lightdist.text.models.cnn import KimCNN
from lightdist.text.models.embedding import TokenEmbedding
from lightdist.text.models.rnn import RNNClassifier
from lightdist.text.models.transformer import TransformerClassifier
from lightdist.text.task import TextClassificationTask

VOCAB, CLASSES, MAX_LEN = 50, 3, 32

MODELS = {
    "fasttext": lambda: NGramBag(VOCAB, CLASSES, embed_dim=16, ngrams=3, buckets=97, hidden=8),
    "cnn": lambda: KimCNN(VOCAB, CLASSES, embed_dim=16, kernel_sizes=[2, 3, 5], channels=8),
    "bilstm": lambda: RNNClassifier(VOCAB, CLASSES, cell="lstm", embed_dim=16, hidden=8, layers=2, pool="max"),
    "bigru_last": lambda: RNNClassifier(VOCAB, CLASSES, cell="gru", embed_dim=16, hidden=8, pool="last"),
    "bilstm_mean": lambda: RNNClassifier(VOCAB, CLASSES, embed_dim=16, hidden=8, pool="mean"),
    "transformer_mean": lambda: TransformerClassifier(VOCAB, CLASSES, MAX_LEN, d_model=16, heads=2, ff_dim=32),
    "transformer_cls": lambda: TransformerClassifier(VOCAB, CLASSES, MAX_LEN, d_model=16, heads=2, ff_dim=32,
                                                     pool="cls"),
}


def batch(lengths: list[int], pad_to: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = pad_to or max(lengths)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(2, VOCAB, (n,), generator=g)
    return tokens, torch.tensor(lengths)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_do_not_depend_on_padding_or_batch(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    tokens, lengths = batch([7, 1, 12, 4])
    with torch.no_grad():
        logits = model(tokens, lengths)
        assert logits.shape == (4, CLASSES)
        more_padding = torch.nn.functional.pad(tokens, (0, 9))
        torch.testing.assert_close(model(more_padding, lengths), logits)
        alone = torch.cat([model(tokens[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(alone, logits)
        # while the text itself does matter
        assert not torch.equal(model(tokens[:1, :3], torch.tensor([3])), logits[:1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_learns(name):
    torch.manual_seed(0)
    model = MODELS[name]().train()
    tokens, lengths = batch([9, 3, 14, 6])
    torch.nn.functional.cross_entropy(model(tokens, lengths), torch.tensor([0, 1, 2, 1])).backward()
    # every parameter gets a gradient (the padding row of the embedding stays zero)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    emb = TokenEmbedding(1000, 4, pad_id=0, embedding_dropout=0.5).train()
    tokens = torch.arange(1, 1000).repeat(2, 1)  # every word twice, in two rows
    out = emb(tokens)
    zero = out.abs().sum(-1) == 0
    assert torch.equal(zero[0], zero[1])  # a dropped word is dropped at every occurrence
    assert 0.4 < zero.float().mean() < 0.6
    kept = ~zero[0]
    torch.testing.assert_close(out[0, kept], 2 * emb.weight[1:][kept])  # survivors scaled by 1 / (1 - p)
    assert torch.equal(emb.eval()(tokens), emb.weight[tokens])
    assert torch.equal(emb.weight[0], torch.zeros(4))


def test_hashed_ngrams_stay_inside_the_text():
    tokens, lengths = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]]), torch.tensor([3, 5])
    grams = hashed_ngrams(tokens, lengths, 2, buckets=1000, offset=50, pad_id=0)
    assert grams.shape == (2, 4)
    assert grams[0, 2:].tolist() == [0, 0] and (grams[0, :2] >= 50).all()
    assert grams[0, :2].tolist() == grams[1, :2].tolist()  # same bigram, same bucket
    assert (grams[1] < 1050).all() and len(set(grams[1].tolist())) == 4


def test_text_task_uses_the_shared_classification_plumbing():
    model = MODELS["cnn"]()
    from functools import partial

    task = TextClassificationTask(model, CLASSES, partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
                                  class_names=["a", "b", "c"])
    tokens, lengths = batch([5, 2])
    probs = task.predict_step(((tokens, lengths),), 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    task._counting_flops((tokens, lengths))  # the first training forward, counted for the throughput monitor
    assert task.flops_per_batch > 0
    opt = task.configure_optimizers()  # no trainer needed without a scheduler
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # biases undecayed
    # a teacher to distil from must read the same token ids: its tokenizer is the student's
    data = lambda tokenizer: SimpleNamespace(state_dict=lambda: {"tokenizer": tokenizer})  # noqa: E731
    task.check_teacher_data(data({"vocab": ["a", "b"]}), data({"vocab": ["a", "b"]}))
    with pytest.raises(ConfigError, match="tokenizes text differently.*tokenizer_file"):
        task.check_teacher_data(data({"vocab": ["a", "b"]}), data({"vocab": ["b", "a"]}))
