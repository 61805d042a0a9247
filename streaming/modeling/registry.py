"""The model registry: versioned models in a folder, or under any Beam FileSystems URI.

Layout, one folder per model name, integer version folders (the layout TF Serving
loads, so the same tree can back a TF Serving deployment)::

    <root>/<name>/1/model.keras          the model (Keras 3)
    <root>/<name>/1/architecture.json    model.to_json(), with model.weights.h5
    <root>/<name>/1/saved_model.pb       TensorFlow SavedModel export (+ variables/)
    <root>/<name>/1/metadata.json        written last: the version exists once it is there
    <root>/<name>/1/status.json          candidate, promoted or rejected, and why
    <root>/<name>/production.json        {"version": "1", "history": [...], ...}
    <root>/<name>/last_known_good.json   the version the serving path last loaded
    <root>/tf_serving.config             ModelServerConfig serving each production version

Pointers are whole small files replaced atomically (rename locally; object stores
replace an object in one step), so a reader never sees half a pointer. TF Serving
would serve the newest integer folder by default, rejected ones included; the
generated tf_serving.config pins it to production (``--model_config_file``).
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
STATUS_FILE = "status.json"
TF_SERVING_CONFIG = "tf_serving.config"
CANDIDATE, PROMOTED, REJECTED = "candidate", "promoted", "rejected"
HISTORY_LENGTH = 20
PRODUCTION = "production"
LAST_KNOWN_GOOD = "last_known_good"
POINTERS = (PRODUCTION, LAST_KNOWN_GOOD)


class RegistryError(RuntimeError):
    """The registry lacks what was asked for; the message says what to do."""


def is_remote(uri: str) -> bool:
    """A URI Beam's FileSystems must open (gs://, s3://, ...), not a local path."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    """A local path from a plain path or a file:// URI."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


class ModelRegistry:
    """Read and write model versions and the production / last-known-good pointers."""

    def __init__(self, root: str):
        self.root = root if is_remote(root) else os.path.abspath(local_path(root))

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # -- paths -------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        if is_remote(self.root):
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
        document = self.pointer_document(name, pointer)
        return None if document is None else str(document["version"])

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

    def pointer_document(self, name: str, pointer: str = PRODUCTION) -> dict | None:
        """The pointer's whole document (version, reason, when), or None when never set."""
        if pointer not in POINTERS:
            raise ValueError(f"unknown pointer {pointer!r}; expected one of {POINTERS}")
        text = self._read_text(self._join(name, f"{pointer}.json"))
        return None if text is None else json.loads(text)

    def status(self, name: str, version: str) -> dict:
        """{"state": candidate | promoted | rejected, "reason": ..., ...} of one version."""
        text = self._read_text(self._join(name, str(version), STATUS_FILE))
        return json.loads(text) if text else {"state": CANDIDATE}

    # -- writing -----------------------------------------------------------------

    def set_status(self, name: str, version: str, state: str, reason: str, **details) -> None:
        if state not in (CANDIDATE, PROMOTED, REJECTED):
            raise ValueError(f"unknown state {state!r}")
        self.metadata(name, version)
        document = {"state": state, "reason": reason, "updated_at": utc_now(), **details}
        self._write_atomically(self._join(name, str(version), STATUS_FILE),
                               json.dumps(document, indent=2).encode("utf-8"))

    def promote(self, name: str, version: str, reason: str) -> None:
        """Make ``version`` production, remembering the one it replaces for rollback."""
        if self.status(name, version)["state"] == REJECTED:
            raise RegistryError(f"{name} version {version} was rejected "
                                f"({self.status(name, version).get('reason')}); it cannot "
                                "become production")
        current = self.pointer_document(name, PRODUCTION) or {}
        history = list(current.get("history", []))
        if current.get("version") and current["version"] != str(version):
            history = ([current["version"]] + history)[:HISTORY_LENGTH]
        self.set_status(name, version, PROMOTED, reason)
        self.set_pointer(name, version, PRODUCTION, reason=reason, history=history)
        self.write_tf_serving_config()

    def rollback(self, name: str, to: str | None = None) -> str:
        """Point production back at the previous version (or ``to``); returns it."""
        current = self.pointer_document(name, PRODUCTION)
        if current is None:
            raise RegistryError(f"model {name!r} has no production version to roll back")
        history = list(current.get("history", []))
        if to is None:
            if not history:
                raise RegistryError(f"{name} version {current['version']} is the first "
                                    "production version; there is nothing to roll back to")
            to = history.pop(0)
        elif str(to) in history:
            history.remove(str(to))
        if self.status(name, to)["state"] == REJECTED:
            raise RegistryError(f"{name} version {to} was rejected; roll back to another one")
        self.set_pointer(name, to, PRODUCTION, history=history,
                         reason=f"rollback from version {current['version']}")
        self.write_tf_serving_config()
        return str(to)

    def write_tf_serving_config(self) -> None:
        """tf_serving.config: each model's production version, for TF Serving."""
        entries = []
        for name in self.model_names():
            version = self.production(name)
            if version is None:
                continue
            entries.append(
                "  config {\n"
                f'    name: "{name}"\n'
                f'    base_path: "{self._join(name)}"\n'
                '    model_platform: "tensorflow"\n'
                f"    model_version_policy {{ specific {{ versions: {int(version)} }} }}\n"
                "  }\n")
        text = "model_config_list {\n" + "".join(entries) + "}\n"
        self._write_atomically(self._join(TF_SERVING_CONFIG), text.encode("utf-8"))

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
        ModelMetadata.from_dict({**metadata, "version": "1"})  # refuse before claiming a folder
        name = metadata["name"]
        version = self._claim_version(name)
        record = ModelMetadata.from_dict({**metadata, "version": version})
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
        if is_remote(self.root):
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
        if is_remote(destination):
            with open(source, "rb") as src, FileSystems.create(destination) as dst:
                shutil.copyfileobj(src, dst)
        else:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.copy2(source, destination)

    def _write_atomically(self, destination: str, payload: bytes) -> None:
        if is_remote(destination):
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
