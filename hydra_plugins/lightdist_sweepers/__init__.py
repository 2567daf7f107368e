"""lightdist's Hydra plugins.

Hydra finds plugins by listing the directories of the `hydra_plugins` namespace package. A default
editable install (`pip install -e .`) serves packages through an import hook instead of a
directory on sys.path, so that listing comes back empty; register() hands the plugins to Hydra
through its public Plugins API, which works under every install mode.
"""


def register() -> None:
    """Make lightdist's plugins known to Hydra; call before a Hydra app starts (repeating is harmless)."""
    from hydra.core.plugins import Plugins

    # Scan first: Hydra's scan re-executes the plugin modules it finds, so the class to register
    # is the one left in the module after the scan.
    plugins = Plugins.instance()
    from hydra_plugins.lightdist_sweepers.optuna_sweeper import OptunaSweeper

    plugins.register(OptunaSweeper)
