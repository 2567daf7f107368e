"""Text classification: table and folder readers, tokenizers, corpora, text models, the text task."""
