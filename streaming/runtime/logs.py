"""Structured logs: one JSON object per line, for the job and the CLI.

Log records carry identifiers (event_id, topic, partition, model version), never
patient identity; image headers are not logged at all.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

from pythonjsonlogger.json import JsonFormatter

# kafka-python logs every dropped connection at ERROR, many per second during a
# broker outage; our own reader and sink report outages once per retry instead.
_QUIET = {"kafka": logging.CRITICAL, "apache_beam": logging.WARNING, "absl": logging.ERROR,
          "openjpeg": logging.WARNING, "pylibjpeg": logging.WARNING,
          "tensorflow": logging.ERROR, "h5py": logging.WARNING, "matplotlib": logging.WARNING}


def configure(level: str | None = None, stream=None) -> None:
    """JSON lines on stderr (or ``stream``); level from MEDIMG_LOG_LEVEL, default INFO."""
    level = (level or os.environ.get("MEDIMG_LOG_LEVEL", "INFO")).upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(
        "{asctime}{levelname}{name}{message}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet_level, logging.getLevelName(level)))
    silence_phi_sources()
    # TensorFlow's C++ start-up chatter (no CUDA driver, oneDNN notes) is not actionable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def silence_phi_sources() -> None:
    """Stop pydicom from quoting header values (possible patient identity) in logs.

    pydicom reports invalid element values as warnings and WARNING log records that
    include the value (e.g. a malformed PatientName). Our decoder reports problems
    with its own templates instead. Called by the CLI and by every worker's loader.
    """
    import pydicom.config  # noqa: PLC0415

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


def where_it_failed(error: BaseException) -> list[str]:
    """The traceback as file:line function, without the exception's message.

    Library messages can quote what they were reading (a DICOM element's value), so
    logs name the error's type and where it was raised, never its text.
    """
    return [f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.name}"
            for frame in traceback.extract_tb(error.__traceback__)]
