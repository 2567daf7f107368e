"""The tokenizer: round trip, persistence, determinism across processes, scripts without spaces."""

import json
import subprocess
import sys

import pytest

from lightdist.errors import ConfigError
from lightdist.text.data.tokenizer import PAD, UNK, TextTokenizer

CORPUS = [
    "The striker scored a late goal and the league leaders won the match.",
    "Shares in the bank rose after profits beat the market forecast.",
    "The minister said the election would be held after the summit.",
    "Researchers released new software for the phone network.",
] * 5


@pytest.mark.parametrize("model", ["wordpiece", "bpe", "word"])
def test_round_trip_and_specials(model):
    tok = TextTokenizer(model=model, vocab_size=300, min_frequency=1, max_length=64).fit(CORPUS)
    assert tok.tokenizer.token_to_id(PAD) == tok.pad_id == 0 and tok.tokenizer.token_to_id(UNK) == tok.unk_id == 1
    text = "the striker scored a late goal."
    assert tok.decode(tok.encode([text])[0]) == text
    # lowercasing is on by default, and unseen words still encode (subwords, or [UNK] for whole words)
    ids = tok.encode(["The STRIKER goalmatch"])[0]
    assert tok.decode(ids).startswith("the striker")
    assert (tok.unk_id in ids) == (model == "word")


def test_options_lowercase_max_length_min_frequency_vocab_size():
    cased = TextTokenizer(model="word", lowercase=False, min_frequency=1).fit(CORPUS)
    assert cased.tokenizer.token_to_id("The") is not None and cased.tokenizer.token_to_id("the") is not None
    short = TextTokenizer(model="word", max_length=5, min_frequency=1).fit(CORPUS)
    assert [len(x) for x in short.encode([CORPUS[0], "goal", ""])] == [5, 1, 1]  # empty text -> [UNK]
    assert short.encode([""])[0] == [short.unk_id]
    frequent = TextTokenizer(model="word", min_frequency=3).fit(["goal goal", "goal match", "match"])
    assert set(frequent.tokenizer.get_vocab()) == {PAD, UNK, "goal"}
    capped = TextTokenizer(model="wordpiece", vocab_size=60, min_frequency=1).fit(CORPUS)
    assert capped.vocab_size <= 60


def test_persistence_file_and_state(tmp_path):
    tok = TextTokenizer(model="wordpiece", vocab_size=200, min_frequency=1, max_length=16).fit(CORPUS)
    path = tmp_path / "run" / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text())["model"]["type"] == "WordPiece"
    from_file = TextTokenizer(model="wordpiece")
    from_file.load(path)
    from_state = TextTokenizer(model="wordpiece")
    from_state.load_state(tok.state())
    texts = [CORPUS[1], "an unseen sentence about profits"]
    assert from_file.encode(texts) == from_state.encode(texts) == tok.encode(texts)
    assert from_state.max_length == 16  # truncation travels with the saved tokenizer
    # the Hugging Face format itself: tokenizers reads the file without lightdist
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(path)).encode(texts[0]).ids == tok.encode(texts[:1])[0]


_TRAIN_IN_A_NEW_PROCESS = """
import sys
from lightdist.text.data.tokenizer import TextTokenizer
texts = [line for line in sys.stdin.read().split("\\n") if line]
print(TextTokenizer(model=sys.argv[1], vocab_size=60, min_frequency=1).fit(texts).state()["tokenizer"])  # capped: ties
"""


def test_word_vocabulary_is_the_same_in_every_process():
    """Word-level training only counts; subword trainers (tokenizers' WordPiece and BPE) break ties
    between equally frequent merges in hash-map order, which differs between processes: that is why
    DDP ranks take rank 0's tokenizer instead of trusting their own (see TextDataModule)."""
    model = "word"
    texts = "\n".join(CORPUS + [f"word{i} token{i % 7} mixed{i % 3}" for i in range(200)])
    outputs = {subprocess.run([sys.executable, "-c", _TRAIN_IN_A_NEW_PROCESS, model], input=texts, text=True,
                              capture_output=True, check=True).stdout for _ in range(3)}
    assert len(outputs) == 1


def test_chinese_and_japanese_split_per_character_without_extras():
    tok = TextTokenizer(model="wordpiece", vocab_size=200, min_frequency=1, segmenter="char")
    tok.fit(["我喜欢机器学习", "東京タワーへ行く", "机器学习 and deep learning"])
    assert tok.tokens("我喜欢机器学习") == ["我", "喜", "欢", "机", "器", "学", "习"]
    assert tok.tokens("東京タワー") == ["東", "京", "タ", "ワ", "ー"]
    assert tok.tokens("机器 learning") == ["机", "器", "learning"]
    assert tok.unk_id not in tok.encode(["我喜欢学习"])[0]
    # without the split a whole unspaced sentence is one word: unknown as a whole
    none = TextTokenizer(model="word", min_frequency=1, segmenter="none").fit(["我喜欢机器学习"])
    assert none.tokens("我喜欢机器学习") == ["我喜欢机器学习"]


def test_jieba_segments_chinese_into_words():
    pytest.importorskip("jieba")
    tok = TextTokenizer(model="word", min_frequency=1, segmenter="jieba").fit(["我喜欢机器学习", "我们在北京工作"])
    tokens = tok.tokens("我喜欢机器学习")
    assert "".join(tokens) == "我喜欢机器学习" and len(tokens) < 7 and any(len(t) > 1 for t in tokens)
    assert tok.unk_id not in tok.encode(["我喜欢机器学习"])[0]


def test_jieba_missing_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba now raises ImportError
    with pytest.raises(ConfigError, match="needs the jieba package"):
        TextTokenizer(segmenter="jieba")


def test_fingerprint_follows_what_encoding_depends_on():
    texts = ["shares profit market bank", "match goal striker league"] * 3

    def fitted(extra=(), **kw):  # whole words: trained identically every time (subword ties are not)
        return TextTokenizer(model="word", vocab_size=300, min_frequency=1, **kw).fit(texts + list(extra))

    first = fitted()
    assert first.fingerprint() == fitted().fingerprint()
    restored = TextTokenizer(model="word", vocab_size=300)
    restored.load_state(first.state())
    assert restored.fingerprint() == first.fingerprint()
    assert fitted(lowercase=False).fingerprint() != first.fingerprint()
    assert fitted(["new words"]).fingerprint() != first.fingerprint()
    assert fitted(max_length=8).fingerprint() != first.fingerprint()


def test_fit_streams_arrow_columns_in_batches(monkeypatch):
    import pyarrow as pa

    from lightdist.text.data import tokenizer as module

    monkeypatch.setattr(module, "BATCH", 3)
    column = pa.chunked_array([CORPUS[:7], CORPUS[7:]], pa.large_string())
    assert [len(b) for b in module.text_batches(column, 3)] == [3, 3, 3, 3, 3, 3, 2]
    assert [len(b) for b in module.text_batches(iter(CORPUS), 8)] == [8, 8, 4]
    from_arrow = TextTokenizer(model="word", min_frequency=1).fit(column)
    assert from_arrow.state() == TextTokenizer(model="word", min_frequency=1).fit(CORPUS).state()
