"""The Keras model handler: loading, routing, batching, version stamps, model safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from streaming.imaging.preprocessing import PreprocessingSpec, preprocess
from streaming.imaging.types import DecodedImage
from streaming.modeling.handler import KerasModelHandler
from streaming.modeling.loading import ModelRefused, load_model
from streaming.modeling.metadata import InvalidModelMetadata, ModelMetadata
from streaming.modeling.registry import ModelRegistry, RegistryError
from streaming.modeling.scoring import ImageToScore, ModelServer, Scoring
from unit_tests.conftest import MODEL_NAME, build_small_model, metadata_document, register

REPO = Path(__file__).resolve().parents[1]


def an_image(rng, shape=(64, 64), modality="CR", body_part="CHEST", photometric="MONOCHROME2",
             context="ctx"):
    pixels = rng.random(shape, dtype=np.float32)
    return ImageToScore(context=context,
                        image=DecodedImage(pixels=pixels, photometric_interpretation=photometric,
                                           modality=modality, body_part_examined=body_part),
                        modality=modality, body_part_examined=body_part)


def test_handler_scores_with_the_production_version(small_registry, rng):
    handler = KerasModelHandler(small_registry.root, MODEL_NAME, max_batch_size=8)
    server = handler.load_model()
    batch = [an_image(rng, context=i) for i in range(5)]
    results = list(handler.run_inference(batch, server))
    assert [r.example for r in results] == [0, 1, 2, 3, 4]
    assert {r.model_id for r in results} == {f"{MODEL_NAME}/1"}
    for result in results:
        assert result.inference.status == Scoring.SCORED
        scores = result.inference.decision.scores
        assert set(scores) == {"normal", "pneumonia"}
        assert abs(sum(scores.values()) - 1) < 1e-5


def test_scores_equal_a_direct_keras_prediction_on_the_same_preprocessing(small_registry, rng):
    loaded = load_model(small_registry, MODEL_NAME, "1")
    item = an_image(rng, shape=(300, 250))
    expected = loaded.keras_model.predict_on_batch(
        preprocess(item.image.pixels, loaded.metadata.preprocessing)[None])[0]
    scoring = ModelServer(loaded).score([item])[0]
    assert scoring.decision.scores["pneumonia"] == pytest.approx(float(expected[1]), abs=1e-6)


def test_images_outside_the_model_applicability_are_not_scored(small_registry, rng):
    server = ModelServer(load_model(small_registry, MODEL_NAME, "1"))
    results = server.score([an_image(rng, modality="CT"), an_image(rng, body_part="KNEE"),
                            an_image(rng)])
    assert [r.status for r in results] == [Scoring.NOT_APPLICABLE, Scoring.NOT_APPLICABLE,
                                           Scoring.SCORED]
    assert "CT" in results[0].not_applicable_reason
    assert results[0].decision is None


def test_color_and_any_size_images_are_fed_at_the_model_input_size(small_registry, rng):
    server = ModelServer(load_model(small_registry, MODEL_NAME, "1"))
    results = server.score([an_image(rng, shape=(512, 512, 3), photometric="RGB"),
                            an_image(rng, shape=(17, 900))])
    assert [r.status for r in results] == [Scoring.SCORED, Scoring.SCORED]


def test_preprocessing_parameters_travel_with_the_model(tmp_path, rng):
    registry = ModelRegistry(str(tmp_path / "registry"))
    big = register(registry, tmp_path / "s1", build_small_model((64, 48, 3)),
                   name="wide-cnn", preprocessing={"height": 64, "width": 48, "channels": 3,
                                                   "mean": [0.5], "std": [0.25]})
    server = ModelServer(load_model(registry, "wide-cnn", big.version))
    assert server.loaded.metadata.preprocessing == PreprocessingSpec(64, 48, 3, (0.5,), (0.25,))
    assert server.score([an_image(rng)])[0].status == Scoring.SCORED


def test_runinference_batches_within_bounds_in_a_beam_pipeline(small_registry, rng):
    handler = KerasModelHandler(small_registry.root, MODEL_NAME, min_batch_size=2,
                                max_batch_size=4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 4}
    items = [an_image(rng, context=i) for i in range(10)]
    with beam.Pipeline() as pipeline:
        versions = (pipeline | beam.Create(items) | RunInference(handler)
                    | beam.Map(lambda r: (r.example, r.model_id)))
        assert_that(versions, equal_to([(i, f"{MODEL_NAME}/1") for i in range(10)]))


def test_a_pinned_version_is_served_instead_of_production(tmp_path, rng):
    registry = ModelRegistry(str(tmp_path / "registry"))
    first = register(registry, tmp_path / "s1", build_small_model(seed=1))
    second = register(registry, tmp_path / "s2", build_small_model(seed=2))
    registry.set_pointer(MODEL_NAME, first.version)
    assert (first.version, second.version) == ("1", "2")
    assert KerasModelHandler(registry.root, MODEL_NAME).load_model().model_id == f"{MODEL_NAME}/1"
    pinned = KerasModelHandler(registry.root, MODEL_NAME, model_version="2").load_model()
    assert pinned.model_id == f"{MODEL_NAME}/2"


def test_no_production_model_says_how_to_train_one(tmp_path):
    handler = KerasModelHandler(str(tmp_path / "empty"), MODEL_NAME)
    with pytest.raises(RegistryError, match="medimg train"):
        handler.load_model()


def test_a_model_contradicting_its_metadata_is_refused(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    wrong_size = register(registry, tmp_path / "s1", build_small_model((32, 32, 1)))
    with pytest.raises(ModelRefused, match="input shape"):
        load_model(registry, MODEL_NAME, wrong_size.version)
    wrong_classes = register(registry, tmp_path / "s2", build_small_model(classes=3))
    with pytest.raises(ModelRefused, match="3 classes|names 2"):
        load_model(registry, MODEL_NAME, wrong_classes.version)


def test_metadata_breaking_its_contract_cannot_be_registered(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(InvalidModelMetadata, match="positive_class"):
        register(registry, tmp_path / "s", build_small_model(), positive_class="cancer")
    with pytest.raises(InvalidModelMetadata):
        register(registry, tmp_path / "s", build_small_model(), threshold=1.5)
    assert registry.versions(MODEL_NAME) == []


def test_a_model_producing_non_probabilities_is_refused_at_load(tmp_path):
    import keras  # noqa: PLC0415

    registry = ModelRegistry(str(tmp_path / "registry"))
    # A linear output layer: scores outside [0, 1], caught by the load-time probe.
    linear = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                               keras.layers.Dense(2, kernel_initializer="ones")])
    record = register(registry, tmp_path / "s", linear)
    with pytest.raises(ModelRefused, match="not probabilities"):
        load_model(registry, MODEL_NAME, record.version)


def test_non_finite_scores_on_some_images_are_failures_not_findings(tmp_path, rng):
    import keras  # noqa: PLC0415

    registry = ModelRegistry(str(tmp_path / "registry"))
    # Finite on the load-time probe (all 0.5) but overflowing to NaN on a bright image.
    kernel = np.zeros((28 * 28, 2), np.float32)
    kernel[:, 0] = 5e35  # 392 x 5e35 fits in float32; 784 x 5e35 overflows to infinity
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax",
                           kernel_initializer=keras.initializers.Constant(kernel))])
    record = register(registry, tmp_path / "s", model)
    server = ModelServer(load_model(registry, MODEL_NAME, record.version))
    bright = ImageToScore("bright", DecodedImage(np.ones((28, 28), np.float32), "MONOCHROME2"),
                          "CR", "CHEST")
    results = server.score([bright, an_image(rng)])
    assert results[0].status == Scoring.FAILED
    assert "non-finite" in results[0].failure


def test_metadata_round_trips_extra_fields():
    document = metadata_document(version="7", metrics={"val_auc": 0.91}, data_fingerprint="ab")
    metadata = ModelMetadata.from_dict(document)
    assert ModelMetadata.from_dict(metadata.to_dict()) == metadata
    assert metadata.to_dict()["metrics"] == {"val_auc": 0.91}
    assert metadata.to_dict()["data_fingerprint"] == "ab"


def test_streaming_package_runs_without_tensorflow(small_registry):
    """GPU workers have JAX and no TensorFlow: load and score with TensorFlow unimportable."""
    pytest.importorskip("jax", reason="the JAX backend is part of the test extra")
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class NoTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ImportError("TensorFlow is not installed on this worker")
        sys.meta_path.insert(0, NoTensorFlow())
        import numpy as np, json
        import streaming.job.pipeline
        from streaming.modeling.handler import KerasModelHandler
        from streaming.modeling.scoring import ImageToScore
        from streaming.imaging.types import DecodedImage
        import keras
        handler = KerasModelHandler({small_registry.root!r}, {MODEL_NAME!r})
        server = handler.load_model()
        image = DecodedImage(np.full((40, 40), 0.5, np.float32), "MONOCHROME2", "CR", "CHEST")
        results = list(handler.run_inference([ImageToScore("c", image, "CR", "CHEST")], server))
        print(json.dumps({{"backend": keras.backend.backend(),
                          "tensorflow_loaded": any(m.split(".")[0] == "tensorflow"
                                                   for m in sys.modules),
                          "scores": results[0].inference.decision.scores}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                               text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and not report["tensorflow_loaded"]
    # Same weights, same input: the TensorFlow backend here must agree with JAX there.
    server = KerasModelHandler(small_registry.root, MODEL_NAME).load_model()
    image = DecodedImage(np.full((40, 40), 0.5, np.float32), "MONOCHROME2", "CR", "CHEST")
    local = server.score([ImageToScore("c", image, "CR", "CHEST")])[0].decision.scores
    assert report["scores"] == pytest.approx(local, abs=1e-5)


def test_one_model_can_be_shared_across_processes(small_registry, rng):
    """--share_model_across_processes: Beam's multi-process shared model serves the batches."""
    handler = KerasModelHandler(small_registry.root, MODEL_NAME, max_batch_size=4,
                                share_across_processes=True)
    assert handler.share_model_across_processes()
    items = [an_image(rng, context=i) for i in range(6)]
    with beam.Pipeline() as pipeline:
        results = (pipeline | beam.Create(items) | RunInference(handler)
                   | beam.Map(lambda r: (r.example, r.model_id, r.inference.status)))
        assert_that(results, equal_to([(i, f"{MODEL_NAME}/1", Scoring.SCORED)
                                       for i in range(6)]))
