"""LightningDataModules and the readers behind them. They own datasets, splits and loaders."""
