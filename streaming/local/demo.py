"""``medimg demo``: the whole product on one laptop, offline, in about a minute.

1. Writes synthetic DICOM studies with known truth (chest phantoms with and without
   a lesion, in several encodings, plus CT studies the chest model does not cover).
2. Trains a bootstrap model into the demo's own registry if it has none, so a
   phantom model never serves real studies.
3. Starts the embedded broker, the streaming job and the DICOM gateway, sends the
   studies to the gateway with C-STORE as a modality would (dcmtk's storescu where
   installed, else pynetdicom), publishes a few broken events as a misbehaving sender
   would, and shows outcomes as they arrive.
4. Prints a summary (findings, dead letters, accuracy against the truth, latency)
   and stops everything it started.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from streaming.local.broker import EmbeddedBroker
from streaming.local import phantoms
from streaming.contracts.events import ImageEvent, new_event, parse_event
from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.kafka.reading import read_topic
from streaming.local.local_gateway import LocalGateway
from streaming.local.local_job import LocalJob, job_arguments
from streaming.tools.dicom_send import send_files, storescu_available
from streaming.tools.modality import publish_raw
from streaming.modeling.registry import ModelRegistry
from streaming.kafka.outcomes import OutcomeLog

DEMO_MODEL = "phantom-lesion-cnn"
TOPICS = {"events": "image-events", "findings": "findings", "dead_letters": "dead-letters"}
SENDER = "DEMO_CR_ROOM"
STUDY_IMAGE_SIZE = 128
PUBLISH_RATE = 8.0  # events per second, like a busy radiology department


class DemoError(RuntimeError):
    """The demo could not complete; the message says what to look at."""


def bootstrap_model(registry_root: Path, workdir: Path, *, seed: int, progress: bool = True,
                    n_train: int = 480, n_val: int = 160, epochs: int = 8):
    """The demo's model: trained on phantoms once, then reused from the registry."""
    registry = ModelRegistry(str(registry_root))
    version = registry.production(DEMO_MODEL)
    if version:
        return registry.metadata(DEMO_MODEL, version)
    from batch_training.train import TrainingConfig, train_and_register  # noqa: PLC0415
    # Rendered at the studies' size and resized by the model's preprocessing, as served.
    data = phantoms.write_phantom_npz(workdir / "phantom_training.npz", n_train, n_val,
                                      size=STUDY_IMAGE_SIZE, seed=seed)
    # No augmentation: phantoms already vary the lesion; small sets learn better without.
    config = TrainingConfig(data=str(data), model_registry=str(registry_root),
                            model_name=DEMO_MODEL, height=64, width=64, epochs=epochs,
                            batch_size=32, augmentation=False,
                            modalities=("CR", "DX"), body_parts=("CHEST",), seed=seed,
                            promote="if_none")
    return train_and_register(config, progress=progress)


def broken_events(studies: Path, sample: Path) -> list[tuple[bytes, str]]:
    """(payload, expected dead-letter reason): what a misbehaving sender might publish."""
    not_dicom = studies / "notes.dcm"
    not_dicom.write_text("report pending, not an image\n")
    truncated = studies / "truncated.dcm"
    truncated.write_bytes(sample.read_bytes()[:600])
    uids = dict(study_instance_uid="1.2.826.0.1.3680043.10.1234.1",
                series_instance_uid="1.2.826.0.1.3680043.10.1234.1.1",
                sop_instance_uid="1.2.826.0.1.3680043.10.1234.1.1.1")

    def event(uri: str) -> bytes:
        return new_event(**uids, modality="CR", uri=uri, content_type="application/dicom",
                         sender=SENDER).to_json()

    return [
        (b'{"schema_version": 1, "event_id": "oops"', "invalid_json"),
        (event("/etc/hostname"), "uri_not_allowed"),
        (event(str(studies / "missing.dcm")), "unreadable_uri"),
        (event(str(not_dicom)), "not_an_image"),
        (event(str(truncated)), "not_an_image"),
    ]


