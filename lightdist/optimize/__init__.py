"""Optimising a trained model: pruning, int8 quantisation and export, each measured.

Works on any plain nn.Module classifier given a run directory: the run is rebuilt from its
config and checkpoint (lightdist.runs), batches come from its own data module, and every
step reports size, CPU latency and test accuracy before and after (`lightdist optimize`).
"""
