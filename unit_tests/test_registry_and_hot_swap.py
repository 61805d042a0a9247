"""The registry's lifecycle (promote, reject, roll back) and the serving path's hot swap."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from streaming.imaging.types import DecodedImage
from streaming.modeling.loading import ModelRefused
from streaming.modeling.registry import (LAST_KNOWN_GOOD, REJECTED, TF_SERVING_CONFIG,
                                         ModelRegistry, RegistryError)
from streaming.modeling.scoring import ImageToScore, Scoring
from streaming.modeling.serving import (load_for_serving, running_watchers, serve,
                                        take_model_events)
from unit_tests.conftest import MODEL_NAME, build_small_model, register


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    """Three registered versions (1, 2, 3) of MODEL_NAME; version 1 in production."""
    registry = ModelRegistry(str(tmp_path / "registry"))
    for seed in (1, 2, 3):
        register(registry, tmp_path / f"staging-{seed}", build_small_model(seed=seed))
    registry.promote(MODEL_NAME, "1", reason="first model")
    return registry


def break_model_file(registry: ModelRegistry, version: str) -> None:
    with open(registry.model_uri(MODEL_NAME, version), "wb") as handle:
        handle.write(b"not a keras archive")


def image(value: float = 0.5) -> ImageToScore:
    pixels = np.full((28, 28), value, np.float32)
    return ImageToScore("ctx", DecodedImage(pixels, "MONOCHROME2", "CR", "CHEST"), "CR", "CHEST")


def test_promotion_keeps_a_history_for_rollback(registry):
    registry.promote(MODEL_NAME, "2", reason="gate passed")
    registry.promote(MODEL_NAME, "3", reason="gate passed")
    assert registry.production(MODEL_NAME) == "3"
    assert registry.pointer_document(MODEL_NAME)["history"] == ["2", "1"]
    assert registry.status(MODEL_NAME, "3")["state"] == "promoted"
    assert registry.rollback(MODEL_NAME) == "2"
    assert registry.production(MODEL_NAME) == "2"
    assert registry.rollback(MODEL_NAME, to="1") == "1"
    assert "rollback" in registry.pointer_document(MODEL_NAME)["reason"]


def test_a_rejected_version_never_becomes_production(registry):
    registry.set_status(MODEL_NAME, "2", REJECTED, reason="AUC 0.71 below the floor 0.80")
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote(MODEL_NAME, "2", reason="manual")
    assert registry.status(MODEL_NAME, "3")["state"] == "candidate"
    assert registry.production(MODEL_NAME) == "1"


def test_nothing_to_roll_back_to_is_explained(registry):
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(MODEL_NAME)


def test_tf_serving_config_pins_the_production_version(registry):
    registry.promote(MODEL_NAME, "3", reason="gate passed")
    with open(f"{registry.root}/{TF_SERVING_CONFIG}") as handle:
        config = handle.read()
    assert f'name: "{MODEL_NAME}"' in config
    assert "specific { versions: 3 }" in config
    assert f'base_path: "{registry.root}/{MODEL_NAME}"' in config


def test_a_promoted_version_is_served_from_the_next_batch(registry):
    server = serve(registry.root, MODEL_NAME, poll_s=3600)  # checks driven by the test
    assert server.model_id == f"{MODEL_NAME}/1"
    assert registry.pointer(MODEL_NAME, LAST_KNOWN_GOOD) == "1"
    registry.promote(MODEL_NAME, "2", reason="gate passed")
    server.watcher.check()
    assert server.score([image()])[0].model_version == "2"
    assert server.counts() == (1, 0)
    assert registry.pointer(MODEL_NAME, LAST_KNOWN_GOOD) == "2"


def test_an_offer_waits_for_the_batch_boundary(registry):
    server = serve(registry.root, MODEL_NAME, poll_s=3600)
    registry.promote(MODEL_NAME, "3", reason="gate passed")
    server.watcher.check()
    assert server.version == "1"  # nothing changes until the next batch starts
    results = server.score([image(0.2), image(0.8)])
    assert {r.model_version for r in results} == {"3"}  # the whole batch, one version


def test_a_broken_promotion_is_refused_and_the_previous_version_keeps_serving(registry):
    server = serve(registry.root, MODEL_NAME, poll_s=3600)
    break_model_file(registry, "2")
    registry.promote(MODEL_NAME, "2", reason="gate passed")
    server.watcher.check()
    server.watcher.check()  # refused once, not retried
    result = server.score([image()])[0]
    assert result.status == Scoring.SCORED and result.model_version == "1"
    assert server.counts() == (0, 1)
    assert "cannot be loaded" in server.refused["2"]
    # Promoting a good version afterwards still works.
    registry.promote(MODEL_NAME, "3", reason="gate passed")
    server.watcher.check()
    assert server.score([image()])[0].model_version == "3"


def test_metadata_at_odds_with_the_tensors_is_refused(registry, tmp_path):
    wrong = register(registry, tmp_path / "wrong", build_small_model((32, 32, 1)))
    server = serve(registry.root, MODEL_NAME, poll_s=3600)
    registry.promote(MODEL_NAME, wrong.version, reason="manual")
    server.watcher.check()
    assert server.score([image()])[0].model_version == "1"
    assert "input shape" in server.refused[wrong.version]


def test_a_restart_with_broken_production_serves_last_known_good(registry):
    registry.promote(MODEL_NAME, "2", reason="gate passed")
    load_for_serving(registry, MODEL_NAME)  # the serving path loaded 2: last known good
    registry.promote(MODEL_NAME, "3", reason="gate passed")
    break_model_file(registry, "3")
    loaded, refused = load_for_serving(registry, MODEL_NAME)
    assert loaded.metadata.version == "2" and refused == "3"
    server = serve(registry.root, MODEL_NAME, poll_s=3600)
    server.watcher.check()  # production is still the broken 3: not retried
    assert server.version == "2" and "3" in server.refused


def test_no_fallback_means_the_refusal_is_raised(registry):
    break_model_file(registry, "2")
    registry.promote(MODEL_NAME, "2", reason="manual")
    registry.set_pointer(MODEL_NAME, "2", LAST_KNOWN_GOOD)
    with pytest.raises(ModelRefused):
        load_for_serving(registry, MODEL_NAME)


def test_a_pinned_version_is_not_watched(registry):
    server = serve(registry.root, MODEL_NAME, version="3")
    assert server.watcher is None and server.version == "3"


def test_watcher_thread_swaps_within_its_poll_interval(registry):
    server = serve(registry.root, MODEL_NAME, poll_s=0.05)
    try:
        registry.promote(MODEL_NAME, "2", reason="gate passed")
        deadline = time.monotonic() + 30
        while server.offered_version() != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.score([image()])[0].model_version == "2"
    finally:
        server.watcher.stop()


def test_status_and_pointers_are_plain_json(registry):
    registry.set_status(MODEL_NAME, "3", REJECTED, reason="sensitivity 0.91 < 0.95",
                        metrics={"auc": 0.9})
    with open(f"{registry.root}/{MODEL_NAME}/3/status.json") as handle:
        assert json.load(handle)["metrics"] == {"auc": 0.9}


def test_a_decision_is_recorded_only_against_the_production_it_was_judged_against(registry):
    from batch_training.promotion import GateDecision, record_decision  # noqa: PLC0415

    judged = GateDecision(MODEL_NAME, "3", True, "better", {"auc": 0.9}, production_version="1")
    registry.promote(MODEL_NAME, "2", reason="an operator, meanwhile")
    with pytest.raises(ValueError, match="production moved from 1 to 2"):
        record_decision(registry.root, judged)
    assert registry.production(MODEL_NAME) == "2"
    record_decision(registry.root, GateDecision(MODEL_NAME, "3", True, "better", {"auc": 0.9},
                                                production_version="2"))
    assert registry.production(MODEL_NAME) == "3"


# -- the watcher never dies, retries what may be transient, and counts once per process ----

def write_text(registry: ModelRegistry, relative: str, text: str) -> None:
    with open(f"{registry.root}/{MODEL_NAME}/{relative}", "w") as handle:
        handle.write(text)


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.fixture
def fresh_events():
    take_model_events()  # what earlier tests left in this process's tally
    yield


@pytest.mark.parametrize("breakage", [
    ("production.json", '{"reason": "a pointer without a version"}'),  # KeyError
    ("production.json", "{not json"),                                  # ValueError
    ("2/metadata.json", '{"schema_version": 99}'),                     # metadata from the future
])
def test_the_watcher_survives_a_broken_registry_and_swaps_once_it_is_mended(registry,
                                                                           fresh_events,
                                                                           breakage):
    server = serve(registry.root, MODEL_NAME, poll_s=0.02)
    try:
        if breakage[0].startswith("2/"):
            registry.promote(MODEL_NAME, "2", reason="gate passed")
        write_text(registry, *breakage)
        watcher = server.watcher
        assert wait_until(lambda: watcher.errors >= 2 or "2" in watcher.refused)
        assert watcher.alive and running_watchers() >= 1
        write_text(registry, "production.json", json.dumps({"version": "3", "reason": "mended"}))
        assert wait_until(lambda: server.offered_version() == "3")
        assert server.score([image()])[0].model_version == "3"
    finally:
        server.watcher.stop()
    events = take_model_events()
    assert events.get("watch_error", 0) + events.get("refused", 0) >= 1
    assert events["swapped"] == 1


def test_a_version_that_failed_for_a_transient_reason_is_tried_again(registry, fresh_events,
                                                                     tmp_path):
    server = serve(registry.root, MODEL_NAME, poll_s=3600)
    watcher = server.watcher
    watcher._refusal_retry_s = 0.05  # noqa: SLF001 - a short backoff, as a test can wait
    metadata_path = f"{registry.root}/{MODEL_NAME}/2/metadata.json"
    saved = tmp_path / "metadata.json"
    saved.write_bytes(open(metadata_path, "rb").read())
    registry.promote(MODEL_NAME, "2", reason="gate passed")
    write_text(registry, "2/metadata.json", "")  # a read that failed half-way (empty object)
    watcher.check()
    assert "2" in server.refused and server.score([image()])[0].model_version == "1"
    with open(metadata_path, "wb") as handle:
        handle.write(saved.read_bytes())  # the store recovers; the pointer never moved
    time.sleep(0.1)
    watcher.check()
    assert server.score([image()])[0].model_version == "2"
    assert "2" not in server.refused
    assert take_model_events() == {"refused": 1, "swapped": 1}


def test_a_stopped_watcher_is_visible_as_a_gauge_and_in_the_log(registry, caplog,
                                                                 monkeypatch):
    from prometheus_client import REGISTRY  # noqa: PLC0415

    server = serve(registry.root, MODEL_NAME, poll_s=0.02)
    watcher = server.watcher

    def interrupted():
        raise SystemExit("the interpreter is going away")  # what `except Exception` misses

    monkeypatch.setattr(watcher, "check", interrupted)
    assert wait_until(lambda: not watcher.alive)
    assert any("model watcher stopped" in record.getMessage() for record in caplog.records)
    assert wait_until(lambda: REGISTRY.get_sample_value("medimg_model_watchers_running")
                      == running_watchers())
    assert not watcher.alive


def test_one_watcher_per_process_loads_marks_and_counts_each_swap_once(registry, fresh_events,
                                                                       monkeypatch):
    from streaming.modeling import serving  # noqa: PLC0415

    first = serve(registry.root, MODEL_NAME, poll_s=3600)
    second = serve(registry.root, MODEL_NAME, poll_s=3600)  # another RunInference instance
    assert first.watcher is second.watcher
    loads, marks = [], []
    real_load, real_mark = serving.load_model, serving.mark_last_known_good
    monkeypatch.setattr(serving, "load_model",
                        lambda *args: loads.append(args[2]) or real_load(*args))
    monkeypatch.setattr(serving, "mark_last_known_good",
                        lambda reg, loaded: marks.append(loaded.metadata.version)
                        or real_mark(reg, loaded))
    registry.promote(MODEL_NAME, "2", reason="gate passed")
    first.watcher.check()
    # Recorded once, by the watcher, before any batch (outside every scoring lock).
    assert registry.pointer(MODEL_NAME, LAST_KNOWN_GOOD) == "2"
    assert {first.score([image()])[0].model_version,
            second.score([image()])[0].model_version} == {"2"}
    assert loads == ["2"] and marks == ["2"]
    assert take_model_events() == {"swapped": 1}
    first.watcher.stop()
