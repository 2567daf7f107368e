"""`lightdist predict` arguments and checkpoint lookup: mistakes are one line, exit 2 (the end-to-end
prediction on a trained run is in test_e2e_text.py)."""

import json

import pytest

from lightdist.errors import CheckpointError
from lightdist.main import main
from lightdist.runs import find_checkpoint


@pytest.mark.parametrize(("argv", "expected"), [
    (["text=hello"], "predict needs run_dir="),
    (["run_dir=.", "txt=hello"], "unknown predict key 'txt' (predict keys: batch_size, ckpt, image, input_file, "
                                 "run_dir, text; did you mean text?)"),
    (["run_dir=.", "batch_size=many", "text=a"], "predict batch_size=many: 'batch_size' must be int"),
    (["run_dir=.", "--text", "a"], "unexpected predict argument '--text'"),
    (["run_dir=.", "batch_size=0", "text=a"], "batch_size=0 must be a positive integer"),
    (["run_dir=."], "nothing to predict"),
    (["run_dir={tmp}", "text=a"], "is not a run directory (no config.yaml)"),
    (["run_dir={tmp}", "input_file={tmp}/none.txt"], "none.txt does not exist"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *(a.format(tmp=tmp_path) for a in argv)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightdist: error:") and expected in err[0]


def test_find_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="no single best checkpoint"):
        find_checkpoint(tmp_path, "best")
    (folder / "last.ckpt").write_bytes(b"x")
    best = folder / "epoch003-step000100.ckpt"
    best.write_bytes(b"x")
    assert find_checkpoint(tmp_path, "best") == best
    assert find_checkpoint(tmp_path, "last") == folder / "last.ckpt"
    (folder / "epoch001-step000050.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError):  # two candidates and no summary: ambiguous
        find_checkpoint(tmp_path, "best")
    (tmp_path / "summary.json").write_text(json.dumps({"best_checkpoint": str(best)}))
    assert find_checkpoint(tmp_path, "best") == best
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path, str(tmp_path / "other.ckpt"))
