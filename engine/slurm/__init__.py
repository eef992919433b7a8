"""The Slurm backend: runs handed to a Slurm cluster as batch jobs.

runyard keeps its queue, envelopes, retries with resume, health and provenance; Slurm
decides where and when each job runs. :mod:`engine.slurm.jobs` reads Slurm's answers
(pure), :mod:`engine.slurm.commands` asks them (the only module that runs Slurm's tools),
:mod:`engine.slurm.mapping` turns a run into ``sbatch`` options (pure) and
:mod:`engine.slurm.launcher` is the engine's :class:`~engine.launcher.Launcher` for it.
"""
