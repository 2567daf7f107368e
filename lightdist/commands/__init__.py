"""The commands of `lightdist <command> key=value ...`: one module each, each with run(argv).

lightdist.main dispatches to them and reports their errors; no command imports another's
module except train (a sweep point is a training run).
"""

NAMES = ("train", "preflight", "convert", "sweep", "predict", "eval", "optimize")
