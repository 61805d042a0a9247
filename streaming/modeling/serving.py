"""Which model version a running job serves, and hot swapping to a newly promoted one.

Beam's own model refresh (``WatchFilePattern`` / ``model_metadata_pcoll``) relies on
side inputs that the local runner does not deliver in streaming mode. So the model
itself watches the registry's ``production`` pointer, on every runner the same way:

- at start, the job loads production; if production cannot serve (unloadable, or at
  odds with its own metadata), it says so and serves ``last_known_good`` instead;
- a ``ProductionWatcher`` thread reads the pointer every ``poll_s`` seconds; a new
  version is loaded and checked in that thread, then offered to the ``ModelServer``,
  which swaps between two batches;
- a version that fails is refused: the job keeps serving the previous one, logs it,
  counts it, and does not try that version again until the pointer changes;
- every version the serving path loads successfully becomes ``last_known_good``.
"""

from __future__ import annotations

import logging
import threading

from streaming.runtime import metrics
from streaming.modeling.loading import LoadedModel, ModelRefused, load_model
from streaming.modeling.registry import LAST_KNOWN_GOOD, ModelRegistry, RegistryError
from streaming.modeling.scoring import ModelServer

LOG = logging.getLogger(__name__)
DEFAULT_POLL_S = 2.0

_WATCHERS_RUNNING = [0]  # watcher threads alive in this process (a gauge: 0 = no hot swap)
_WATCHERS_LOCK = threading.Lock()


def _watchers_running(change: int) -> None:
    with _WATCHERS_LOCK:
        _WATCHERS_RUNNING[0] += change
        metrics.gauge("model_watchers_running", _WATCHERS_RUNNING[0])


def mark_last_known_good(registry: ModelRegistry, loaded: LoadedModel) -> None:
    metadata = loaded.metadata
    try:
        if registry.pointer(metadata.name, LAST_KNOWN_GOOD) != metadata.version:
            registry.set_pointer(metadata.name, metadata.version, LAST_KNOWN_GOOD,
                                 reason="loaded by the serving path")
    except (OSError, RegistryError) as error:
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


class ProductionWatcher:
    """Follows the production pointer and offers each new version to a ModelServer."""

    def __init__(self, registry: ModelRegistry, name: str, server: ModelServer,
                 poll_s: float = DEFAULT_POLL_S, refused: str | None = None):
        self._registry = registry
        self._name = name
        self._server = server
        self._poll_s = poll_s
        self._stop = threading.Event()
        self.refused = server.refused  # shared, so the handler can count refusals
        if refused:
            self.refused[refused] = "refused at start"
        server.on_swap = lambda loaded: mark_last_known_good(registry, loaded)
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> "ProductionWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        _watchers_running(+1)
        try:
            while not self._stop.wait(self._poll_s):
                self.check()
        finally:
            _watchers_running(-1)

    def check(self) -> None:
        """One look at the pointer: load, check and offer a new version if there is one."""
        try:
            production = self._registry.production(self._name)
        except (OSError, ValueError) as error:
            LOG.warning("cannot read the production pointer", extra={
                "model": self._name, "error": type(error).__name__})
            return
        if production is None or production in self.refused:
            return
        if production == self._server.version:
            self._server.offer(None)  # a rollback to what is already served
            return
        if production == self._server.offered_version():
            return
        try:
            loaded = load_model(self._registry, self._name, production)
        except (ModelRefused, RegistryError) as refused:
            self.refused[production] = str(refused)
            LOG.error("promoted model refused; still serving the previous version", extra={
                "model": f"{self._name}/{production}", "why": str(refused),
                "serving": self._server.model_id})
            return
        self._server.offer(loaded)


def serve(registry_root: str, name: str, version: str | None = None,
          poll_s: float = DEFAULT_POLL_S) -> ModelServer:
    """A ModelServer for a pinned version, or for production with a watcher running."""
    registry = ModelRegistry(registry_root)
    if version:
        return ModelServer(load_model(registry, name, version))
    loaded, refused = load_for_serving(registry, name)
    server = ModelServer(loaded)
    server.watcher = ProductionWatcher(registry, name, server, poll_s, refused).start()
    return server
