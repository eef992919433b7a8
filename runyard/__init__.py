"""runyard: what user code and the command line import.

Run-side helpers (``runyard.checkpoint``, ``runyard.heartbeat``) live here so that a
training script imports ``runyard``, never ``engine`` (many ML repositories have an
``engine.py`` of their own). Keep this module free of heavy imports.
"""

__version__ = "0.1.0"
