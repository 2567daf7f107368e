"""Text classification data: corpora readers, the tokenizer, batching and the data module."""
