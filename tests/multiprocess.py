"""Start N local JAX processes as one job, the way README's "Multi-host" section launches them.

Each process gets ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
(which ``ldm_jax.parallel.initialize_distributed`` reads) and its own simulated CPU devices.
Output goes to one log file per process; a job that outlives its timeout, or a test that
fails while it runs, has its processes (and their children) killed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from micro import FAST_COMPILE, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """Processes started together; ``wait`` returns their exit codes."""

    def __init__(
        self,
        args: list[str],
        logdir: pathlib.Path,
        *,
        num_processes: int = 2,
        devices: int = 4,
        env: dict | None = None,
    ):
        logdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.logs = [logdir / f"process_{i}.log" for i in range(num_processes)]
        self.processes = []
        for i, log in enumerate(self.logs):
            process_env = {
                **os.environ,
                **(env or {}),
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": str(num_processes),
                "JAX_PROCESS_ID": str(i),
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                "JAX_PLATFORMS": "cpu",
                "PYTHONUNBUFFERED": "1",
            }
            with open(log, "wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, *args],
                        cwd=ROOT,
                        env=process_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def signal(self, i: int, signum: int) -> None:
        self.processes[i].send_signal(signum)

    def wait(self, timeout: float) -> list[int]:
        """Exit codes of all processes; kills the job and fails if it has not ended in ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                tails = "\n".join(f"--- process {i}:\n{self.output(i)[-2000:]}" for i in range(len(self.logs)))
                raise TimeoutError(f"job still running after {timeout} s; killed.\n{tails}") from None
        return [process.returncode for process in self.processes]

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def run(args: list[str], logdir: pathlib.Path, timeout: float = 600, **kwargs) -> list[str]:
    """Run a job to the end; every process must exit 0. Returns their outputs."""
    with Job(args, logdir, **kwargs) as job:
        codes = job.wait(timeout)
        outputs = [job.output(i) for i in range(len(codes))]
    for i, (code, output) in enumerate(zip(codes, outputs)):
        assert code == 0, f"process {i} exited with {code}:\n{output[-4000:]}"
    return outputs


def wait_for(condition, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(poll)
