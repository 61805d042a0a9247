"""A Beam ``ModelHandler`` for Keras 3 ``.keras`` models from the model registry.

Beam ships a TensorFlow handler that loads ``.keras`` files through ``tf.keras``;
it cannot run on GPU workers that have JAX and no TensorFlow. This handler goes
through Keras 3 itself, so it runs on whatever backend ``KERAS_BACKEND`` names.

RunInference loads the model once per worker (or once per machine with
``share_across_processes``, through Beam's multi-process shared model) and batches
elements between ``min_batch_size`` and ``max_batch_size``. Unless a version is
pinned it follows the registry's production pointer and hot-swaps between batches
(streaming/modeling/serving.py). Each ``PredictionResult.model_id`` names the version
that produced it.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from streaming.runtime import metrics
from streaming.modeling.scoring import ImageToScore, ModelServer, Scoring
from streaming.modeling.serving import DEFAULT_POLL_S, running_watchers, serve, take_model_events


class KerasModelHandler(ModelHandler[ImageToScore, Scoring, ModelServer]):
    def __init__(self, model_registry: str, model_name: str, model_version: str | None = None,
                 *, min_batch_size: int = 1, max_batch_size: int = 32,
                 share_across_processes: bool = False, poll_s: float = DEFAULT_POLL_S):
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size ({min_batch_size}) <= "
                             f"max_batch_size ({max_batch_size})")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         large_model=share_across_processes)
        self._registry_root = model_registry
        self._model_name = model_name
        self._model_version = model_version
        self._poll_s = poll_s

    def load_model(self) -> ModelServer:
        return serve(self._registry_root, self._model_name, self._model_version,
                     poll_s=self._poll_s)

    def run_inference(self, batch: Sequence[ImageToScore], model: ModelServer,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        started = time.perf_counter()
        scorings = model.score(list(batch))
        metrics.observe("inference_batch_duration_seconds", time.perf_counter() - started)
        metrics.observe("inference_batch_size", len(batch))
        for scoring in scorings:
            metrics.count("inference", scoring.status)
        self._report_model_events()
        if scorings:
            # The version that scored this batch (a swap happens between batches).
            metrics.model_in_service(scorings[-1].model_name, scorings[-1].model_version)
        return [PredictionResult(item.context, scoring, scoring.model_id)
                for item, scoring in zip(batch, scorings)]

    @staticmethod
    def _report_model_events() -> None:
        """The process's model events (counted once per process by its watcher) as Beam
        metrics, which are recorded only from inside a bundle."""
        for event, amount in take_model_events().items():
            metrics.count("model", event, amount, prometheus=False)
        metrics.gauge("model_watchers_running", running_watchers())

    def get_num_bytes(self, batch: Sequence[ImageToScore]) -> int:
        return sum(item.image.pixels.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return "medimg.keras"
