"""Following the findings topic: a live table for people, JSON lines for machines."""

from __future__ import annotations

import json
import time
from typing import Iterator

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streaming.kafka.admin import wait_for_partitions
from streaming.kafka.config import KafkaConfig

TABLE_ROWS = 25


def follow(config: KafkaConfig, topics: list[str], *, from_beginning: bool = False,
           idle_timeout_s: float | None = None, limit: int | None = None
           ) -> Iterator[tuple[str, dict | None, bytes]]:
    """(topic, document or None when not JSON, raw value) for each new record.

    Stops after ``limit`` records, or when nothing arrived for ``idle_timeout_s``.
    """
    consumer = KafkaConsumer(**config.client_kwargs(), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in wait_for_partitions(consumer, config, topic)]
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        seen, last_record = 0, time.monotonic()
        while limit is None or seen < limit:
            batches = consumer.poll(timeout_ms=200)
            if not batches:
                if idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                    return
                continue
            last_record = time.monotonic()
            for records in batches.values():
                for record in records:
                    try:
                        document = json.loads(record.value)
                    except ValueError:
                        document = None
                    yield record.topic, document, record.value
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
    finally:
        consumer.close(autocommit=False)


def summary_row(topic: str, document: dict | None) -> list[str]:
    """One table row for a finding or a dead letter."""
    if document is None:
        return [topic, "-", "-", "unreadable record", "", "", "", ""]
    study = str(document.get("study_instance_uid") or "-")
    study = study if len(study) <= 24 else "…" + study[-23:]
    if "reason" in document:
        return [document.get("created_at", "")[11:23], study, "-",
                f"[red]dead letter: {document['reason']}[/red]", "", "", "", ""]
    scores = document.get("scores") or {}
    label = document.get("label") or document.get("status", "")
    if document.get("positive"):
        label = f"[bold red]{label}[/bold red]"
    top = max(scores.values()) if scores else None
    return [document.get("emitted_at", "")[11:23], study, document.get("modality", ""), label,
            "" if top is None else f"{top:.3f}",
            "[bold yellow]URGENT[/bold yellow]" if document.get("urgent") else "",
            f"{document['model']['name']}/{document['model']['version']}",
            f"{document.get('latency_ms', 0):.0f}"]


COLUMNS = ["time (UTC)", "study", "modality", "finding", "score", "urgent", "model",
           "latency ms"]


def print_live(stream: Iterator[tuple[str, dict | None, bytes]], console: Console | None = None
               ) -> int:
    """Show records as they come; on a terminal a live table of the latest rows."""
    console = console or Console()
    rows, count = [], 0
    if not console.is_terminal:
        for topic, document, _raw in stream:
            console.print(" | ".join(summary_row(topic, document)), highlight=False,
                          soft_wrap=True)
            count += 1
        return count

    def table() -> Table:
        view = Table(title=f"findings: {count} received", expand=True)
        for column in COLUMNS:
            view.add_column(column, overflow="fold")
        for row in rows[-TABLE_ROWS:]:
            view.add_row(*row)
        return view

    with Live(table(), console=console, refresh_per_second=4) as live:
        for topic, document, _raw in stream:
            rows.append(summary_row(topic, document))
            count += 1
            live.update(table())
    return count
