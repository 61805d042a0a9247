"""The Dockerfiles read as operators rely on them: multi-stage, non-root, pinned by
constraints.txt, copying only what exists. Building them is `make image-check` (slow,
needs root or podman): deploy/images/image-check.sh."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "stream-cpu": ROOT / "deploy" / "images" / "stream-cpu.Dockerfile",
    "stream-gpu": ROOT / "deploy" / "dataflow" / "Dockerfile",
    "airflow": ROOT / "deploy" / "images" / "airflow.Dockerfile",
}


def instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines())
            if line and not line.startswith("#")]


def stages(path):
    found = []
    for instruction, arguments in instructions(path):
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, arguments))
    return found


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_and_the_final_stage_runs_as_a_numeric_non_root_user(name):
    built = stages(DOCKERFILES[name])
    assert len(built) >= 2, "build tools and caches belong in a build stage"
    users = [arguments for instruction, arguments in built[-1] if instruction == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert any(i == "COPY" and "--from=build" in a for i, a in built[-1])


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_install_is_pinned_by_the_constraints(name):
    installs = [a for i, a in instructions(DOCKERFILES[name])
                if i == "RUN" and re.search(r"pip (install|wheel)", a)]
    assert installs
    for command in installs:
        for pip in re.split(r"&&", command):
            if re.search(r"pip (install|wheel)", pip) and "uninstall" not in pip:
                assert re.search(r"-c \S*constraints\.txt", pip), pip


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copied_paths_exist_and_no_secret_is_baked_in(name):
    for instruction, arguments in instructions(DOCKERFILES[name]):
        if instruction == "COPY" and "--from=" not in arguments:
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), source
        if instruction in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", arguments), arguments


def test_the_gpu_image_runs_keras_on_jax_and_the_cpu_image_on_tensorflow():
    gpu = DOCKERFILES["stream-gpu"].read_text()
    assert "KERAS_BACKEND=jax" in gpu and '"jax[cuda12]"' in gpu
    assert "apache/beam_python3.11_sdk:2.77.0" in gpu  # Dataflow's boot entrypoint
    runs = " ".join(a for i, a in instructions(DOCKERFILES["stream-gpu"]) if i == "RUN")
    assert "tensorflow" not in runs.lower()  # the serving install: no extras
    cpu = DOCKERFILES["stream-cpu"].read_text()
    assert "KERAS_BACKEND=tensorflow" in cpu and "ARG EXTRAS=tensorflow" in cpu


def test_the_build_context_leaves_out_the_venv_and_secrets():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "deploy/compose/secrets"} <= set(ignored)


@pytest.mark.parametrize("name", ["stream-cpu", "stream-gpu"])
def test_a_read_only_root_still_has_a_writable_home(name):
    """The chart and Compose mount only /tmp writable; Keras, matplotlib and the embedded
    broker write under HOME (make image-check failed on HOME=/nonexistent)."""
    env = " ".join(a for i, a in stages(DOCKERFILES[name])[-1] if i == "ENV")
    assert re.search(r"\bHOME=/tmp\b", env)
