"""Everything about processes, ranks, launchers, strategies and run directories across ranks.

Tasks, models and data modules never import from here; train.py and the commands do.
"""
