"""Generates dashboard.json, the medimg Grafana dashboard, with grafana-foundation-sdk.

    python deploy/monitoring/dashboard.py > deploy/monitoring/dashboard.json

Queries read the recording rules in rules/recording.yml where one exists, so the
dashboard and the alerts agree on what "rate" and "p99" mean. unit_tests/
test_monitoring.py checks that dashboard.json is this script's output;
integration_tests/test_monitoring.py runs every query against a real Prometheus.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def query(expr: str, legend: str = "") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend or "__auto")


def timeseries(title: str, unit: str, *queries: Dataquery, description: str = "") -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).span(12).height(8)
    for target in queries:
        panel = panel.with_target(target)
    return panel.description(description) if description else panel


def build_dashboard() -> Dashboard:
    return (
        Dashboard("medimg streaming job")
        .uid("medimg-streaming")
        .tags(["medimg", "generated"])
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))

        .with_row(Row("Throughput and latency"))
        .with_panel(timeseries(
            "Throughput: events in, outcomes out", "ops",
            query("stream:kafka_topic_partition_current_offset:rate5m", "{{stream}} (topics)"),
            query("sum by (kind) (job_kind:medimg_published:rate5m)", "{{kind}} acknowledged"),
            description="Events written to the events topic and outcomes acknowledged by the "
                        "broker, per second. Outcomes below events for long means a backlog."))
        .with_panel(timeseries(
            "Findings by status", "ops",
            query("sum by (status) (job_status:medimg_findings:rate5m)", "{{status}}")))
        .with_panel(timeseries(
            "End-to-end latency (sent_at to acknowledged)", "s",
            query('max(job_kind:medimg_end_to_end_latency_seconds:p50_rate5m{kind="finding"})',
                  "p50"),
            query('max(job_kind:medimg_end_to_end_latency_seconds:p90_rate5m{kind="finding"})',
                  "p90"),
            query('max(job_kind:medimg_end_to_end_latency_seconds:p99_rate5m{kind="finding"})',
                  "p99"),
            description="Alert MedimgLatencyP99High at p99 over 10 s for 10 minutes."))
        .with_panel(timeseries(
            "Consumer lag by partition", "short",
            query("sum by (partition) (medimg_consumer_lag_records)", "partition {{partition}}"),
            description="Events in Kafka the job has not read yet."))

        .with_row(Row("Dead letters and decoding"))
        .with_panel(timeseries(
            "Dead letters by reason", "ops",
            query("sum by (reason) (job_reason:medimg_dead_letters:rate5m)", "{{reason}}")))
        .with_panel(timeseries(
            "Decode failures by reason (load stage)", "ops",
            query("sum by (reason) (job_reason:medimg_decode_failures:rate5m)", "{{reason}}")))

        .with_row(Row("Model"))
        .with_panel(Table().title("Model version in service").datasource(DATASOURCE)
                    .span(8).height(6)
                    .with_target(query("max by (model, version) (medimg_model_serving_info)")
                                 .instant()))
        .with_panel(timeseries(
            "Model swaps, refusals and watcher errors", "short",
            query("sum by (event) (increase(medimg_model_total[$__rate_interval]))", "{{event}}")))
        .with_panel(Stat().title("Model watchers running").datasource(DATASOURCE)
                    .span(4).height(6)
                    .with_target(query("sum(medimg_model_watchers_running)", "watchers")))
        .with_panel(timeseries(
            "Inference batch size and duration (p50, p99)", "short",
            query("histogram_quantile(0.5, sum by (le) "
                  "(rate(medimg_inference_batch_size_bucket[$__rate_interval])))", "size p50"),
            query("histogram_quantile(0.99, sum by (le) "
                  "(rate(medimg_inference_batch_duration_seconds_bucket[$__rate_interval])))",
                  "duration p99 (s)")))

        .with_row(Row("Delivery and dependencies"))
        .with_panel(timeseries(
            "Dedup outcomes", "ops",
            query("sum by (result) (job_result:medimg_dedup:rate5m)", "{{result}}")))
        .with_panel(timeseries(
            "Reachability (1 = answering)", "short",
            query('min(up{job="medimg-stream"})', "job scraped"),
            query("min(medimg_broker_reachable)", "Kafka brokers"),
            query("min(medimg_dedup_store_reachable)", "Redis dedup store")))
    )


def with_panel_ids(dashboard):
    """Unique panel ids (rows included), in order: Grafana links and edits panels by id."""
    for number, panel in enumerate(dashboard.panels, start=1):
        panel.id_val = number
    return dashboard


if __name__ == "__main__":
    register_default_plugins()
    print(JSONEncoder(sort_keys=True, indent=2).encode(with_panel_ids(build_dashboard().build())))
