"""Training across machines: one process per machine, joined with ``jax.distributed``.

Every process runs the same ``cxraug train`` command on the same cache (a shared file system);
each reads only its share of every global batch, the weights are replicated on all devices of
all processes, and XLA's collectives (NCCL on GPUs, gloo on CPUs) make the step compute what one
process computes on the whole batch. Process 0, the chief, is the only one that writes the run
folder (log, run.json, metrics, samples, checkpoints); the others only train. Where a decision
depends on a process's own clock (the ``train.minutes`` budget), every process takes the
chief's answer, so that all of them run the same steps.

TensorFlow's MultiWorkerMirroredStrategy is not used: JAX is the backend that trains on GPUs
(CUDA 13) and needs no per-worker checkpoint folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CxrError

#: ``--coordinator auto``: let JAX read the cluster from its environment (Slurm, Open MPI, ...).
AUTO = "auto"


@dataclass(frozen=True)
class Cluster:
    """How this process joins a training cluster (``cxraug train --coordinator ...``)."""

    coordinator: str  # "host:port" of process 0, or AUTO
    processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300

    def check(self, backend: str) -> None:
        """Option errors, before anything starts (one line each); ``backend``: Keras's."""
        if self.coordinator != AUTO:
            host, sep, port = self.coordinator.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise CxrError(f"--coordinator {self.coordinator!r}: give host:port of process "
                               "0 (e.g. node001:12355), or 'auto' under Slurm/Open MPI")
            if self.processes is None or self.process_id is None:
                raise CxrError("--coordinator host:port needs --processes N and --process-id I "
                               "(0 on the coordinator's machine)")
        if self.timeout_s < 1:
            raise CxrError(f"--cluster-timeout {self.timeout_s}: give a positive number of "
                           "seconds (default 300)")
        if self.processes is not None and self.processes < 1:
            raise CxrError(f"--processes {self.processes}: give a positive number")
        if self.process_id is not None and not (
                0 <= self.process_id < (self.processes or self.process_id + 1)):
            raise CxrError(f"--process-id {self.process_id}: give 0 .. "
                           f"{(self.processes or 1) - 1}")
        if backend != "jax":
            raise CxrError("training across machines (--coordinator) runs on JAX: set "
                           "KERAS_BACKEND=jax on every machine (pip install 'cxraug[jax-cuda]')")


#: Seconds without a heartbeat before JAX declares a process lost (at least; see :func:`join`).
HEARTBEAT_S = 600

#: The cluster this process joined (:func:`join`), for :func:`meetings`.
_JOINED: list[Cluster] = []


def joined() -> bool:
    """Whether this process joined a training cluster (``jax.distributed``)."""
    return bool(_JOINED)


#: The meetings of this process (:func:`meetings`), for :func:`farewell`.
_MEETINGS: list[Meetings] = []


def meetings() -> Meetings | None:
    """Where the processes of the joined cluster wait for each other (None: one process)."""
    import jax

    if not _JOINED or jax.process_count() < 2:
        return None
    if not _MEETINGS:
        _MEETINGS.append(Meetings.of_jax(_JOINED[-1].timeout_s))
    return _MEETINGS[-1]


def farewell(reason: str) -> None:
    """Before a process of the cluster exits with an error: the others learn why at their next
    meeting (instead of waiting out the timeout), and a process that gave up on late peers waits
    up to another ``timeout_s`` (at least a minute) for them to read it. The process that hosts
    the coordination service (process 0) must outlive that reading: a peer that finds the service
    gone is ended by JAX with a native abort instead of the one line."""
    if _MEETINGS:
        _MEETINGS[-1].farewell(reason)


