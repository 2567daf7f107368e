"""lightdist does the work a plain PyTorch loop does: in float64, from the same weights and generator
state, on the same batches in the same order, every step's loss is the same (bench/overhead.py checks
this before it times anything; here on a few steps of the generated Fashion-MNIST)."""

import pytest

from bench import overhead

STEPS = 5
OVERRIDES = [*overhead.MODELS["tiny"], "data=fashion_mnist", "data.augment=null", "data.train_subset=400",
             "data.batch_size=32", "optimizer=adamw", "scheduler=cosine", "trainer.limit_val_batches=0",
             "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
             "trainer.enable_model_summary=false", "test_after_fit=false", "threads_per_rank=1"]


@pytest.fixture(scope="module")
def lightdist_run() -> overhead.FirstStep:
    return overhead.lightdist_start(OVERRIDES, STEPS)


def test_same_loss_every_step(lightdist_run):
    plain = overhead.plain_losses(OVERRIDES, STEPS, lightdist_run)
    assert len(lightdist_run.losses) == len(plain) == STEPS
    assert len(set(plain)) == STEPS  # the model trains: a check of equal constants would prove nothing
    assert lightdist_run.losses == pytest.approx(plain, rel=1e-12, abs=0)


def test_another_data_order_is_caught(lightdist_run, monkeypatch):
    """The comparison can fail: the plain loop on the same data in another order gives other losses."""
    original = overhead.plain_loader
    monkeypatch.setattr(overhead, "plain_loader", lambda dm, batch_size, seed: original(dm, batch_size, seed + 1))
    plain = overhead.plain_losses(OVERRIDES, STEPS, lightdist_run)
    assert abs(plain[0] - lightdist_run.losses[0]) > 1e-6


def test_paired_timing_alternates_one_plain_step_per_lightdist_step(monkeypatch):
    """bench/overhead.py --paired: the plain loop takes one step at the end of each lightdist step, and
    each side's time is the time between its own marks. With a clock that moves one unit per reading
    (lightdist's step-end mark, the plain step's start and end), a plain step lasts 1 and a lightdist
    step 2 (from the plain step's end to the next lightdist mark)."""
    taken = []
    original = overhead.plain_steps

    def counted(*args, **kwargs):
        for loss in original(*args, **kwargs):
            taken.append(float(loss))
            yield loss

    monkeypatch.setattr(overhead, "plain_steps", counted)
    ticks = iter(range(10**6))
    plain, lightdist = overhead.paired_run(OVERRIDES, 6, 2, clock=lambda: float(next(ticks)))
    assert len(taken) == 6 and len(set(taken)) == 6  # one plain step per lightdist step, and it trains
    assert (plain, lightdist) == (1.0, 0.5)
