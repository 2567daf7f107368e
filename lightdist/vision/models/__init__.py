"""Image models: plain nn.Modules."""
