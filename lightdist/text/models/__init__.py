"""Text encoders with a classification head: plain nn.Modules taking (token ids B x T, lengths B).

Every encoder ignores padding exactly (masks, packed sequences), so a text gets the same
logits whatever batch it is padded in: prediction on single texts matches the test loop.
"""
