"""Connecting to Ray: an embedded local Ray by default, the cluster named by RAY_ADDRESS otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ray_app.engines.determinism import DETERMINISM_ENV

console = Console(stderr=True)
# Ray Train routes every print() in its workers to the logger; dill (under `datasets` fingerprinting,
# when TRL tokenizes) prints whole bytecode disassemblies into a captured stdout, which that routing
# sends to the job's log (~1,200 lines per worker). Workers keep Python's own print.
WORKER_ENV = {**DETERMINISM_ENV, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
_dashboard_url: str | None = None  # remembered from ray.init, for the job's closing summary
_dashboard_reason = ""  # why the embedded local Ray has a dashboard or not (dashboard_choice)
_gpu_facts: tuple | None = None  # (GpuFacts or None,) once asked: cluster_gpu_facts
GPU_PROBE_TIMEOUT_S = 300.0  # a probe task waits for a GPU the job's other actors may hold
_logs_dir: Path | None = None
_started_local = False  # this process started its own local Ray (ray.shutdown stops it)
_interrupt_handler = None  # the active signals_interrupt()'s handler

logger = logging.getLogger(__name__)


DASHBOARD_ENV = "SLM_SWAP_RAY_DASHBOARD"  # auto (default) | on | off: the embedded local Ray's dashboard
# Idle, the dashboard's ten processes wake ~300 times a second, and every wakeup on a machine whose cores
# all run the model's OpenMP team preempts one of its threads and stalls the rest at the next barrier: the
# 50-row toolcall evaluation (fp32, through Ray Data) took 87.1 and 86.8 s with it and 82.6 and 83.0 s
# without (Intel(R) Xeon(R) Processor, 2 cores, 2026-12-04). That share shrinks with more cores.
DASHBOARD_MIN_CPUS = 4


class DashboardSettingError(ValueError):
    """SLM_SWAP_RAY_DASHBOARD holds something other than auto, on or off."""


@dataclass(frozen=True)
class DashboardChoice:
    """Whether the embedded local Ray starts its dashboard, and why (printed when Ray starts)."""

    include: bool
    reason: str


def dashboard_choice(setting: str | None, cpus: int) -> DashboardChoice:
    """`auto` starts the dashboard on machines with at least DASHBOARD_MIN_CPUS CPUs, not on smaller ones,
    where its idle wakeups cost the model ~5% (see DASHBOARD_ENV); `on` and `off` are kept as asked."""
    value = (setting or "auto").strip().lower()
    if value == "on":
        return DashboardChoice(True, f"{DASHBOARD_ENV}=on")
    if value == "off":
        return DashboardChoice(False, f"{DASHBOARD_ENV}=off")
    if value != "auto":
        raise DashboardSettingError(f"{DASHBOARD_ENV}={setting!r}: expected auto, on or off")
    if cpus >= DASHBOARD_MIN_CPUS:
        return DashboardChoice(True, f"auto: {cpus} CPUs")
    return DashboardChoice(
        False,
        f"auto: off on {cpus} CPUs, where its idle wakeups slow the model ~5%; {DASHBOARD_ENV}=on starts it",
    )


def machine_cpus() -> int:
    """This machine's CPUs: what a local Ray's actors share (cluster_cpus) and what sizes its dashboard."""
    return os.cpu_count() or 1


class LeftoverRayError(RuntimeError):
    """A local Ray runs that no living command owns; starting a second one beside it would hide it."""


ORPHAN_RAY_NAMES = ("gcs_server", "raylet")  # with every "ray::<actor>" worker process
# Left by a killed driver, Ray's agents, idle workers and Ray Data's own system actors only wait to notice
# that their raylet is gone (they exit within a minute) and serve nothing; a Serve proxy, a replica or a
# model worker is what a leftover costs. Process names: 15 characters at most.
ORPHAN_WORKERS_EXIT_S = 10.0  # how long workers of a killed driver get to exit before they count as left
HARMLESS_ORPHANS = ("ray::DashboardA", "ray::RuntimeEnv", "ray::IDLE", "ray::ActorLocat", "ray::_Autoscali",
                    "ray::_StatsActo")  # fmt: skip


@dataclass(frozen=True)
class LeftoverRay:
    """Processes of a local Ray that no living command owns (re-parented to pid 1)."""

    gcs_addresses: tuple[str, ...]  # where to join it (its raylet's --gcs-address); empty when none is left
    processes: tuple[str, ...]  # "pid name", and the ports its workers still listen on

    @property
    def has_cluster(self) -> bool:
        """A GCS or raylet is left (a cluster that stays), not only workers on their way out."""
        return any(shown.split()[1] in ORPHAN_RAY_NAMES for shown in self.processes)


def leftover_local_ray() -> LeftoverRay | None:
    """The local Ray processes whose starting command is gone, or None.

    A Ray that `ray.init()` started belongs to the process that started it and ends with it. When that
    process is killed, its GCS and raylet die with it, but its workers — a Serve proxy still listening,
    the Serve controller, the replicas — are re-parented to pid 1 and keep running. `ray start`
    clusters (GCS and raylet re-parented to pid 1 by design) are reported too.
    """
    import psutil

    addresses, processes = [], []
    for process in psutil.process_iter(["name", "ppid", "cmdline", "status"]):
        info = process.info
        name = info["name"] or ""
        if info["ppid"] != 1 or info["status"] == psutil.STATUS_ZOMBIE:
            continue  # owned by a living process, or a zombie: only an exit status no one collected
        if not (name in ORPHAN_RAY_NAMES or name.startswith("ray::")) or name.startswith(HARMLESS_ORPHANS):
            continue
        arguments = info["cmdline"] or []
        if name == "raylet":  # the address drivers join, as Ray's own discovery reads it
            addresses += [arg.split("=", 1)[1] for arg in arguments if arg.startswith("--gcs-address=")]
        try:
            ports = sorted({c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN})
        except psutil.Error:
            ports = []
        listening = f" listening on {', '.join(map(str, ports))}" if ports and name.startswith("ray::") else ""
        processes.append(f"{process.pid} {name}{listening}")
    serve_first = sorted(processes, key=lambda shown: ("Serve" not in shown and "Proxy" not in shown, shown))
    return LeftoverRay(tuple(addresses), tuple(serve_first)) if processes else None


def check_no_leftover_ray() -> None:
    """LeftoverRayError naming what was left and the ways on, instead of starting a second Ray beside it."""
    leftover = leftover_local_ray()
    deadline = time.monotonic() + ORPHAN_WORKERS_EXIT_S
    while leftover is not None and not leftover.has_cluster and time.monotonic() < deadline:
        time.sleep(0.5)  # workers whose raylet just died exit on their own within seconds
        leftover = leftover_local_ray()
    if leftover is None:
        return
    shown = ", ".join(leftover.processes[:6]) + (" ..." if len(leftover.processes) > 6 else "")
    use = f", or use it: RAY_ADDRESS={leftover.gcs_addresses[0]} slm-swap ..." if leftover.gcs_addresses else ""
    raise LeftoverRayError(
        f"a local Ray is already running with no command that owns it ({shown}): left by an earlier run that was "
        f"killed, or started with `ray start`. Not starting a second one beside it. Stop it with `ray stop`{use}."
    )


def started_local_ray() -> bool:
    """Whether this process started the local Ray it is connected to (so ray.shutdown() stops it)."""
    return _started_local


@contextlib.contextmanager
def signals_interrupt():
    """Within: SIGTERM, and SIGINT even where a background shell ignores it, raise KeyboardInterrupt once,
    so the caller's cleanup (stop Serve, stop Ray) runs; further signals during that cleanup are ignored.

    Python leaves SIGINT ignored when it starts ignored (`cmd &` in a script), and SIGTERM's default
    kills the process at once, leaving the local Ray it started running."""
    global _interrupt_handler
    raised = []

    def interrupt(signum, frame) -> None:
        if raised:
            return
        raised.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    _interrupt_handler = interrupt  # ray.init replaces SIGTERM's handler with its own: ensure_ray puts it back
    try:
        yield
    finally:
        _interrupt_handler = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM after a local Ray started: a KeyboardInterrupt, so the command's own Ctrl-C path runs and
    Python's exit stops the Ray this process started (Ray's handler would end the process at once and
    leave its Ray, Serve app included, running)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup itself is not interrupted again
    raise KeyboardInterrupt


def take_back_signals() -> None:
    """After ray.init: SIGTERM (and, within signals_interrupt, SIGINT) go to this process's handlers again."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; a command's main thread starts Ray
    signal.signal(signal.SIGTERM, _interrupt_handler or terminate_as_interrupt)
    if _interrupt_handler is not None:
        signal.signal(signal.SIGINT, _interrupt_handler)


