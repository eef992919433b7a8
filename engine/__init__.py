"""The runyard engine: queue, admission, supervision, probes and the daemon.

Import rule: nothing under ``engine`` imports ``tui`` or ``textual``; the CLI's
fast paths (``submit``, ``ls``) import only ``engine.units``, ``engine.envelope``,
``engine.model``, ``engine.paths``, ``engine.store.sql`` and ``engine.client``, so
those modules stay free of sqlite-utils, APScheduler, psutil and torch.
"""
