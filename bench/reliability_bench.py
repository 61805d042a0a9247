"""``make bench-reliability``: the job under crashes, a broker outage and hostile input.

In one run, on the embedded broker with a real Redis server:

- crash: events in waves while the job is SIGKILLed three times and restarted; the
  same scenario without Redis shows what deduplication prevents;
- outage: the broker frozen (SIGSTOP) for 30 s while events keep arriving; the job's
  CPU seconds during the outage and the time from the broker answering again to the
  first new finding;
- retry: every third sink bundle fails after claiming and runs again in the same
  process, as a runner retries it; takeover: the job SIGKILLs itself between the
  broker's ack and marking its claims done, and a new worker takes them over;
- hostile input: at least 1000 bad inputs across at least 12 classes, interleaved
  with good events, each expected to end as a dead letter with its reason;
- PHI: canary values written into copies of real DICOM files; every output, log and
  the metrics endpoint are searched for them;
- multi_process: two jobs started on one consumer group while events flow, then the
  running one SIGKILLed twice, each time restarted as two copies: one job may run on a
  group, every other start must be refused (the group's lease).

Counts come from reading the topics (``streaming.tools.reconcile``), not from the job.
Prints one table and writes bench/results/reliability.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from scenarios.delivery import (Topics, run_crash_scenario, run_multi_process_scenario,
                                                  run_outage_scenario, run_replay_scenario)
from scenarios.redis_server import RedisServer
from streaming.runtime import logs
from streaming.local.broker import EmbeddedBroker, free_port
from streaming.local import phantoms
from streaming.local.demo import DEMO_MODEL, STUDY_IMAGE_SIZE, bootstrap_model
from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.local.local_job import LocalJob, job_arguments
from streaming.tools.modality import event_for_file
from streaming.modeling.metadata import utc_now

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"


class Bench:
    """The shared parts: broker, Redis, a phantom model, and jobs on fresh topics."""

    def __init__(self, workdir: Path, broker: EmbeddedBroker, redis_server: RedisServer):
        self.workdir = workdir
        self.broker = broker
        self.redis = redis_server
        self.kafka = KafkaConfig(broker.bootstrap_servers, client_id="medimg-reliability")
        self.registry = workdir / "registry"
        bootstrap_model(self.registry, workdir, seed=11, progress=False)
        cases = phantoms.generate_study_set(workdir / "studies", 8, seed=17,
                                            size=STUDY_IMAGE_SIZE)
        self.images = [event_for_file(c.path, sender="BENCH") for c in cases]
        self._jobs = 0

    def topics(self, name: str) -> Topics:
        topics = Topics(f"events-{name}", f"findings-{name}", f"dead-letters-{name}")
        ensure_topics(self.kafka, {t: 3 for t in (topics.events, topics.findings,
                                                  topics.dead_letters)})
        return topics

    def job(self, topics: Topics, *extra: str, dedup: bool = True,
            roots: Path | None = None, env: dict | None = None) -> LocalJob:
        self._jobs += 1
        if dedup:
            extra = (*extra, "--redis_url", self.redis.url)
        args = job_arguments(
            self.broker.bootstrap_servers, events=topics.events, findings=topics.findings,
            dead_letters=topics.dead_letters, consumer_group=f"group-{topics.events}",
            model_registry=self.registry, model_name=DEMO_MODEL,
            allowed_roots=roots or self.workdir, extra=extra)
        return LocalJob(args, self.workdir / f"job-{self._jobs}.log", env=env).start()


def crash(bench: Bench, console: Console, events: int, dedup: bool = True) -> dict:
    """Three SIGKILLs while events flow, then the whole topic replayed once more."""
    label = "with Redis" if dedup else "without Redis (at least once)"
    console.print(f"crash: {events} events, 3 SIGKILLs, {label}")
    topics = bench.topics("crash" if dedup else "crash-nodedup")
    report = run_crash_scenario(bench.kafka, topics, lambda: bench.job(topics, dedup=dedup),
                                bench.images, events=events, kills=3, rate_per_s=8).to_dict()
    console.print(f"replay: the consumer group rewound to the start, {label}")
    report["replay"] = run_replay_scenario(bench.kafka, topics, f"group-{topics.events}",
                                           lambda: bench.job(topics, dedup=dedup))
    return report


def outage(bench: Bench, console: Console, seconds: float) -> dict:
    console.print(f"outage: broker frozen for {seconds:.0f} s while events arrive")
    topics = bench.topics("outage")
    job = bench.job(topics)
    try:
        report = run_outage_scenario(bench.kafka, bench.broker, topics, job, bench.images,
                                     outage_s=seconds, rate_per_s=5)
        report_dict = report.to_dict()
        report_dict["job_survived"] = job.running()
    finally:
        job.stop()
    return report_dict


def hostile(bench: Bench, console: Console, count: int) -> dict:
    from scenarios.hostile import run_hostile_campaign  # noqa: PLC0415
    console.print(f"hostile input: {count} bad inputs asked for (classes with a cap send fewer), "
                  "interleaved with good events")
    topics = bench.topics("hostile")
    # Only the campaign's own folder is allowed: its out-of-root files must stay out.
    workshop = bench.workdir / "hostile"
    workshop.mkdir()
    job = bench.job(topics, roots=workshop)
    try:
        report = run_hostile_campaign(bench.kafka, topics, job, workshop, count=count,
                                      seed=2026)
    finally:
        job.stop()
    return report.to_dict()


def retry(bench: Bench, console: Console, events: int) -> dict:
    from scenarios.claims import run_retry_scenario  # noqa: PLC0415
    console.print(f"retry: {events} events; every 3rd sink bundle fails after claiming and is "
                  "run again in the same process (with Redis)")
    topics = bench.topics("retry")
    return run_retry_scenario(bench.kafka, topics, lambda env: bench.job(topics, env=env),
                              bench.images, bench.workdir, events=events)


def takeover(bench: Bench, console: Console, events: int) -> dict:
    from scenarios.claims import run_takeover_scenario  # noqa: PLC0415
    console.print(f"takeover: {events} events; the job SIGKILLs itself between the broker's "
                  "ack and marking its claims done, a new worker takes over (with Redis)")
    topics = bench.topics("takeover")
    return run_takeover_scenario(bench.kafka, topics, lambda env: bench.job(topics, env=env),
                                 bench.images, bench.workdir, events=events)


def phi(bench: Bench, console: Console) -> dict:
    from scenarios.phi import metrics_page, run_phi_check  # noqa: PLC0415
    console.print("PHI: canaries in copies of real DICOM files, through the job")
    topics = bench.topics("phi")
    port = free_port()
    # DEBUG: the widest log the job can write is the one searched.
    job = bench.job(topics, "--metrics_port", str(port), env={"MEDIMG_LOG_LEVEL": "DEBUG"})
    try:
        report = run_phi_check(bench.kafka, topics, job, bench.workdir / "phi",
                               functools.partial(metrics_page, port))
    finally:
        job.stop()
    return report.to_dict()


def multi_process(bench: Bench, console: Console, events: int) -> dict:
    console.print(f"multi_process: {events} events, two jobs per start on one group, "
                  "2 SIGKILLs, with Redis")
    topics = bench.topics("multi-process")
    report = run_multi_process_scenario(bench.kafka, topics, lambda: bench.job(topics),
                                        bench.images, events=events, kills=2, rate_per_s=8)
    return {key: report[key] for key in ("events_sent", "lost", "duplicated", "refused_starts",
                                         "restarts", "findings", "dead_letters", "examples")}


def summary(results: dict) -> dict:
    """The figures the issue asks for, across the scenarios."""
    scenarios = [results["crash"], results["outage"]]  # with Redis, as deployed
    scenarios += [results[name] for name in ("retry", "takeover") if name in results]
    hostile_report = results.get("hostile", {})
    return {
        "events_sent": sum(s["events_sent"] for s in scenarios)
        + hostile_report.get("events_sent", 0),
        "findings": sum(s["findings"] for s in scenarios) + hostile_report.get("findings", 0),
        "dead_letters": sum(s["dead_letters"] for s in scenarios)
        + hostile_report.get("dead_letters", 0),
        "lost": sum(s["lost"] for s in scenarios) + hostile_report.get("lost", 0),
        "duplicated": sum(s["duplicated"] for s in scenarios)
        + hostile_report.get("duplicated", 0),
        "restarts": results["crash"]["restarts"],
        "max_recovery_s": max(results["crash"]["max_recovery_s"],
                              results["outage"]["max_recovery_s"]),
        "hostile_inputs": hostile_report.get("hostile_inputs", 0),
        "hostile_classes": hostile_report.get("hostile_classes", 0),
        "phi_hits": results.get("phi", {}).get("phi_hits"),
    }


def report(console: Console, results: dict) -> None:
    table = Table(title="reliability (issue 4 targets: 0 lost, 0 duplicated, >= 1000 hostile "
                        "inputs in >= 12 classes all dead-lettered as expected, 0 PHI hits)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary(results).items():
        table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    crash_report, outage_report = results["crash"], results["outage"]
    table.add_row("crash recovery (restart -> first finding), s",
                  ", ".join(f"{s:.1f}" for s in crash_report["recovery_s"]))
    table.add_row("outage recovery (broker back -> first new finding), s",
                  f"{outage_report['max_recovery_s']:.1f}")
    table.add_row(f"job CPU during the {outage_report['outage_s']:.0f} s outage, s",
                  f"{outage_report['outage_cpu_s']:.2f}")
    table.add_row("re-published when every event is replayed, with Redis",
                  str(crash_report["replay"]["republished"]))
    for name in ("retry", "takeover"):
        if name in results:
            scenario = results[name]
            table.add_row(f"{name}: events sent / lost / duplicated",
                          f"{scenario['events_sent']} / {scenario['lost']} / "
                          f"{scenario['duplicated']}")
    if "crash_without_dedup" in results:
        without = results["crash_without_dedup"]
        table.add_row("without Redis: duplicated after the kills / re-published on replay",
                      f"{without['duplicated']} / {without['replay']['republished']}")
    hostile_report = results.get("hostile")
    if hostile_report:
        table.add_row("hostile inputs with the wrong or no dead letter",
                      str(len(hostile_report.get("mismatches", []))))
    if "multi_process" in results:
        both = results["multi_process"]
        table.add_row("two jobs on one group: lost / duplicated / refused starts",
                      f"{both['lost']} / {both['duplicated']} / {both['refused_starts']}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crash_events", type=int, default=400)
    parser.add_argument("--outage_s", type=float, default=30.0)
    parser.add_argument("--hostile", type=int, default=1200)
    parser.add_argument("--claim_events", type=int, default=120,
                        help="events in each of the retry and takeover scenarios")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to skip")
    parser.add_argument("--only", default=None,
                        help="run just this scenario (multi_process) and merge its figures "
                             "into the results file")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The table is the output; client reconnect chatter during outages would bury it.
    logs.configure("ERROR")
    skip = set(filter(None, args.skip.split(",")))
    console = Console(width=140)
    results: dict = {"created_at": utc_now(), "machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="medimg-reliability-") as tmp, \
            EmbeddedBroker(log_path=str(Path(tmp) / "broker.log")) as broker, \
            RedisServer(Path(tmp) / "redis") as redis_server:
        bench = Bench(Path(tmp), broker, redis_server)
        if args.only == "multi_process":
            return _only(multi_process(bench, console, args.crash_events), args.output,
                         console)
        results["crash"] = crash(bench, console, args.crash_events)
        if "nodedup" not in skip:
            results["crash_without_dedup"] = crash(bench, console, args.crash_events, dedup=False)
        results["outage"] = outage(bench, console, args.outage_s)
        if "retry" not in skip:
            results["retry"] = retry(bench, console, args.claim_events)
        if "takeover" not in skip:
            results["takeover"] = takeover(bench, console, args.claim_events)
        if "hostile" not in skip:
            results["hostile"] = hostile(bench, console, args.hostile)
        if "phi" not in skip:
            results["phi"] = phi(bench, console)
        if "multi_process" not in skip:
            results["multi_process"] = multi_process(bench, console, args.crash_events)
    results.update(summary(results))
    report(console, results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.output}")
    return 0


def _only(figures: dict, output: str, console: Console) -> int:
    path = Path(output)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["multi_process"] = {**figures, "created_at": utc_now()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print({key: figures[key] for key in ("events_sent", "lost", "duplicated",
                                                 "refused_starts")})
    console.print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