def join(cluster: Cluster, backend: str) -> None:
    """Start ``jax.distributed`` (before JAX computes anything in this process).

    With ``host:port`` the processes first meet on that port (:func:`_rendezvous`): JAX ends
    the whole process with a native stack trace when a peer never shows up, so the missing
    processes are named here, in one line, before JAX is asked."""
    cluster.check(backend)
    import jax

    if cluster.coordinator != AUTO:
        _rendezvous(cluster)
    # CPU devices of several processes talk through gloo (GPUs use NCCL regardless)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # a process that misses heartbeats this long (stopped, swapped out, its machine lost) is
    # declared dead and JAX aborts every process: JAX's 100 s would cut the wait for a late
    # peer short (measured: a process stopped while its peer compiled on a busy machine)
    kwargs: dict[str, object] = {"initialization_timeout": int(cluster.timeout_s),
                                 "heartbeat_timeout_seconds": int(max(
                                     HEARTBEAT_S, 2 * cluster.timeout_s + Meetings.MIN_LINGER_S))}
    if cluster.coordinator != AUTO:
        kwargs.update(coordinator_address=cluster.coordinator,
                      num_processes=cluster.processes, process_id=cluster.process_id)
    try:
        jax.distributed.initialize(**kwargs)  # type: ignore[arg-type]
    except Exception as exc:  # JAX raises bare RuntimeError/ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = ("the cluster's environment" if cluster.coordinator == AUTO
                 else f"coordinator {cluster.coordinator}")
        raise CxrError(f"could not join the training cluster ({where}): {first}; start the "
                       "same command on every machine, process 0 on the coordinator's") from None
    _JOINED.append(cluster)


def _rendezvous(cluster: Cluster) -> None:
    """Process 0 listens on the coordinator's port until the other ``processes - 1`` have said
    who they are (the same count, distinct ranks), then tells them to go and frees the port
    for JAX's coordination service; each other process connects (retrying: process 0 may start
    later), says ``cxraug <processes> <rank>`` and waits for ``go``. Within ``timeout_s``."""
    import socket
    import time

    host, _, port = cluster.coordinator.rpartition(":")
    n, rank = int(cluster.processes or 1), int(cluster.process_id or 0)
    deadline = time.monotonic() + cluster.timeout_s
    fix = "start the same command on every machine, with --process-id 0 .. " + str(n - 1)
    if rank != 0:
        while True:
            try:
                conn = socket.create_connection((host, int(port)), timeout=2.0)
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise CxrError(f"could not reach process 0 at {cluster.coordinator} within "
                                   f"{cluster.timeout_s} s ({exc.strerror or exc}); {fix}"
                                   ) from None
                time.sleep(0.5)
        with conn:
            conn.sendall(f"cxraug {n} {rank}\n".encode())
            conn.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                answer = conn.makefile("r").readline().strip()
            except OSError:
                answer = ""
        if answer != "go":
            reason = answer.removeprefix("abort ") if answer else (
                f"process 0 did not see all {n} processes within {cluster.timeout_s} s")
            raise CxrError(f"training cluster at {cluster.coordinator}: {reason}; {fix}")
        return

    peers: dict[int, socket.socket] = {}
    message = b"abort process 0 stopped\n"
    try:
        with socket.create_server(("", int(port))) as server:
            server.settimeout(0.5)
            while len(peers) < n - 1:
                if time.monotonic() >= deadline:
                    missing = sorted(set(range(1, n)) - set(peers))
                    raise CxrError(f"training cluster at {cluster.coordinator}: process(es) "
                                   f"{', '.join(map(str, missing))} of {n} did not join within "
                                   f"{cluster.timeout_s} s; {fix}")
                try:
                    conn, _ = server.accept()
                    conn.settimeout(5.0)
                    hello = conn.makefile("r").readline().split()
                except OSError:  # TimeoutError included: nobody yet
                    continue
                if len(hello) != 3 or hello[0] != "cxraug" or not hello[1].isdigit() or \
                        not hello[2].isdigit():
                    conn.close()  # not one of ours (a port scan, a health check)
                    continue
                count, other = int(hello[1]), int(hello[2])
                problem = (f"a process was started with --processes {count}, process 0 with {n}"
                           if count != n else
                           f"two processes were started with --process-id {other}"
                           if other == 0 or other in peers else None)
                peers[other if problem is None else -1] = conn
                if problem:
                    raise CxrError(f"training cluster at {cluster.coordinator}: {problem}; {fix}")
        message = b"go\n"
    except CxrError as exc:
        message = f"abort {str(exc).split(': ', 1)[-1].split('; ')[0]}\n".encode()
        raise
    except OSError as exc:
        raise CxrError(f"cannot listen on port {port} for the training cluster "
                       f"({exc.strerror or exc}); choose another --coordinator port") from None
    finally:
        for conn in peers.values():
            with conn:
                try:
                    conn.sendall(message)
                except OSError:
                    pass


