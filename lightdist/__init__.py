"""lightdist: one command from a laptop CPU to many SLURM nodes."""

__version__ = "0.1.0"
