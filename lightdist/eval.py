"""`python -m lightdist.eval run_dir=<run> ...`: the same as `lightdist eval ...` (see lightdist.evaluation)."""

import sys


def main(argv: list[str] | None = None) -> None:
    from lightdist.cli import main as cli_main

    cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
