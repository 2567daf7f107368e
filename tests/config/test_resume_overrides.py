"""Resuming in run_dir=<run> rebuilds that run's config: its own overrides first, the command's on top."""

import pytest

from lightdist.config.compose import compose, with_run_overrides
from lightdist.errors import ConfigError


def saved_run(tmp_path, lines: list[str]):
    run = tmp_path / "outputs" / "x" / "run1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in lines))
    return run


def test_the_runs_overrides_come_first_and_the_command_wins(tmp_path):
    run = saved_run(tmp_path, ["+experiment=bbc_news_fasttext", "trainer.max_epochs=1", "data.batch_size=16"])
    merged = with_run_overrides([f"run_dir={run}", "ckpt_path=last", "trainer.max_epochs=3"])
    assert merged == ["+experiment=bbc_news_fasttext", "data.batch_size=16", f"run_dir={run}", "ckpt_path=last",
                      "trainer.max_epochs=3"]
    cfg = compose(merged)
    assert cfg.name == "bbc_news_fasttext" and cfg.trainer.max_epochs == 3 and cfg.data.batch_size == 16


def test_without_a_saved_run_nothing_changes(tmp_path):
    overrides = [f"run_dir={tmp_path / 'new'}", "seed=3"]
    assert with_run_overrides(overrides) == overrides
    assert with_run_overrides(["seed=3"]) == ["seed=3"]


def test_an_unreadable_overrides_file_is_one_error(tmp_path):
    run = saved_run(tmp_path, [])
    (run / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    with pytest.raises(ConfigError, match="overrides.yaml"):
        with_run_overrides([f"run_dir={run}", "ckpt_path=last"])
