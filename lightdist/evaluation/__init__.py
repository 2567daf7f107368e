"""`lightdist eval`: a trained classification run, evaluated on one split, reported in a new folder.

    job.py       the run's config with overrides, checks, the eval folder, the job of every rank
    module.py    the Lightning side: the evaluated task wrapped with its metrics, one split as test data
    metrics.py   the torchmetrics of the report (synced across ranks)
    report.py    report.json, report.md and the figures (rank 0)
"""
