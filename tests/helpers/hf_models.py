"""A tiny random BERT-style encoder and its WordPiece tokenizer, saved as a Hugging Face model folder.

Built here from `transformers` and `tokenizers` (no network): what `model=hf_encoder model.path=...`
reads from a real checkpoint folder (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json).
"""

import random
from pathlib import Path

from tests.helpers.text_files import BBC_TOPICS, SHARED, TOPICS

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join([*BBC_TOPICS.values(), *TOPICS.values()]).split() + SHARED
    return [" ".join(rng.choice(words) for _ in range(12)).capitalize() + "." for _ in range(n)]


def write_tiny_bert(folder: Path, max_positions: int = 128, seed: int = 0) -> Path:
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_texts(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                                 show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_positions)
    fast.save_pretrained(folder)

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=max(256, tok.get_vocab_size()), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=max_positions,
                        pad_token_id=tok.token_to_id("[PAD]"))
    BertModel(config).save_pretrained(folder)
    return folder