def run_demo(workdir: str = ".medimg-demo", studies: int = 24, seed: int = 7,
             keep_running: bool = False, console: Console | None = None) -> int:
    console = console or Console()
    workdir = Path(workdir).resolve()
    studies_dir = workdir / "studies"
    registry_root = workdir / "registry"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]medimg demo[/bold]")
    if studies_dir.exists():
        shutil.rmtree(studies_dir)
    cases = phantoms.generate_study_set(studies_dir, studies, seed=seed, size=STUDY_IMAGE_SIZE)
    console.print(f"[green]✓[/green] wrote {len(cases)} synthetic DICOM images in {studies} "
                  f"studies to {studies_dir}")
    model = bootstrap_model(registry_root, workdir, seed=seed)
    console.print(f"[green]✓[/green] model {model.model_id} (validation AUC "
                  f"{model.extra.get('metrics', {}).get('val_auc', float('nan')):.3f}) "
                  f"in {registry_root}")

    received_dir = workdir / "received"
    broker = EmbeddedBroker(log_path=str(logs / "broker.log")).start()
    config = KafkaConfig(broker.bootstrap_servers, client_id="medimg-demo")
    job = gateway = None
    try:
        console.print(f"[green]✓[/green] embedded Kafka-compatible broker on "
                      f"{broker.bootstrap_servers}")
        ensure_topics(config, {topic: 3 for topic in TOPICS.values()})
        job = LocalJob(job_arguments(
            broker.bootstrap_servers, **TOPICS, consumer_group=f"medimg-demo-{int(time.time())}",
            model_registry=registry_root, model_name=DEMO_MODEL,
            allowed_roots=f"{studies_dir},{received_dir}",
            extra=("--max_batch_size", "16")), log_path=logs / "job.log").start()
        gateway = LocalGateway(bootstrap_servers=broker.bootstrap_servers,
                               events_topic=TOPICS["events"], storage_root=received_dir,
                               allowed_callers=SENDER, log_path=logs / "gateway.log").start()
        console.print(f"[green]✓[/green] DICOM gateway {gateway.ae_title} on "
                      f"127.0.0.1:{gateway.port}, storing to {received_dir}")
        outcome = _stream(console, config, job, gateway, cases, studies_dir)
        if keep_running:
            console.print("The job keeps running; Ctrl-C stops it.")
            job.process.wait()
    finally:
        if gateway is not None:
            gateway.stop()
        if job is not None:
            job.stop()
        broker.stop()
    console.print(f"Stopped the gateway, the job and the broker. Logs: {logs}")
    return outcome


def _stream(console: Console, config: KafkaConfig, job: LocalJob, gateway: LocalGateway,
            cases, studies_dir: Path) -> int:
    case_by_sop = {case.sop_instance_uid: case for case in cases}
    broken = broken_events(studies_dir, cases[0].path)
    sender = "dcmtk storescu" if storescu_available() else "pynetdicom"

    with OutcomeLog(config, TOPICS["findings"], TOPICS["dead_letters"]) as log:
        with console.status("starting the streaming job (Beam, Keras, model)…"):
            _send(gateway, cases[:1])
            first = _announced(config)
            started = time.monotonic()
            while not log.settled([first[0].event_id]):
                log.poll()
                if not job.running():
                    raise DemoError(f"the streaming job exited early:\n{job.log_tail()}")
                if time.monotonic() - started > 180:
                    raise DemoError(f"no finding after 180 s; see {job.log_path}")
        console.print(f"[green]✓[/green] streaming job up (first finding after "
                      f"{time.monotonic() - started:.1f} s); sending the studies to the "
                      f"gateway with {sender}")

        total = len(cases) + len(broken)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), console=console) as progress:
            task = progress.add_task("findings and dead letters", total=total)
            progress.update(task, completed=1)
            _send(gateway, cases[1:], on_sent=lambda _sent: _advance(log, progress, task))
            # The gateway answered success only once each event was acknowledged, so
            # every one is on the topic now: read back the event_ids it gave them.
            events = _announced(config)
            publish_raw(config, TOPICS["events"], [payload for payload, _ in broken],
                        key=b"demo-broken")
            truth = {e.event_id: case_by_sop[e.sop_instance_uid] for e in events}
            arrived = log.wait_for(list(truth), timeout_s=120,
                                   on_outcome=lambda _o: progress.update(
                                       task, completed=len(log.outcomes)),
                                   extra_dead_letters=1)
            progress.update(task, completed=len(log.outcomes))
        log.drain(quiet_s=1.0)
        return _summarise(console, log, truth, broken, arrived, total,
                          startup_event_id=first[0].event_id)