def wait_forever() -> None:
    """Block until a signal raises in this (main) thread."""
    while True:
        time.sleep(3600)


def ensure_ray() -> str | None:
    """Start or join Ray once per process; return the dashboard URL when there is one.

    The console keeps the job's own lines and progress bars: what workers print (model loading bars,
    trainer logs) and Ray Data's progress stay in the session's log folder, printed once here.
    A failing actor or worker still reaches the console: Ray raises its error in this process.
    """
    import ray

    global _dashboard_url, _dashboard_reason, _logs_dir, _started_local
    if ray.is_initialized():
        return _dashboard_url
    address = os.environ.get("RAY_ADDRESS")
    # Ray's own switch, default off here: RAY_LOG_TO_DRIVER=1 forwards the workers' output again.
    log_to_driver = os.environ.get("RAY_LOG_TO_DRIVER", "0").lower() in ("1", "true")
    # WARNING: Ray's "Started a local Ray instance" info line repeats the dashboard line printed below.
    quiet = {"log_to_driver": log_to_driver, "logging_level": logging.WARNING}
    if address:
        context = ray.init(address=address, **quiet)
        where = f"cluster at {address}"
        _dashboard_reason = "the cluster's setting"
    else:
        check_no_leftover_ray()
        # address="local": always a new embedded Ray, never a stale cluster named in
        # /tmp/ray/ray_current_cluster. Workers start from this process, so they get the
        # determinism variables (and WORKER_ENV) here.
        # Ray starts workers at nice 15 by default; here the workers do the job's real work (the
        # model), so they get normal priority and do not lose CPU to Ray's own daemons on 2 cores.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray starts a worker per CPU when the driver connects, in case tasks come; idle, each wakes
        # ~100 times a second, and on 2 cores those wakeups cost the model's OpenMP team its turns: the
        # 50-row toolcall evaluation (fp32) answered in 95.1 s with them, 90.9 s without (Intel(R) Xeon(R)
        # Processor, 2026-12-02). The job's workers are actors (evaluation, training), started on demand.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        # Ray 2.60 turns token authentication on for a new local cluster and announces it on the
        # console at every start; it stays on, the notice stays off (README's Ray paragraph says so).
        # (RAY_AUTH_MODE=token set here instead: with no token yet, Ray's gcs_server failed to start —
        # this process had read the mode already, so Ray did not create the token it then required.)
        hide_token_authentication_notice()
        dashboard = dashboard_choice(os.environ.get(DASHBOARD_ENV), machine_cpus())
        context = ray.init(
            address="local", runtime_env={"env_vars": WORKER_ENV}, include_dashboard=dashboard.include, **quiet
        )
        where = "embedded local Ray"
        _dashboard_reason = dashboard.reason
        _started_local = True
    take_back_signals()
    keep_ray_data_progress_in_its_log()
    url = getattr(context, "dashboard_url", None) or None
    url = f"http://{url}" if url and not url.startswith("http") else url
    session_dir = context.address_info.get("session_dir")
    _logs_dir = Path(session_dir) / "logs" if session_dir else None
    dashboard = url or f"not running ({_dashboard_reason})"
    console.print(f"Ray: {where}; dashboard: {dashboard}", highlight=False, soft_wrap=True)
    if _logs_dir is not None:  # soft_wrap: a path stays on one line, to copy
        console.print(
            f"Ray logs: {_logs_dir} (workers' output: worker-*.out/.err; Ray Data: ray-data/; Ray Train: train/)"
            + ("" if log_to_driver else "; RAY_LOG_TO_DRIVER=1 also prints the workers' output here"),
            highlight=False,
            soft_wrap=True,
        )
    _dashboard_url = url
    return url


