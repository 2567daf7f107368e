"""bench/plain_ddp.py, the hand-written loops that bench/scaling.py measures lightdist's DDP against,
on 2 ranks started by torchrun: each mode does what it says (torch's DDP averages the gradients, the
other two leave each rank its own model) and a rate comes back for each."""

from bench import overhead, scaling

OVERRIDES = [*overhead.MODELS["tiny"], "data=fashion_mnist", "data.augment=null", "data.train_subset=400",
             "data.batch_size=32", "optimizer=adamw", "scheduler=cosine", "trainer=cpu"]


def test_each_mode_on_two_ranks(tmp_path):
    measured = scaling.run_plain(2, ["ddp", "meet", "none"], 4, OVERRIDES, tmp_path)
    assert measured["world_size"] == 2
    assert measured["ddp"]["weights_equal_across_ranks"]  # every rank stepped with the averaged gradient
    assert not measured["meet"]["weights_equal_across_ranks"]  # each rank trained on its own shard
    assert not measured["none"]["weights_equal_across_ranks"]
    # meeting once a step moves no gradient: the same arithmetic as no communication, to the last bit
    assert measured["meet"]["loss"] == measured["none"]["loss"]
    assert measured["ddp"]["loss"] != measured["none"]["loss"]
    assert all(measured[mode]["train_steps_per_s"] > 0 for mode in ("ddp", "meet", "none"))
