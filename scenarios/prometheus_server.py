"""A real Prometheus server on a free loopback port, running deploy/monitoring/'s rules.

The scrape configuration and rules are the deployed files, with what a test must
change: the targets, the topic names in the ``stream`` relabelling, 1-second scrape and
evaluation, and every rule's time scale shrunk (``[5m]`` -> ``[10s]``, ``for: 2m`` ->
``for: 3s``) so an alert fires and resolves within seconds. The expressions are
otherwise the deployed ones. Needs the ``prometheus`` binary (Debian package
``prometheus``); ``MEDIMG_PROMETHEUS`` may name another.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from streaming.local.broker import LOOPBACK, free_port, port_is_open

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
# Deployed window -> test window (about 1/30 of the time, at least a few scrapes).
TEST_WINDOWS = {"5m": "10s", "10m": "20s", "15m": "30s", "1d": "2m", "1h": "2m"}
TEST_FOR = "3s"


def prometheus_binary() -> str | None:
    return os.environ.get("MEDIMG_PROMETHEUS") or shutil.which("prometheus")


def scaled(expr: str) -> str:
    """The expression with each range ``[d]`` replaced by its test window."""
    return re.sub(r"\[(\w+)\]", lambda m: f"[{TEST_WINDOWS.get(m.group(1), m.group(1))}]", expr)


def rules_for_test(source: Path, target: Path) -> Path:
    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["expr"] = scaled(rule["expr"])
            if "for" in rule:
                rule["for"] = TEST_FOR
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def config_for_test(workdir: Path, job_target: str, topics_target: str,
                events_topic: str, outcome_topics: list[str]) -> Path:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                        "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_for_test(MONITORING / name, workdir / Path(name).name))
                            for name in config["rule_files"]]
    targets = {"medimg-stream": job_target, "kafka-topics": topics_target}
    for scrape in config["scrape_configs"]:
        scrape["static_configs"] = [{"targets": [targets[scrape["job_name"]]]}]
        for relabel in scrape.get("metric_relabel_configs", []):
            relabel["regex"] = (re.escape(events_topic) if relabel["replacement"] == "events"
                                else "|".join(map(re.escape, outcome_topics)))
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class PrometheusServer:
    """``prometheus`` on a free loopback port with the given config; query() and alerts()."""

    def __init__(self, workdir: Path, config: Path):
        self.workdir = Path(workdir)
        self.config = config
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "PrometheusServer":
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus not found: install the Debian package "
                                    "`prometheus`")
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not (port_is_open(self.port) and self._ready()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start; see {self.workdir}/prometheus.log")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def _get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
            document = json.load(answer)
        if document.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr`` now (raises on a PromQL error)."""
        return self._get("/api/v1/query", query=expr)["result"]

    def alerts(self) -> dict[str, str]:
        """alertname -> state (pending or firing) of every active alert."""
        active = {}
        for alert in self._get("/api/v1/alerts")["alerts"]:
            name = alert["labels"]["alertname"]
            if active.get(name) != "firing":
                active[name] = alert["state"]
        return active

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
