"""LightningModules: training logic and metrics. Models are given to them; clusters are not their business."""
