"""The job's metric helpers: Prometheus names and units, the same names as Beam metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from streaming.runtime import metrics


def _page() -> str:
    return generate_latest(REGISTRY).decode()


def test_gauges_histograms_and_the_model_info_reach_the_prometheus_page():
    metrics.gauge("consumer_lag_records", 7, "2")
    metrics.gauge("broker_reachable", 1)
    metrics.observe("end_to_end_latency_seconds", 0.3, "finding")
    metrics.observe("inference_batch_size", 16)
    metrics.model_in_service("pneumonia-cnn", "3")
    metrics.model_in_service("pneumonia-cnn", "4")  # a swap: only the new version is in service
    page = _page()

    assert 'medimg_consumer_lag_records{partition="2"} 7.0' in page
    assert "medimg_broker_reachable 1.0" in page
    assert 'medimg_end_to_end_latency_seconds_bucket{kind="finding",le="0.5"}' in page
    assert 'medimg_inference_batch_size_bucket{le="16.0"}' in page
    assert 'medimg_model_serving_info{model="pneumonia-cnn",version="4"} 1.0' in page
    assert 'version="3"' not in page


def test_model_changes_are_on_the_page_at_zero_before_any_happens():
    metrics.count("model", "swapped", 0)  # nothing counted yet...
    metrics._prometheus("model")          # ...but the counter exists once the page is served
    page = _page()
    assert 'medimg_model_total{event="swapped"} 0.0' in page
    assert 'medimg_model_total{event="refused"} 0.0' in page