class Meetings:
    """Where the processes of a cluster wait for each other, with the cluster's ``timeout_s``.

    Gloo, which carries JAX's collectives between CPU processes, gives a late peer 30 s at the
    creation of every collective group (its key exchange) and then ends both processes with a
    native abort. So the processes meet here first, through JAX's coordination service (its
    key-value store, whose waits take any timeout): before the first step (compiled ahead, so that
    compilation time does not count), at the run driver's barriers, and where the chief's
    decision is shared. Whether a meeting goes on or stops is decided once, by the first process
    to write its decision (the store refuses a second write), so that no process goes on into a
    collective that another has left. A process missing past ``timeout_s`` gives every process
    one line that names it; the processes that gave up wait for the latecomer to read that line
    (:func:`farewell`).
    """

    POLL_S = 0.05
    PREFIX = "cxraug"
    #: A process that waits this long at a meeting says for whom.
    SAY_AFTER_S = 10.0
    #: The least a process that gave up waits for the latecomers to read why (else timeout_s).
    MIN_LINGER_S = 60.0
    #: After the late peers read the farewell, the host of the service stays this long so that
    #: they print their line and exit before it goes (seen: a reader aborted by JAX, exit -6).
    READ_GRACE_S = 5.0

    def __init__(self, client: Any, rank: int, count: int, timeout_s: float) -> None:
        self.client, self.rank, self.count = client, int(rank), int(count)
        self.timeout_s = float(timeout_s)
        self.waited: dict[str, float] = {}  # meeting -> seconds this process waited there
        self.late: list[int] = []  # the processes this one gave up on

    @classmethod
    def of_jax(cls, timeout_s: float) -> Meetings:
        import jax
        from jax._src import distributed

        client = distributed.global_state.client
        if client is None:
            raise CxrError("internal: Meetings need jax.distributed to be initialized")
        return cls(client, jax.process_index(), jax.process_count(), timeout_s)

    # ------------------------------------------------------------------ the key-value store
    def _get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception:  # "not found" is an exception here
            return None

    def _set(self, key: str, value: str) -> bool:
        """Write ``key`` unless it is there already; whether this process wrote it."""
        try:
            self.client.key_value_set(key, value)
            return True
        except Exception:  # ALREADY_EXISTS: another process wrote it first
            return False

    def _ranks(self, directory: str) -> set[int]:
        """The ranks that wrote a key under ``directory`` (keys end in ``/<rank>``)."""
        return {int(k.rsplit("/", 1)[-1]) for k, _ in self.client.key_value_dir_get(
            f"{self.PREFIX}/{directory}/")}

    def _decide(self, key: str, value: str) -> str:
        """The one decision of ``key``: ``value`` if this process is first, else the other's."""
        if self._set(key, value):
            return value
        decided = self._get(key)
        return value if decided is None else decided

    def _stop(self, reason: str) -> CxrError:
        """The run stops for ``reason``: note it for every process and acknowledge reading it
        (the process that gave up waits for that before it exits)."""
        self._set(f"{self.PREFIX}/abort", reason)
        self._set(f"{self.PREFIX}/read/{self.rank}", "1")
        return CxrError(reason)

    # ------------------------------------------------------------------------ what callers use
    def check(self) -> None:
        """Stop here with the reason if another process has stopped the run."""
        reason = self._get(f"{self.PREFIX}/abort")
        if reason is not None:
            raise self._stop(reason)

    def meet(self, name: str) -> float:
        """Wait until every process has reached ``name``; returns the seconds waited."""
        import time

        self._test_hold(name)
        start = time.monotonic()
        self._set(f"{self.PREFIX}/meet/{name}/{self.rank}", "1")
        deadline = start + self.timeout_s
        where = name.rsplit("-", 1)[0].replace("-", " ")  # "first-step-2": a counter
        said = False
        while True:
            self.check()
            here = self._ranks(f"meet/{name}")
            if len(here) >= self.count:
                verdict = self._decide(f"{self.PREFIX}/decided/{name}", "go")
            elif time.monotonic() >= deadline:
                late = sorted(set(range(self.count)) - here)
                reason = (f"training cluster: process(es) {', '.join(map(str, late))} of "
                          f"{self.count} did not reach the {where} within {self.timeout_s:g} s of "
                          f"process(es) {', '.join(map(str, sorted(here)))}; the run folder "
                          "keeps its last checkpoint: rerun the same commands with --resume")
                verdict = self._decide(f"{self.PREFIX}/decided/{name}", reason)
                if verdict == reason:
                    self.late = late
            else:
                if not said and time.monotonic() - start > self.SAY_AFTER_S:
                    missing = ", ".join(map(str, sorted(set(range(self.count)) - here)))
                    print(f"process {self.rank}: waiting for process(es) {missing} at the "
                          f"{where} (up to {self.timeout_s:g} s)", flush=True)
                    said = True
                time.sleep(self.POLL_S)
                continue
            if verdict != "go":
                raise self._stop(verdict)
            break
        waited = time.monotonic() - start
        self.waited[name] = waited
        if said:
            print(f"process {self.rank}: waited {waited:.0f} s for the other processes at the "
                  f"{where}", flush=True)
        return waited

    def _test_hold(self, name: str) -> None:
        """A late process, for the tests: ``CXRAUG_TEST_HOLD=RANK:MEETING:SECONDS`` holds process
        RANK before meeting MEETING (e.g. ``first-step``) until every other process has waited
        there SECONDS (``inf``: until the run stops), still answering JAX's heartbeats, as a
        process that compiles slower or shares its machine does."""
        import os
        import time

        hold = os.environ.get("CXRAUG_TEST_HOLD", "")
        if not hold:
            return
        rank, meeting, seconds = hold.split(":")
        if int(rank) != self.rank or name.rsplit("-", 1)[0] != meeting:
            return
        others = set(range(self.count)) - {self.rank}
        since = None
        while self._get(f"{self.PREFIX}/abort") is None:
            here = self._ranks(f"meet/{name}")
            if others <= here:
                since = since if since is not None else time.monotonic()
                if time.monotonic() - since >= float(seconds):
                    return
            time.sleep(self.POLL_S)

    def share(self, name: str, value: str) -> str:
        """The chief's ``value`` on every process (the others' ``value`` is ignored)."""
        key = f"{self.PREFIX}/share/{name}"
        if self.rank == 0:
            self._set(key, value)
            return value
        try:
            return self.client.blocking_key_value_get(key, int(self.timeout_s * 1000))
        except Exception:  # the coordination service's DEADLINE_EXCEEDED
            self.check()
            raise self._stop(f"training cluster: process 0 did not share '{name}' within "
                             f"{self.timeout_s:g} s; rerun the same commands with --resume"
                             ) from None

    def farewell(self, reason: str) -> None:
        """See :func:`farewell`."""
        import time

        self._set(f"{self.PREFIX}/abort", reason)
        if not self.late:
            return
        deadline = time.monotonic() + max(self.timeout_s, self.MIN_LINGER_S)
        while time.monotonic() < deadline:
            try:
                read = self._ranks("read")
            except Exception:  # the service is going away: nothing to wait for
                return
            if read >= set(self.late):
                # a reader still says why and leaves the cluster after it read; the service
                # going away under it meanwhile ends it with JAX's native abort instead
                time.sleep(self.READ_GRACE_S)
                return
            time.sleep(self.POLL_S)
