"""``make bench``: what the streaming job costs against the model alone, on this machine.

For two models, the default compact CNN at 28x28 (what ``medimg train`` and the demo
produce) and a ResNet-50 at 224x224, measured in one run on the same machine:

1. raw predict: Keras ``predict_on_batch`` on preprocessed batches at the serving
   batch size (images/s), in this process, before the job starts;
2. end to end: the real job on the embedded broker; events published as fast as the
   publisher can, throughput = events / (first publish -> last finding);
3. latency: events offered at half that throughput for a fixed time; p50/p99 of the
   findings' ``latency_ms`` (published -> finding emitted);
   hot swap (default model): under the same load a new version is promoted;
   ``hot_swap_s`` = promotion -> first finding by the new version;
4. decode: our DICOM loader against plain pydicom on the real scanner files.

Prints the ratios and writes bench/results/stream.json. Targets (issue 2): end to
end / raw >= 0.8 for both models, p99 <= 500 ms for the default model, decode >= 0.9
of plain pydicom. The figures are reported whether or not they meet the targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from streaming.runtime import logs
from streaming.local.broker import EmbeddedBroker
from streaming.local import phantoms
from streaming.imaging.preprocessing import PreprocessingSpec
from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.local.local_job import LocalJob, job_arguments
from streaming.tools.modality import event_for_file, publish_events, restamp
from streaming.modeling.metadata import utc_now
from streaming.modeling.registry import ModelRegistry
from streaming.kafka.outcomes import OutcomeLog

RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"
MODEL_NAME = "bench-model"


@dataclasses.dataclass(frozen=True)
class BenchModel:
    key: str
    architecture: str
    spec: PreprocessingSpec
    batch_size: int
    e2e_events: int        # events for the throughput run
    latency_seconds: float  # how long the fixed load is offered


MODELS = (
    BenchModel("default", "compact_cnn", PreprocessingSpec(28, 28, 1), 64, 3000, 20.0),
    BenchModel("resnet50_224", "resnet50", PreprocessingSpec(224, 224, 3), 16, 240, 30.0),
)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def register_model(registry: ModelRegistry, bench: BenchModel, workdir: Path,
                   name: str | None = None, promote: bool = True, tag: str = "serve"):
    """The architecture with untrained weights: throughput does not depend on the weights."""
    from batch_training.models import build_model  # noqa: PLC0415
    model = build_model(bench.architecture, bench.spec.input_shape, 2)
    staging = workdir / f"staging-{bench.key}-{tag}"
    staging.mkdir()
    model.save(staging / "model.keras")
    record = registry.register(staging, {
        "schema_version": 1, "name": name or f"{MODEL_NAME}-{bench.key.replace('_', '-')}",
        "classes": ["normal", "lesion"], "positive_class": "lesion", "threshold": 0.5,
        "urgent_threshold": 0.9, "preprocessing": bench.spec.to_dict(),
        "applicability": {"modalities": ["CR", "DX"]}, "created_at": utc_now()})
    if promote:
        registry.promote(record.name, record.version, reason="benchmark")
    return model, record


def raw_predict_rate(model, bench: BenchModel, seconds: float = 8.0) -> float:
    batch = np.random.default_rng(0).random((bench.batch_size, *bench.spec.input_shape),
                                            dtype=np.float32)
    for _ in range(3):
        model.predict_on_batch(batch)  # compile and warm up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_on_batch(batch)
        done += bench.batch_size
    return done / (time.perf_counter() - started)


def study_events(workdir: Path):
    cases = phantoms.generate_study_set(workdir / "studies", 24, seed=21, size=128)
    return [event_for_file(c.path, sender="BENCH") for c in cases if c.modality != "CT"]


def run_job(broker, registry_root: Path, record, bench: BenchModel, workdir: Path, tag: str):
    suffix = f"{bench.key}-{tag}".replace("_", "-")
    topics = {"events": f"events-{suffix}", "findings": f"findings-{suffix}",
              "dead_letters": f"dead-{suffix}"}
    job = LocalJob(job_arguments(
        broker.bootstrap_servers, **topics, consumer_group=f"bench-{suffix}",
        model_registry=registry_root, model_name=record.name, allowed_roots=workdir,
        extra=("--max_batch_size", str(bench.batch_size))),
        log_path=workdir / f"job-{suffix}.log").start()
    return job, topics


def measure_stream(broker, config: KafkaConfig, registry_root: Path, record, bench: BenchModel,
                   corpus, workdir: Path, console: Console, hot_swap: bool = False) -> dict:
    job, topics = run_job(broker, registry_root, record, bench, workdir, "e2e")
    try:
        ensure_topics(config, {t: 3 for t in topics.values()})
        with OutcomeLog(config, topics["findings"], topics["dead_letters"]) as log:
            # Warm up: the job is ready once a few findings came back.
            warmup = [restamp(e) for e in corpus[:8]]
            publish_events(config, topics["events"], warmup)
            if not log.wait_for([e.event_id for e in warmup], 300):
                raise RuntimeError(f"job did not start; see {job.log_path}")

            events = [restamp(corpus[i % len(corpus)]) for i in range(bench.e2e_events)]
            console.print(f"  {bench.key}: publishing {len(events)} events as fast as possible")
            started = time.time()
            publisher = threading.Thread(target=publish_events,
                                         args=(config, topics["events"], events))
            publisher.start()
            if not log.wait_for([e.event_id for e in events], 900):
                raise RuntimeError(f"events missing after 900 s; see {job.log_path}")
            finished = max(o.received_at for o in log.outcomes)
            publisher.join()
            e2e_rate = len(events) / (finished - started)

            offered = e2e_rate / 2
            count = max(int(offered * bench.latency_seconds), 20)
            console.print(f"  {bench.key}: offering {offered:.1f} events/s for "
                          f"{count / offered:.0f} s")
            steady = [restamp(corpus[i % len(corpus)]) for i in range(count)]
            publish_events(config, topics["events"], steady, rate_per_s=offered)
            if not log.wait_for([e.event_id for e in steady], 600):
                raise RuntimeError(f"events missing at fixed load; see {job.log_path}")
            wanted = {e.event_id for e in steady}
            latencies = [o.document["latency_ms"] for o in log.outcomes
                         if o.event_id in wanted and o.kind == "finding"]
            swap = measure_hot_swap(config, topics, log, registry_root, record, bench, corpus,
                                    offered, workdir, console) if hot_swap else {}
        idle_cpu = idle_cpu_share(job)
    finally:
        job.stop()
    return {"e2e_events_per_s": e2e_rate, "offered_load_eps": offered,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99), "latency_samples": len(latencies),
            "idle_cpu_share": idle_cpu, **swap}


def measure_hot_swap(config: KafkaConfig, topics: dict, log: OutcomeLog, registry_root: Path,
                     record, bench: BenchModel, corpus, offered: float, workdir: Path,
                     console: Console) -> dict:
    """Promote a new version under load: seconds until its first finding, and accounting."""
    registry = ModelRegistry(str(registry_root))
    _model, candidate = register_model(registry, bench, workdir, name=record.name,
                                       promote=False, tag="swap")
    seconds = 20.0
    events = [restamp(corpus[i % len(corpus)]) for i in range(int(offered * seconds))]
    console.print(f"  {bench.key}: promoting version {candidate.version} while offering "
                  f"{offered:.1f} events/s")
    publisher = threading.Thread(target=publish_events, args=(config, topics["events"], events),
                                 kwargs={"rate_per_s": offered})
    publisher.start()
    time.sleep(seconds / 4)
    promoted_at = time.time()
    registry.promote(record.name, candidate.version, reason="benchmark hot swap")
    publisher.join()
    if not log.wait_for([e.event_id for e in events], 600):
        raise RuntimeError("events missing during the hot swap")
    log.drain(quiet_s=2)
    wanted = {e.event_id for e in events}
    swapped = [o for o in log.outcomes if o.event_id in wanted and o.kind == "finding"
               and o.document["model"]["version"] == candidate.version]
    first = min(parse_time(o.document["emitted_at"]) for o in swapped)
    return {"hot_swap_s": first - promoted_at, "hot_swap_events": len(events),
            "hot_swap_lost": len(wanted - set(log.by_event)),
            "hot_swap_duplicated": sum(1 for e in wanted if len(log.by_event.get(e, [])) > 1)}


def parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def idle_cpu_share(job: LocalJob, seconds: float = 10.0) -> float:
    """CPU the job burns while no event arrives, as a share of one core."""
    before, started = job.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (job.cpu_seconds() - before) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(m.key for m in MODELS),
                        help="which models to measure (default: all)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The table is the output; client reconnect chatter during outages would bury it.
    logs.configure("ERROR")
    console = Console(width=150)  # the table is the point; do not squeeze it
    chosen = [m for m in MODELS if m.key in args.models.split(",")]
    results: dict = {"machine": {"cpus": os.cpu_count()}, "created_at": utc_now()}

    from bench.decode_bench import run_decode_benchmark  # noqa: PLC0415
    console.print("decode: our loader vs plain pydicom on the real scanner files")
    decode = run_decode_benchmark()
    results["decode_over_pydicom_ratio"] = decode["decode_over_pydicom_ratio"]
    results["decode"] = decode

    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp, \
            EmbeddedBroker(log_path=str(Path(tmp) / "broker.log")) as broker:
        workdir = Path(tmp)
        config = KafkaConfig(broker.bootstrap_servers, client_id="medimg-bench")
        registry_root = workdir / "registry"
        registry = ModelRegistry(str(registry_root))
        corpus = study_events(workdir)
        for bench in chosen:
            model, record = register_model(registry, bench, workdir)
            console.print(f"{bench.key}: raw predict at batch {bench.batch_size}")
            raw = raw_predict_rate(model, bench)
            stream = measure_stream(broker, config, registry_root, record, bench, corpus,
                                    workdir, console, hot_swap=bench.key == "default")
            entry = {"input_shape": list(bench.spec.input_shape), "batch_size": bench.batch_size,
                     "raw_images_per_s": raw, **stream,
                     "e2e_over_raw_ratio": stream["e2e_events_per_s"] / raw}
            if bench.key == "default":
                results.update(entry)
            else:
                results[bench.key] = entry

    report(console, results, chosen)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.output}")
    return 0


def report(console: Console, results: dict, chosen) -> None:
    table = Table(title="streaming benchmark (targets from issue 2)")
    for column in ("model", "input", "batch", "raw img/s", "e2e ev/s", "e2e/raw (>=0.8)",
                   "offered ev/s", "p50 ms", "p99 ms", "idle CPU"):
        table.add_column(column)
    for bench in chosen:
        entry = results if bench.key == "default" else results[bench.key]
        table.add_row(bench.key, "x".join(map(str, entry["input_shape"])),
                      str(entry["batch_size"]), f"{entry['raw_images_per_s']:.1f}",
                      f"{entry['e2e_events_per_s']:.1f}", f"{entry['e2e_over_raw_ratio']:.2f}",
                      f"{entry['offered_load_eps']:.1f}", f"{entry['latency_p50_ms']:.0f}",
                      f"{entry['latency_p99_ms']:.0f}" + (" (<=500)" if bench.key == "default"
                                                          else ""),
                      f"{entry['idle_cpu_share']:.1%}")
    console.print(table)
    decode = results["decode"]
    if "hot_swap_s" in results:
        console.print(f"hot swap under {results['offered_load_eps']:.0f} events/s: first finding "
                      f"of the promoted version {results['hot_swap_s']:.1f} s after promotion "
                      f"(target <= 10 s); {results['hot_swap_events']} events, "
                      f"{results['hot_swap_lost']} lost, {results['hot_swap_duplicated']} "
                      "duplicated")
    console.print(f"decode: {decode['decode_images_per_s']:.1f} img/s vs plain pydicom "
                  f"{decode['pydicom_images_per_s']:.1f} img/s -> ratio "
                  f"{results['decode_over_pydicom_ratio']:.2f} (target >= 0.9) over "
                  f"{decode['files']} files")


if __name__ == "__main__":
    raise SystemExit(main())