def keep_ray_data_progress_in_its_log() -> None:
    """Ray Data's progress goes to its log file (logs/ray-data/); the job draws its own rich bars.

    On a terminal Ray Data draws tqdm bars, which would tear the rich ones: turned off there. Elsewhere
    it logs a progress block every few seconds at INFO, which its console handler, raised to WARNING,
    leaves to the file handler. Its issue detector's advice (an actor "uses 1.9GiB of memory per worker
    ... consider setting `memory=`", "Found 1 issues") stays in the file too: a model worker uses that
    memory by design. Ray Data's other warnings and its errors still print.
    """
    import ray.data  # its logging is configured on import; adjust it after

    on_terminal = sys.stdout.isatty()  # Ray Data's own test for tqdm bars vs logged progress
    ray.data.DataContext.get_current().enable_progress_bars = not on_terminal
    if on_terminal:  # Ray Data then warns once that its bars are off: they are off on purpose
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":  # the handler's name in Ray Data's default logging config
            handler.setLevel(logging.WARNING)
            add_filter_once(handler, NotIssueDetection)


def hide_token_authentication_notice() -> None:
    add_filter_once(logging.getLogger(RAY_TOKEN_AUTHENTICATION_LOGGER), NotTokenAuthenticationNotice)


def add_filter_once(target: logging.Filterer, filter_type: type[logging.Filter]) -> None:
    """Every command sets its console up once; a second call adds no second filter."""
    if not any(isinstance(existing, filter_type) for existing in target.filters):
        target.addFilter(filter_type())


