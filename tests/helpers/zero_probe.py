"""A callback that end-to-end tests add by override
(+callbacks.zero._target_=tests.helpers.zero_probe.ZeroState +callbacks.zero.path=<file>) to see a
DeepSpeed run's full fp32 weights and Adam moments, gathered from every rank's ZeRO partition:
rank 0 writes them to <file>.start when a resumed run starts training and to
<file>.step<global step> whenever a checkpoint is saved."""

import lightning as L
import torch


def full_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    optimizer = trainer.strategy.deepspeed_engine.optimizer
    if hasattr(optimizer, "_hp_optimizer_states_linked"):
        # ZeRO-1/2 links each parameter to its moments once, after the step of the first parameter
        # group, when the other groups have no moments yet: link again now that all have them.
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()
    # collectives under ZeRO: every rank calls them, in the same order
    return {name: {"fp32": safe_get_full_fp32_param(p).clone(),
                   "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").clone(),
                   "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").clone()}
            for name, p in pl_module.named_parameters()}


class ZeroState(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        state = full_state(trainer, pl_module)
        if trainer.global_rank == 0:
            base = trainer.strategy.deepspeed_engine.optimizer.optimizer  # the torch optimizer ZeRO steps
            adam_steps = sorted({int(s["step"]) for s in base.state.values()})
            torch.save({"global_step": trainer.global_step, "world_size": trainer.world_size, "state": state,
                        "adam_steps": adam_steps},
                       f"{self.path}.{suffix}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:  # resumed; a fresh optimizer has no moments yet
            self._write(trainer, pl_module, "start")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._write(trainer, pl_module, f"step{trainer.global_step}")
