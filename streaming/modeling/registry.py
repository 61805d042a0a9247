"""The model registry: versioned models in a folder, or under any Beam FileSystems URI.

Layout, one folder per model name, integer version folders (the layout TF Serving
loads, so the same tree can back a TF Serving deployment)::

    <root>/<name>/1/model.keras
    <root>/<name>/1/metadata.json
    <root>/<name>/production.json        {"version": "1", "updated_at": ...}
    <root>/<name>/last_known_good.json   newest version the serving path loaded

Pointers are whole small files replaced atomically (rename locally; object stores
replace an object in one step), so a reader never sees half a pointer.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from apache_beam.io.filesystems import FileSystems

from streaming.modeling.metadata import ModelMetadata, utc_now

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
PRODUCTION = "production"
LAST_KNOWN_GOOD = "last_known_good"
POINTERS = (PRODUCTION, LAST_KNOWN_GOOD)


class RegistryError(RuntimeError):
    """The registry lacks what was asked for; the message says what to do."""


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


class ModelRegistry:
    """Read and write model versions and the production / last-known-good pointers."""

    def __init__(self, root: str):
        self.root = root if _is_remote(root) else os.path.abspath(_local(root))

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # -- paths -------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        if _is_remote(self.root):
            return posixpath.join(self.root, *parts)
        return os.path.join(self.root, *parts)

    def version_uri(self, name: str, version: str) -> str:
        return self._join(name, str(version))

    def model_uri(self, name: str, version: str) -> str:
        return self._join(name, str(version), MODEL_FILE)

    # -- reading -----------------------------------------------------------------

    def _read_text(self, uri: str) -> str | None:
        if not FileSystems.exists(uri):
            return None
        with FileSystems.open(uri) as handle:
            return handle.read().decode("utf-8")

    def model_names(self) -> list[str]:
        if not FileSystems.exists(self.root):
            return []
        names = set()
        for match in FileSystems.match([self._join("*", "*", METADATA_FILE)])[0].metadata_list:
            parts = match.path.replace("\\", "/").split("/")
            names.add(parts[-3])
        return sorted(names)

    def versions(self, name: str) -> list[str]:
        """Registered versions of a model, oldest first."""
        pattern = self._join(name, "*", METADATA_FILE)
        found = []
        for match in FileSystems.match([pattern])[0].metadata_list:
            version = match.path.replace("\\", "/").split("/")[-2]
            if version.isdigit():
                found.append(int(version))
        return [str(v) for v in sorted(found)]

    def metadata(self, name: str, version: str) -> ModelMetadata:
        text = self._read_text(self._join(name, str(version), METADATA_FILE))
        if text is None:
            raise RegistryError(
                f"model {name} version {version} is not in the registry at {self.root}; "
                f"`medimg models list --model_registry {self.root}` shows what is")
        return ModelMetadata.from_dict(json.loads(text))

    def pointer(self, name: str, pointer: str = PRODUCTION) -> str | None:
        """The version a pointer names, or None when it was never set."""
        if pointer not in POINTERS:
            raise ValueError(f"unknown pointer {pointer!r}; expected one of {POINTERS}")
        text = self._read_text(self._join(name, f"{pointer}.json"))
        return None if text is None else str(json.loads(text)["version"])

    def production(self, name: str) -> str | None:
        return self.pointer(name, PRODUCTION)

    def resolve(self, name: str, version: str | None = None) -> str:
        """The version to serve: the one asked for, else production."""
        if version:
            return str(version)
        production = self.production(name)
        if production is None:
            raise RegistryError(
                f"no production version of model {name!r} in {self.root}; train one with "
                f"`medimg train --data DIR_OR_NPZ --model_registry {self.root}`")
        return production

    # -- writing -----------------------------------------------------------------

    def set_pointer(self, name: str, version: str, pointer: str = PRODUCTION,
                    **details) -> None:
        """Point ``pointer`` at an existing version, atomically."""
        if pointer not in POINTERS:
            raise ValueError(f"unknown pointer {pointer!r}; expected one of {POINTERS}")
        self.metadata(name, version)  # refuses a version that is not registered
        document = {"version": str(version), "updated_at": utc_now(), **details}
        self._write_atomically(self._join(name, f"{pointer}.json"),
                               json.dumps(document, indent=2).encode("utf-8"))

    def register(self, staging_dir: str | Path, metadata: dict) -> ModelMetadata:
        """Copy a trained model's files into the next free version folder.

        ``staging_dir`` holds at least ``model.keras``; ``metadata`` is completed with
        the allocated version and validated before anything is written.
        """
        staging_dir = Path(staging_dir)
        if not (staging_dir / MODEL_FILE).is_file():
            raise RegistryError(f"{staging_dir} has no {MODEL_FILE} to register")
        name = metadata["name"]
        version = self._claim_version(name)
        record = ModelMetadata.from_dict({**metadata, "version": version})
        destination = self.version_uri(name, version)
        for path in sorted(staging_dir.rglob("*")):
            if path.is_file() and path.name != METADATA_FILE:
                relative = path.relative_to(staging_dir).as_posix()
                self._copy_in(path, self._join(name, version, *relative.split("/")))
        # metadata.json last: a version counts as registered once it is there.
        self._write_atomically(self._join(name, version, METADATA_FILE),
                               json.dumps(record.to_dict(), indent=2).encode("utf-8"))
        return record

    def _claim_version(self, name: str) -> str:
        existing = [int(v) for v in self.versions(name)]
        candidate = (max(existing) if existing else 0) + 1
        if _is_remote(self.root):
            # Object stores have no exclusive create; one trainer per model name.
            return str(candidate)
        base = Path(self._join(name))
        base.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (base / str(candidate)).mkdir()  # exclusive: two trainers never share a version
                return str(candidate)
            except FileExistsError:
                candidate += 1

    def _copy_in(self, source: Path, destination: str) -> None:
        if _is_remote(destination):
            with open(source, "rb") as src, FileSystems.create(destination) as dst:
                shutil.copyfileobj(src, dst)
        else:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.copy2(source, destination)

    def _write_atomically(self, destination: str, payload: bytes) -> None:
        if _is_remote(destination):
            with FileSystems.create(destination) as handle:
                handle.write(payload)
            return
        directory = os.path.dirname(destination)
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, destination)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
