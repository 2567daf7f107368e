"""A callback that end-to-end tests add by override
(+callbacks.modules._target_=tests.helpers.modules_probe.ModulesAtTrainStart +callbacks.modules.path=<file>)
to see what a run has imported by the time training starts: each rank writes the names of its
loaded modules, one per line, to <file>.<global rank>."""

import sys

import lightning as L


class ModulesAtTrainStart(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with open(f"{self.path}.{trainer.global_rank}", "w") as f:
            f.write("\n".join(sorted(sys.modules)) + "\n")
