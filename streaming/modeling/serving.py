"""Which model version a running job serves, and hot swapping to a newly promoted one.

Beam's own model refresh (``WatchFilePattern`` / ``model_metadata_pcoll``) relies on
side inputs that the local runner does not deliver in streaming mode. So the model
itself watches the registry's ``production`` pointer, on every runner the same way:

- at start, the job loads production; if production cannot serve (unloadable, or at
  odds with its own metadata), it says so and serves ``last_known_good`` instead;
- one ``ProductionWatcher`` thread per process and model reads the pointer every
  ``poll_s`` seconds; a new version is loaded and checked in that thread, recorded as
  ``last_known_good`` (once, outside any scoring lock), then offered to every
  ``ModelServer`` of the process, each of which swaps between two batches;
- a version that fails to load is refused: the job keeps serving the previous one,
  logs it and counts it; it is tried again when the pointer moves to it again, or
  after a backoff (a transient read error must not refuse a version forever);
- any other error while polling (an unreadable pointer, metadata from the future, a
  remote read failing) is logged, counted (``model{event="watch_error"}``) and retried
  with backoff: the watcher never dies of it, and a watcher that stopped anyway shows
  as ``medimg_model_watchers_running`` 0 and an error in the log;
- swaps and refusals are counted once per process, by the watcher; the RunInference
  handler reports them from inside a bundle (``take_model_events``), where Beam's
  metrics are recorded.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback

from streaming.runtime import metrics
from streaming.modeling.loading import LoadedModel, ModelRefused, load_model
from streaming.modeling.registry import LAST_KNOWN_GOOD, ModelRegistry, RegistryError
from streaming.modeling.scoring import ModelServer

LOG = logging.getLogger(__name__)
DEFAULT_POLL_S = 2.0
# Polling errors back off from poll_s up to this; a refused version is retried after
# REFUSAL_RETRY_S, doubling up to REFUSAL_RETRY_MAX_S, unless the pointer moves first.
MAX_ERROR_BACKOFF_S = 60.0
REFUSAL_RETRY_S = 60.0
REFUSAL_RETRY_MAX_S = 3600.0

SWAPPED, REFUSED, WATCH_ERROR = "swapped", "refused", "watch_error"
_EVENTS: collections.Counter = collections.Counter()  # model events not yet reported
_EVENTS_LOCK = threading.Lock()
_WATCHERS: dict[tuple[str, str], "ProductionWatcher"] = {}
_WATCHERS_LOCK = threading.Lock()


def _record(event: str) -> None:
    # Prometheus now (a scrape must see a failing watcher even without traffic); Beam's
    # metrics later, from a bundle (take_model_events), where they are recorded.
    metrics.count("model", event, beam=False)
    with _EVENTS_LOCK:
        _EVENTS[event] += 1


def take_model_events() -> dict[str, int]:
    """Model events (swapped, refused, watch_error) since the last call, process-wide."""
    with _EVENTS_LOCK:
        events = dict(_EVENTS)
        _EVENTS.clear()
    return events


def running_watchers() -> int:
    with _WATCHERS_LOCK:
        return sum(watcher.alive for watcher in _WATCHERS.values())


def mark_last_known_good(registry: ModelRegistry, loaded: LoadedModel) -> None:
    metadata = loaded.metadata
    try:
        if registry.pointer(metadata.name, LAST_KNOWN_GOOD) != metadata.version:
            registry.set_pointer(metadata.name, metadata.version, LAST_KNOWN_GOOD,
                                 reason="loaded by the serving path")
    except (OSError, ValueError, RegistryError) as error:
        # Serving goes on; only the restart fallback is less fresh.
        LOG.warning("cannot record last_known_good", extra={
            "model": metadata.model_id, "error": type(error).__name__})


def load_for_serving(registry: ModelRegistry, name: str) -> tuple[LoadedModel, str | None]:
    """Production, else last_known_good. Returns (model, refused production version)."""
    production = registry.resolve(name)
    try:
        loaded = load_model(registry, name, production)
    except ModelRefused as refused:
        fallback = registry.pointer(name, LAST_KNOWN_GOOD)
        LOG.error("production model refused", extra={
            "model": f"{name}/{production}", "why": str(refused),
            "serving_instead": f"{name}/{fallback}" if fallback else None})
        if fallback is None or fallback == production:
            raise
        return load_model(registry, name, fallback), production
    mark_last_known_good(registry, loaded)
    return loaded, None


def _where(error: BaseException) -> str:
    """Where an error was raised (file:line), never its message (which may quote data)."""
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"


class ProductionWatcher:
    """Follows the production pointer and offers each new version to its ModelServers."""

    def __init__(self, registry: ModelRegistry, name: str, server: ModelServer,
                 poll_s: float = DEFAULT_POLL_S, refused: str | None = None,
                 refusal_retry_s: float = REFUSAL_RETRY_S):
        self._registry = registry
        self._name = name
        self._servers = [server]
        self._poll_s = poll_s
        self._refusal_retry_s = refusal_retry_s
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one check at a time (the thread, or a test)
        self.refused = server.refused  # version -> why it may not serve (shared with servers)
        self._retry_at: dict[str, float] = {}  # refused version -> when it may be tried again
        self._attempts: dict[str, int] = {}
        self._last_production: str | None = server.version
        self._offered: LoadedModel | None = None
        self.errors = 0  # consecutive polling errors
        self.alive = False
        if refused:
            self._refuse(refused, "refused at start")
        server.watcher = self
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def current(self) -> LoadedModel:
        """The newest version this process serves or is about to serve."""
        return self._offered or self._servers[0].loaded

    def attach(self, server: ModelServer) -> None:
        """Feed another server of this process (each RunInference instance has one)."""
        with self._lock:
            server.refused = self.refused
            if self._offered is not None:
                server.offer(self._offered)
            self._servers.append(server)
        server.watcher = self

    def start(self) -> "ProductionWatcher":
        self.alive = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = self._poll_s
        try:
            while not self._stop.wait(delay):
                try:
                    self.check()
                    self.errors = 0
                    delay = self._poll_s
                except Exception as error:  # noqa: BLE001 - a watcher must outlive any error
                    self.errors += 1
                    delay = min(self._poll_s * 2 ** min(self.errors, 16), MAX_ERROR_BACKOFF_S)
                    _record(WATCH_ERROR)
                    LOG.error("model watcher error; still serving the current version", extra={
                        "model": self._name, "error": type(error).__name__,
                        "where": _where(error), "retry_in_s": round(delay, 1)})
        finally:
            if not self._stop.is_set():
                LOG.error("model watcher stopped: no more hot swaps until the job restarts",
                          extra={"model": self._name})
            self.alive = False
            metrics.gauge("model_watchers_running", running_watchers())

    def check(self) -> None:
        """One look at the pointer: load, check and offer a new version if there is one.

        Raises what reading the pointer raises; a version that fails to load is refused.
        """
        with self._lock:
            self._check()

    def _check(self) -> None:
        production = self._registry.production(self._name)
        if production != self._last_production:
            # The pointer moved: a version refused earlier gets a fresh try when it returns.
            self._retry_at.clear()
            self._last_production = production
        if production is None:
            return
        if production in self.refused and time.monotonic() < self._retry_at.get(production, 0):
            return
        serving = {server.version for server in self._servers}
        if serving == {production}:
            self._offer(None)  # a rollback to what is already served
            return
        if self._offered is not None and self._offered.metadata.version == production:
            return
        try:
            loaded = load_model(self._registry, self._name, production)
        except (ModelRefused, RegistryError, OSError, ValueError, KeyError) as refused:
            why = str(refused) if isinstance(refused, ModelRefused) else (
                f"{type(refused).__name__} while loading (at {_where(refused)})")
            self._refuse(production, why)
            LOG.error("promoted model refused; still serving the previous version", extra={
                "model": f"{self._name}/{production}", "why": why,
                "serving": sorted(serving), "retry_in_s": round(
                    self._retry_at[production] - time.monotonic(), 1)})
            return
        self.refused.pop(production, None)
        self._retry_at.pop(production, None)
        self._attempts.pop(production, None)
        mark_last_known_good(self._registry, loaded)
        _record(SWAPPED)
        self._offer(loaded)

    def _refuse(self, version: str, why: str) -> None:
        attempts = self._attempts.get(version, 0) + 1
        self._attempts[version] = attempts
        self._retry_at[version] = time.monotonic() + min(
            self._refusal_retry_s * 2 ** (attempts - 1), REFUSAL_RETRY_MAX_S)
        if version not in self.refused:
            _record(REFUSED)  # a version counts as refused once, however often it is retried
        self.refused[version] = why

    def _offer(self, loaded: LoadedModel | None) -> None:
        self._offered = loaded
        for server in self._servers:
            server.offer(loaded)


def serve(registry_root: str, name: str, version: str | None = None,
          poll_s: float = DEFAULT_POLL_S) -> ModelServer:
    """A ModelServer for a pinned version, or for production fed by the process's watcher."""
    registry = ModelRegistry(registry_root)
    if version:
        return ModelServer(load_model(registry, name, version))
    with _WATCHERS_LOCK:
        watcher = _WATCHERS.get((registry_root, name))
        if watcher is not None and not watcher.alive:
            watcher = None  # stopped: start afresh
    if watcher is not None:
        server = ModelServer(watcher.current())
        watcher.attach(server)
        return server
    loaded, refused = load_for_serving(registry, name)
    server = ModelServer(loaded)
    watcher = ProductionWatcher(registry, name, server, poll_s, refused).start()
    with _WATCHERS_LOCK:
        _WATCHERS[(registry_root, name)] = watcher
    metrics.gauge("model_watchers_running", running_watchers())
    return server
