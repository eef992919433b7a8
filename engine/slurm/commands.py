"""The only place that runs Slurm's tools: ``sbatch``, ``squeue``, ``scancel``, ``sinfo``.

Each call has a timeout (a hung ``slurmctld`` must not hang the engine's tick) and turns
every failure into :class:`SlurmError` with one line to show. The runner is injected so
tests can answer for Slurm without one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.slurm import jobs

Runner = Callable[..., subprocess.CompletedProcess]

TIMEOUT_S = 30.0
CLUSTER_VARIABLES = ("SLURM_CONF", "SLURM_CLUSTERS", "MUNGE")
SETTLED_BY_ENGINE = (*CLUSTER_VARIABLES, "SLURM_JOB")
"""A submitter's ``SBATCH_ACCOUNT``, ``SBATCH_QOS``... pass: sbatch reads them, and its
command line (what runyard sets) wins over them."""
NO_JSON_HINTS = ("unrecognized option", "invalid option", "json", "data_parser")


class SlurmError(RuntimeError):
    """A Slurm tool failed; the message is one line."""


class SlurmTools:
    """Args:
        env: the environment Slurm's tools run with (``SLURM_CONF`` and the like);
            default: the engine's own.
        prefer_json: try ``--json`` first (it is dropped for good once Slurm says it has none).
        runner: :func:`subprocess.run` or a stand-in.
    """

    def __init__(
        self, env: Mapping[str, str] | None = None, *, prefer_json: bool = True,
        timeout_s: float = TIMEOUT_S, runner: Runner = subprocess.run,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.env["SLURM_TIME_FORMAT"] = "standard"  # the times the fixed formats are read in, whatever the user set
        self.json = prefer_json
        self.timeout_s = timeout_s
        self.runner = runner
        self.user = pwd.getpwuid(os.getuid()).pw_name
        # By absolute path, looked up on the engine's PATH: a run's PATH must not pick the tools.
        self.paths = {tool: shutil.which(tool, path=self.env.get("PATH")) or tool
                      for tool in ("sbatch", "squeue", "scancel", "sinfo", "sacct")}
        self.accounting = True
        """Whether sacct may know jobs squeue has forgotten; off once Slurm says it keeps no accounts."""

    def _run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        try:
            return self.runner(
                [self.paths.get(argv[0], argv[0]), *argv[1:]], env=dict(env if env is not None else self.env),
                capture_output=True, text=True,
                timeout=self.timeout_s, stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SlurmError(
                f"{argv[0]} is not installed here: install Slurm's client tools (Debian: slurm-client)"
            ) from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{argv[0]} did not answer in {self.timeout_s:g}s: is slurmctld up?") from None
        except OSError as error:
            raise SlurmError(f"cannot run {argv[0]}: {error.strerror}") from None

    def _checked(self, argv: Sequence[str], **kwargs: Any) -> str:
        result = self._run(argv, **kwargs)
        if result.returncode != 0:
            raise SlurmError(f"{argv[0]}: {jobs.first_error_line(result.stderr, f'exit code {result.returncode}')}")
        return result.stdout

    def job_env(self, run_env: Mapping[str, str]) -> dict[str, str]:
        """What ``sbatch`` runs with: the run's environment, which ``--export=ALL`` hands to
        the job, plus what ``sbatch`` itself needs to find the cluster."""
        env = dict(run_env)
        # Which cluster is the engine's to say: it polls that one. A variable Slurm sets for
        # the job must come from Slurm, not from the submitter's shell.
        for name in [name for name in env if name.startswith(SETTLED_BY_ENGINE)]:
            del env[name]
        env.update({name: value for name, value in self.env.items() if name.startswith(CLUSTER_VARIABLES)})
        return env

    def submit(self, options: Sequence[str], script: str, args: Sequence[str], run_env: Mapping[str, str]) -> str:
        """``sbatch``; returns the job id.

        Raises:
            SlurmError: Slurm refused the job (its reason) or could not be reached.
        """
        out = self._checked(["sbatch", "--parsable", *options, script, *args], env=self.job_env(run_env))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {out.strip()[:80]!r}, not a job id")
        return job_id

    def refusal(self, options: Sequence[str], script: str) -> str | None:
        """Why Slurm would never run a job with ``options`` (``sbatch --test-only``), or ``None``."""
        result = self._run(["sbatch", "--test-only", *options, script])
        if result.returncode == 0:
            return None
        return jobs.first_error_line(result.stderr, f"sbatch --test-only: exit code {result.returncode}")

    def expected_start(self, options: Sequence[str], script: str) -> tuple[float, str] | None:
        """Slurm's own estimate (``Job N to start at T using C processors on nodes X in
        partition P``) as ``(T, X)``, when it has one."""
        result = self._run(["sbatch", "--test-only", *options, script])
        return jobs.expected_start(result.stderr + result.stdout)

    def queue(self) -> dict[str, jobs.Job]:
        """Every job of this user Slurm still knows (finished ones for ``MinJobAge``)."""
        if self.json:
            result = self._run(["squeue", "--json", f"--user={self.user}"])
            if result.returncode == 0:
                try:
                    return jobs.jobs_from_json(result.stdout)
                except jobs.SlurmSaysError as error:
                    raise SlurmError(str(error)) from None
                except ValueError:
                    pass
            elif not any(hint in result.stderr.lower() for hint in NO_JSON_HINTS):
                raise SlurmError(f"squeue: {jobs.first_error_line(result.stderr, f'exit code {result.returncode}')}")
            self.json = False
        out = self._checked(["squeue", "-h", "-t", "all", f"--user={self.user}", "-o", jobs.SQUEUE_FORMAT])
        return jobs.jobs_from_table(out)

    def accounted(self, job_id: str) -> jobs.Job | None:
        """What Slurm's accounting (``sacct``) recorded of a job ``squeue`` no longer lists;
        ``None`` without accounting or without such a job."""
        if not self.accounting:
            return None
        result = self._run(["sacct", "-X", "-n", "-P", "-o", jobs.SACCT_FIELDS, "-j", job_id])
        if "accounting storage is disabled" in result.stderr.lower():
            self.accounting = False
        if result.returncode != 0:
            return None
        return jobs.jobs_from_sacct(result.stdout).get(job_id)

    def signal(self, job_id: str, signame: str) -> bool:
        """Send ``signame`` (``TERM``, ``USR1``) to the job's script, the shim, which passes
        it on; ``KILL`` goes to every process of the job. False: Slurm has no such live job."""
        if signame == "KILL":
            argv = ["scancel", "--signal=KILL", job_id]
        else:
            argv = ["scancel", "--batch", f"--signal={signame}", job_id]
        result = self._run(argv)
        return result.returncode == 0 and "error" not in result.stderr.lower()

    def cancel(self, job_id: str) -> None:
        """Withdraw a job (pending or not); a job that already ended is not an error.

        Raises:
            SlurmError: Slurm was not reached (the caller tries again later).
        """
        result = self._run(["scancel", job_id])
        if result.returncode != 0 and "invalid job id" not in result.stderr.lower():
            raise SlurmError(f"scancel: {jobs.first_error_line(result.stderr, f'exit code {result.returncode}')}")

    def cluster(self, partition: str | None) -> dict[str, Any]:
        """Partitions and nodes as the ``status`` op's ``cluster``."""
        nodes = None
        if self.json:
            result = self._run(["sinfo", "--json"])
            if result.returncode == 0:
                try:
                    nodes = jobs.nodes_from_json(result.stdout)
                except jobs.SlurmSaysError as error:
                    raise SlurmError(str(error)) from None
                except ValueError:
                    nodes = None
        if nodes is None:
            nodes = jobs.nodes_from_table(self._checked(["sinfo", "-h", "-N", "-o", jobs.SINFO_NODE_FORMAT]))
        partitions = jobs.partitions_from_table(
            self._checked(["sinfo", "-h", "-o", jobs.SINFO_PARTITION_FORMAT]), nodes
        )
        return {"partition": partition, "partitions": partitions, "nodes": nodes, "error": None}
