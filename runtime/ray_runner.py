"""The Ray runner of a cohort: one model per Ray worker (an actor), a slide to each idle worker.

The driver keeps the workers itself rather than leaving it to Ray's actor restarts: a worker whose process
or node is lost is dropped, its slide goes back to the front of the queue (up to `retries` more times) for
the live workers, and a replacement is started that joins when the cluster can place it. Nothing waits
without bound: the driver polls, and when no worker is alive and none could be placed for `start_timeout`
seconds, the slides left fail with a line that says so. (Ray's own `max_restarts` + `max_task_retries`
waits for the restarted actor to be placed, forever if its resources went with the lost node.)

Slides, the model and OUT_DIR must be at paths every node sees (a shared filesystem); workers read and write
them directly. Ray is optional (`pip install 'segcls[cluster]'`) and imported only when a cohort runs on it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass

from tqdm import tqdm

from segcls.core.errors import BackendUnavailableError, SegclsError
from segcls.runtime.backends import backend_for
from segcls.runtime.cohort import ModelSpec, Report, SlideJob, SlideRow, remove_partials, run_slide
from segcls.runtime.cores import available_cores, reader_budget
from segcls.runtime.options import InferOptions

POLL_S = 5.0  # how often the driver looks at the clock while it waits on Ray


def import_ray():
    try:
        import ray
    except ImportError:
        message = "--ray needs Ray, which is not installed: pip install 'segcls[cluster]'"
        raise BackendUnavailableError(message) from None
    return ray


@dataclass
class RayRunner:
    """Run a cohort's slides on Ray.

    `address`: None starts a local Ray instance on this machine's cores (unless Ray is already initialised
    in this process); "auto" or "ray://host:port" joins an existing cluster. `workers`: actors, each holding
    one model (default: as many as the cluster's CPUs, or GPUs, allow). `cpus` per worker (its ONNX Runtime
    threads and readers), `gpus` per worker (default 1 when the cluster has GPUs, else 0). A slide whose
    worker was lost is run again up to `retries` times. `start_timeout`: seconds to wait for a worker to be
    placed when none is alive.
    """

    address: str | None = None
    workers: int | None = None
    cpus: float = 1.0
    gpus: float | None = None
    retries: int = 2
    start_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.cpus > 0:
            raise SegclsError(f"--ray-cpus must be > 0, got {self.cpus}")
        if self.retries < 0:
            raise SegclsError(f"--ray-retries must be >= 0, got {self.retries}")
        if self.workers is not None and self.workers < 1:
            raise SegclsError(f"--ray-workers must be >= 1, got {self.workers}")
        import_ray()  # before any work: no Ray, no run

    def run(self, jobs: list[SlideJob], model: ModelSpec, options: InferOptions, report: Report) -> list[SlideRow]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            _init_ray(ray, self.address)
        try:
            return _Dispatch(ray, self, model, options, report).run(jobs)
        finally:
            if started:
                ray.shutdown()


class SlideWorker:
    """A Ray actor: opens the model once, in its constructor, then runs the slides it is given."""

    def __init__(self, model: ModelSpec, threads: int) -> None:
        self.name, self.threads, self.error = f"{socket.gethostname()}:{os.getpid()}", threads, ""
        try:
            self.backend = model.open(threads=threads)
        except SegclsError as e:  # e.g. no TensorRT on this node: said once, not as a traceback per slide
            self.error = str(e)

    def ready(self) -> tuple[str, str]:
        """(host:pid, the error that kept it from opening the model or "")."""
        return self.name, self.error

    def run(self, job: SlideJob, options: InferOptions, attempt: int) -> tuple[SlideRow, str]:
        readers = reader_budget(options.workers, self.backend.on_cpu, cores=self.threads)  # not the whole node's
        return run_slide(job, self.backend, dataclasses.replace(options, workers=readers), attempt)


def _init_ray(ray, address: str | None) -> None:
    if address is None:
        ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False)
        return
    with _StderrCaptured() as said:
        try:
            ray.init(address=address, log_to_driver=False)
            said.echo = True  # Ray's own lines about the cluster it joined
            return
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:  # no cluster, bad address
            error, output = e, said.text()
    if "InvalidAuthToken" in output or isinstance(error, ray.exceptions.AuthenticationError):
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        raise SegclsError(
            f"cannot join the Ray cluster at {address}: it uses token authentication and this process has no valid "
            f"token (RAY_AUTH_MODE is {mode!r}): set RAY_AUTH_MODE=token and give it the head's token "
            "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN), as on every node"
        ) from None
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    raise SegclsError(f"cannot join the Ray cluster at {address}: {first}") from None


class _StderrCaptured:
    """What is written to file descriptor 2 inside the block: Ray's C++ client says why it cannot connect
    there, not in the exception. Shown afterwards only if `echo` is set; a failed join is one line of ours."""

    def __init__(self) -> None:
        self.echo = False

    def __enter__(self) -> _StderrCaptured:
        sys.stderr.flush()
        self._saved, self._buffer = os.dup(2), tempfile.TemporaryFile()
        os.dup2(self._buffer.fileno(), 2)
        return self

    def text(self) -> str:
        self._buffer.seek(0)
        return self._buffer.read().decode(errors="replace")

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if self.echo:
            os.write(2, self.text().encode())
        self._buffer.close()


class _Dispatch:
    """One run of the driver loop: workers started, slides handed out, losses handled, rows collected."""

    def __init__(self, ray, runner: RayRunner, model: ModelSpec, options: InferOptions, report: Report) -> None:
        self.ray, self.runner, self.model, self.report = ray, runner, model, report
        self.options = dataclasses.replace(options, progress=False)
        self.progress = options.progress
        resources = ray.cluster_resources()
        gpus = runner.gpus if runner.gpus is not None else (1 if resources.get("GPU", 0) > 0 else 0)
        if not gpus and "tensorrt" in (model.backend, backend_for(model.path)):
            what = "is a TensorRT engine" if backend_for(model.path) == "tensorrt" else "runs on TensorRT"
            what += "" if backend_for(model.path) == "tensorrt" else " (--backend tensorrt)"
            raise BackendUnavailableError(f"{model.path} {what}, but the Ray cluster has no GPU")
        fit = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1) / runner.cpus
        self.size = runner.workers or max(1, int(fit))
        self.gpus = gpus
        self.actor_class = ray.remote(SlideWorker).options(
            num_cpus=runner.cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0
        )
        self.starting: dict = {}  # ready() ref -> actor not yet placed or still opening the model
        self.idle: list = []
        self.running: dict = {}  # run() ref -> (job, actor, attempt)
        self.attempts: dict[str, int] = {}
        self.rows: dict[str, SlideRow] = {}
        self.no_worker_since: float | None = None
        self.lost = 0

    def run(self, jobs: list[SlideJob]) -> list[SlideRow]:
        queue = deque(jobs)
        workers = min(self.size, len(jobs))
        print(
            f"Ray: {len(jobs)} slides on {workers} workers ({self.runner.cpus:g} CPU, {self.gpus:g} GPU each)",
            file=sys.stderr,
        )
        for _ in range(workers):
            self._start_worker()
        self.bar = tqdm(total=len(jobs), desc="slides", unit="slide", disable=not self.progress)
        try:
            while queue or self.running:
                while self.idle and queue:
                    self._hand_out(queue.popleft())
                if queue and not self.running and self._gave_up(queue):
                    break
                ready, _ = self.ray.wait([*self.running, *self.starting], num_returns=1, timeout=POLL_S)
                for ref in ready:
                    if ref in self.starting:
                        self._joined(ref, queue)
                    else:
                        self._finished(ref, queue)
        finally:
            self.bar.close()
            for actor in [*self.idle, *self.starting.values(), *(a for _, a, _ in self.running.values())]:
                self.ray.kill(actor)
        return list(self.rows.values())

    def _start_worker(self) -> None:
        actor = self.actor_class.remote(self.model, max(1, int(self.runner.cpus)))
        self.starting[actor.ready.remote()] = actor

    def _hand_out(self, job: SlideJob) -> None:
        actor = self.idle.pop()
        attempt = self.attempts[str(job.slide)] = self.attempts.get(str(job.slide), 0) + 1
        self.running[actor.run.remote(job, self.options, attempt)] = (job, actor, attempt)

    def _joined(self, ref, queue: deque) -> None:
        actor = self.starting.pop(ref)
        try:
            _, error = self.ray.get(ref)
        except self.ray.exceptions.RayError:  # lost before it was ready: try again while slides are left
            self.ray.kill(actor)
            if queue:
                self._start_worker()
            return
        if error:  # the model does not open on this worker: every slide left fails with that line
            self.ray.kill(actor)
            while queue:
                self._end(queue.popleft(), f"its Ray worker cannot open the model: {error}")
            return
        self.idle.append(actor)
        self.no_worker_since = None

    def _finished(self, ref, queue: deque) -> None:
        job, actor, attempt = self.running.pop(ref)
        try:
            row, line = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # run() itself raised: not the worker's loss
            self.idle.append(actor)
            self._end(job, f"{type(e.cause).__name__ if e.cause else 'error'}: {_first_line(e)}")
            return
        except self.ray.exceptions.RayError as e:  # the worker's process or node is gone
            self.ray.kill(actor)
            self.lost += 1
            remove_partials(job.outputs)
            if attempt <= self.runner.retries:
                print(f"{job.slide.name}: its Ray worker was lost ({type(e).__name__}); retrying", file=sys.stderr)
                queue.appendleft(job)
            else:
                self._end(job, f"its Ray worker was lost {attempt} times ({type(e).__name__}: {_first_line(e)})")
            if queue:
                self._start_worker()
            return
        self.idle.append(actor)
        self.rows[str(job.slide)] = row
        self.report(row, line)
        self.bar.update(1)

    def _end(self, job: SlideJob, message: str) -> None:
        attempts = self.attempts.get(str(job.slide), 0)
        row = SlideRow(str(job.slide), "failed", str(job.outputs["mask"]), attempts=attempts, error=message)
        self.rows[str(job.slide)] = row
        self.report(row, f"Error: {job.slide}: {message}")
        self.bar.update(1)

    def _gave_up(self, queue: deque) -> bool:
        """No worker alive to run the queue: wait for one to be placed, up to `start_timeout`; past it, the
        slides left fail and the run ends."""
        if self.idle:
            return False
        now = time.monotonic()
        if self.no_worker_since is None:
            self.no_worker_since = now
            if not self.starting:
                self._start_worker()
        if now - self.no_worker_since < self.runner.start_timeout:
            return False
        resources = self.ray.available_resources()
        message = (
            f"no Ray worker could be placed for {self.runner.start_timeout:g} s (each needs {self.runner.cpus:g} CPU, "
            f"{self.gpus:g} GPU; the cluster has {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU free)"
        )
        while queue:
            self._end(queue.popleft(), message)
        return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
