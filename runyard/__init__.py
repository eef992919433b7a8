"""runyard: what user code and the command line import.

Run-side helpers (``runyard.checkpoint``, ``runyard.heartbeat``) live here so that a
training script imports ``runyard``, never ``engine`` (many ML repositories have an
``engine.py`` of their own). Keep this module free of heavy imports.
"""

__version__ = "0.1.0"


def heartbeat(step=None, total=None, metrics=None, **options):
    """Record the run's progress (``runyard.heartbeat(step=s, total=n, metrics={"loss": l})``);
    see :mod:`runyard.progress`. Imported on first use so ``import runyard`` stays instant."""
    from runyard.progress import heartbeat as write

    return write(step, total, metrics, **options)


def report(**metrics):
    """Record the run's final metrics (``runyard.report(loss=0.12, acc=0.91)``); see
    :mod:`runyard.results`. Imported on first use so ``import runyard`` stays instant."""
    from runyard.results import report as write

    return write(**metrics)