class NotTokenAuthenticationNotice(logging.Filter):
    """Lets through every record but Ray's notice that it turned token authentication on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


RAY_TOKEN_AUTHENTICATION_LOGGER = "ray._private.authentication.authentication_token_setup"


class NotIssueDetection(logging.Filter):
    """Lets through every record except those of Ray Data's issue detectors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(RAY_DATA_ISSUE_DETECTION_LOGGER)


RAY_DATA_ISSUE_DETECTION_LOGGER = "ray.data._internal.issue_detection"


def quiet_half_built_ray_objects_at_exit() -> None:
    """After a Ctrl-C, drop only Ray Data's "Exception ignored in Dataset.__del__" noise.

    A KeyboardInterrupt that lands inside `Dataset.__init__` leaves an object without
    `_current_executor`; its `__del__` then raises AttributeError at interpreter exit and Python prints a
    traceback under the interrupted message. Every other unraisable exception still reaches the default hook.
    """
    default_hook = sys.unraisablehook

    def hook(unraisable) -> None:
        owner = getattr(unraisable.object, "__qualname__", "")
        if isinstance(unraisable.exc_value, AttributeError) and owner == "Dataset.__del__":
            return
        default_hook(unraisable)

    sys.unraisablehook = hook


def ray_logs_dir() -> Path | None:
    """The log folder of the Ray session this process started or joined (None before that)."""
    return _logs_dir


def dashboard_reason() -> str:
    """Why this process's Ray has its dashboard or not ("" before Ray starts): dashboard_choice."""
    return _dashboard_reason


def dashboard_url_if_running() -> str | None:
    """The dashboard this process's Ray uses, without starting Ray just to ask."""
    import ray

    return _dashboard_url if ray.is_initialized() else None


def _will_run_locally(ray) -> bool:
    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


def cluster_gpus() -> int:
    """GPUs Ray can schedule; for a local Ray not started yet, this machine's (no start just to ask)."""
    import ray

    if _will_run_locally(ray):
        import torch

        return torch.cuda.device_count()
    ensure_ray()
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_gpu_facts():
    """The GPU a model loads on (`engines.precision.GpuFacts`), for a decision the driver makes: this
    machine's when Ray runs here, else what a one-GPU probe task finds on the cluster (the GPU nodes of
    a cluster are taken to be alike); None when none answers. Asked once per process."""
    global _gpu_facts
    if _gpu_facts is None:
        import ray

        from ray_app.engines.precision import local_gpu_facts

        if _will_run_locally(ray) or _started_local:
            facts = local_gpu_facts()
        else:
            ensure_ray()
            try:
                probe = ray.remote(num_gpus=1, num_cpus=0)(local_gpu_facts)
                facts = ray.get(probe.remote(), timeout=GPU_PROBE_TIMEOUT_S)
            except Exception as error:  # no GPU free for the probe in time: the rule then says what it saw
                logger.warning("no GPU answered the precision probe (%r): auto falls back to 8-bit", error)
                facts = None
        _gpu_facts = (facts,)
    return _gpu_facts[0]


def map_batches_without_restarts(dataset, fn, **map_batches_args):
    """`dataset.map_batches` on an actor pool whose actors are never restarted.

    Ray Data's actor pools restart a dead actor and retry its task without end by default
    (`max_restarts` -1), and Ray core then prints an error line on the console at every pool's start
    ("has constructor arguments in the object store and max_restarts > 0", ray-project/ray#57733);
    such a restart can fail anyway (ray-project/ray#53727). Our pools run without restarts: an actor
    that dies (killed for memory, say) fails its step with the reason, and running the step again
    resumes from what was stored. Ray 2.60 takes `max_restarts` only through `ray_remote_args`, which
    it deprecates (no named parameter yet) with a warning on the console at each call: silenced here,
    for this call only (Ray is pinned to 2.60.*)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(fn, max_restarts=0, **map_batches_args)


def cluster_nodes() -> int:
    """Alive nodes Ray can schedule on; 1 for a local Ray not started yet (no start just to ask)."""
    import ray

    if _will_run_locally(ray):
        return 1
    ensure_ray()
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def cluster_cpus() -> float:
    import ray

    if _will_run_locally(ray):
        return float(machine_cpus())
    ensure_ray()
    return float(ray.cluster_resources().get("CPU", 1))
