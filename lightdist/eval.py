"""`python -m lightdist.eval run_dir=<run> ...`: the same as `lightdist eval ...` (lightdist.commands.eval)."""

if __name__ == "__main__":
    import sys

    from lightdist.main import main

    main(["eval", *sys.argv[1:]])