def _send(gateway: LocalGateway, cases, on_sent=None) -> None:
    sent = send_files([case.path for case in cases], host="127.0.0.1", port=gateway.port,
                      called_ae=gateway.ae_title, calling_ae=SENDER, on_sent=on_sent)
    refused = [s for s in sent if not s.ok]
    if refused:
        raise DemoError(f"the gateway refused {len(refused)} of {len(sent)} images; see "
                        f"{gateway.log_path}")


def _announced(config: KafkaConfig) -> list[ImageEvent]:
    """The gateway's events on the events topic so far (the demo's only sender)."""
    return [parse_event(record.value) for record in read_topic(config, TOPICS["events"])]


def _advance(log: OutcomeLog, progress: Progress, task) -> None:
    log.poll(timeout_ms=0)
    progress.update(task, completed=len(log.outcomes))


def _summarise(console: Console, log: OutcomeLog, truth: dict, broken, arrived: bool,
               total: int, startup_event_id: str) -> int:
    findings = [o for o in log.outcomes if o.kind == "finding"]
    dead_letters = [o for o in log.outcomes if o.kind == "dead_letter"]
    status = Counter(o.document["status"] for o in findings)
    scored = [o for o in findings if o.event_id in truth and truth[o.event_id].expected_label]
    correct = sum(o.document["label"] == truth[o.event_id].expected_label for o in scored)
    wrongly_scored = sum(1 for o in findings if o.event_id in truth
                         and truth[o.event_id].expected_label is None
                         and o.document["status"] == "scored")
    # The first event waited for the job to start (Beam, Keras, the model): its latency
    # is start-up time, reported above, not what a running job's readers see.
    latencies = sorted(o.document["latency_ms"] for o in findings
                       if o.event_id != startup_event_id)
    reasons = Counter(o.document["reason"] for o in dead_letters)
    expected_reasons = Counter(reason for _, reason in broken)

    table = Table(title="demo summary", show_header=False)
    table.add_row("events (gateway + broken)", str(total))
    table.add_row("findings", f"{len(findings)} ({status['scored']} scored, "
                              f"{status['not_applicable']} not applicable)")
    table.add_row("dead letters", ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
                  or "0")
    table.add_row("accuracy vs ground truth",
                  f"{correct}/{len(scored)} = {correct / max(len(scored), 1):.1%}")
    table.add_row("CT scored by the chest model", str(wrongly_scored))
    table.add_row("urgent findings", str(sum(o.document["urgent"] for o in findings)))
    if latencies:
        table.add_row("latency p50 / p99 (job running)",
                      f"{statistics.median(latencies):.0f} ms / "
                      f"{latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]:.0f} ms")
    duplicates = log.duplicates()
    table.add_row("events without outcome", str(total - len(log.outcomes) if not arrived
                                                else 0))
    table.add_row("duplicated outcomes", str(len(duplicates)))
    console.print(table)
    ok = arrived and not duplicates and reasons == expected_reasons and wrongly_scored == 0
    if ok:
        console.print("[bold green]Every event got exactly one finding or dead letter.[/bold green]")
    else:
        console.print("[bold red]Some events are missing, duplicated or misrouted; "
                      "see the job log.[/bold red]")
        console.print(json.dumps({"expected_reasons": expected_reasons, "reasons": reasons},
                                 default=dict))
    return 0 if ok else 1
