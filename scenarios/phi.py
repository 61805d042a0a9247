"""Patient-identity canaries: real DICOM files carrying distinctive fake identities.

``write_canary_files`` copies a varied handful of pydicom's real test files (CT, MR,
CR MONOCHROME1, JPEG-LS, JPEG 2000, RLE, JPEG baseline, deflated, a waveform, a
structured report) and a chest phantom, writing ``CANARIES`` into their patient,
study and institution elements; plus copies that fail to decode (cut, garbled) and
copies whose canary sits in an element the decoder itself must parse (Photometric
Interpretation, Number of Frames, Window Center, a name the declared character set
cannot decode). ``canary_hits`` then searches every text the job produced.

``run_phi_check`` runs them through a job and searches findings, dead letters, the
job's log, its metrics page and the events; integration_tests/test_phi.py and
``make bench-reliability`` call it. The events a modality sends for these files are
checked too (``event_leaks``): ``event_for_file`` may copy nothing from a header but
UIDs, modality and body part.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import urllib.request
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from scenarios.delivery import JOB_START_S
from scenarios import bad_files
from streaming.local import phantoms
from streaming.local.reference_data import scanner_files
from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.tools.modality import publish_events
from streaming.kafka.outcomes import OutcomeLog

SENDER = "PHI_CANARY"

# Written into every copy; each is unlikely to occur anywhere by chance.
CANARIES = {
    "PatientName": "Qzxvorn^Plimbert",
    "PatientID": "QZXPID-73914",
    "PatientBirthDate": "18420517",
    "AccessionNumber": "QZXACC88213",
    "InstitutionName": "Ystrafell Qmx Infirmary",
    "ReferringPhysicianName": "Vexlund^Orrabel",
}
# Values of elements the decoder parses, in copies made to fail on them.
HEADER_CANARIES = {
    "PhotometricInterpretation": "QZXPHOTOMETRIC",
    "NumberOfFrames": "QZX5521",
    "WindowCenter": "QZXWC9174",
}
# (source file, what it covers); the copies keep their pixels.
DECODABLE_SOURCES = (
    ("CT_small.dcm", "CT, explicit VR little endian"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR, JPEG-LS"),
    ("MR_small_RLE.dcm", "MR, RLE"),
    ("RG3_J2KI.dcm", "CR MONOCHROME1, JPEG 2000"),
    ("SC_rgb_jpeg_dcmtk.dcm", "secondary capture, JPEG baseline YBR"),
    ("MR_small_bigendian.dcm", "MR, explicit VR big endian"),
    ("image_dfl.dcm", "deflated: the decoder inflates the header holding the canaries"),
)
NON_IMAGE_SOURCES = (("waveform_ecg.dcm", "ECG waveform"), ("reportsi.dcm", "structured report"))
# The only header elements a modality may copy into an event (event_for_file).
_EVENT_FIELDS_FROM_HEADER = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                             "Modality", "BodyPartExamined"}
_NOT_COMPARED = {"UI", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}


@dataclasses.dataclass(frozen=True)
class CanaryFile:
    path: Path
    what: str
    decodable: bool  # whether the copy is meant to become a finding


def needles(value: str) -> list[re.Pattern]:
    """Patterns that find ``value`` however an output might spell it.

    A person name also by each of its components; a date also as 1842-05-17 and
    1842/05/17, and only between non-digits (eight digits occur in timestamps).
    """
    if re.fullmatch(r"\d{8}", value):
        spelled = [value, f"{value[:4]}-{value[4:6]}-{value[6:]}",
                   f"{value[:4]}/{value[4:6]}/{value[6:]}"]
        return [re.compile(rf"(?<!\d){re.escape(s)}(?!\d)") for s in spelled]
    parts = [value] + [p for p in re.split(r"[\^ ]", value) if len(p) >= 6 and p != value]
    return [re.compile(re.escape(p), re.IGNORECASE) for p in parts]


def canary_hits(outputs: dict[str, str]) -> dict[str, dict[str, int]]:
    """canary keyword -> {output name: hits}, for every canary and every output text.

    ``outputs`` maps a name (findings, dead_letters, job_log, metrics, ...) to its text.
    """
    every = {**CANARIES, **HEADER_CANARIES}
    return {keyword: {name: sum(len(p.findall(text)) for p in needles(value))
                      for name, text in outputs.items()}
            for keyword, value in every.items()}


def total_hits(hits: dict[str, dict[str, int]]) -> int:
    return sum(n for per_output in hits.values() for n in per_output.values())


def dead_letter_texts(documents: list[dict]) -> str:
    """Dead letters as text, with base64 payloads decoded so they are searched too."""
    texts = [json.dumps(documents)]
    for document in documents:
        payload = document.get("payload", {})
        if payload.get("encoding") == "base64":
            texts.append(base64.b64decode(payload["data"]).decode("utf-8", "replace"))
    return "\n".join(texts)


# -- writing the canary copies ---------------------------------------------------------

def write_canary_files(folder: Path) -> list[CanaryFile]:
    """Canary copies of real files under ``folder``: decodable, failing and header cases."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = {path.name: path for path in scanner_files()}
    files = [_canary_copy(sources[name], folder / f"canary-{index:02d}.dcm", what, True)
             for index, (name, what) in enumerate(DECODABLE_SOURCES) if name in sources]
    files.append(_canary_phantom(folder))
    files += [_canary_copy(sources[name], folder / f"canary-nonimage-{index}.dcm", what, False)
              for index, (name, what) in enumerate(NON_IMAGE_SOURCES) if name in sources]
    files += _failing_copies(folder, sources)
    files += _header_canary_copies(folder, sources["MR_small.dcm"])
    files.append(_undecodable_name(folder, sources["MR_small.dcm"]))
    return files


def _with_canaries(dataset: Dataset) -> Dataset:
    for keyword, value in CANARIES.items():
        setattr(dataset, keyword, value)
    return dataset


def _canary_copy(source: Path, destination: Path, what: str, decodable: bool) -> CanaryFile:
    dataset = _with_canaries(pydicom.dcmread(source))
    dataset.save_as(destination)
    return CanaryFile(destination, what, decodable)


def _canary_phantom(folder: Path) -> CanaryFile:
    """A chest phantom the served model scores (the full scoring path sees the canaries)."""
    case = phantoms.generate_study_set(folder / "phantom", 1, seed=23, size=128)[0]
    return _canary_copy(case.path, folder / "canary-chest.dcm", "chest CR phantom, scored",
                        True)


def _failing_copies(folder: Path, sources: dict[str, Path]) -> list[CanaryFile]:
    """Canary copies cut short or garbled, which the job must dead-letter."""
    whole = folder / "canary-whole-ct.dcm"
    _with_canaries(pydicom.dcmread(sources["CT_small.dcm"])).save_as(whole)
    data = whole.read_bytes()
    pixels = bad_files.pixel_data_value_start(data)
    spans = {span.tag: span for span in bad_files.element_spans(data)}
    after_name = spans[0x00100020]  # Patient ID: cut inside it, after Patient Name
    cuts = {"cut in the pixel data": pixels + 100,
            "cut inside Patient ID, after Patient Name": after_name.value_start + 3}
    failing = []
    for index, (what, cut) in enumerate(cuts.items()):
        path = folder / f"canary-cut-{index}.dcm"
        path.write_bytes(bad_files.truncated(data, cut))
        failing.append(CanaryFile(path, what, False))
    whole.unlink()
    garbled_source = folder / "canary-jls.dcm"
    _with_canaries(pydicom.dcmread(sources["MR_small_jpeg_ls_lossless.dcm"])).save_as(
        garbled_source)
    garbled = folder / "canary-garbled.dcm"
    garbled.write_bytes(bad_files.garbled_codestream(garbled_source.read_bytes(),
                                                     "headers_to_fill"))
    garbled_source.unlink()
    return failing + [CanaryFile(garbled, "JPEG-LS frame header garbled", False)]


def _header_canary_copies(folder: Path, source: Path) -> list[CanaryFile]:
    """Copies whose canary is the value of an element the decoder parses."""
    copies = []
    for keyword, value in HEADER_CANARIES.items():
        dataset = _with_canaries(pydicom.dcmread(source))
        # pydicom refuses an IS or DS value that is no number: write a valid
        # placeholder of the same length, then put the canary over its bytes.
        placeholder = _PLACEHOLDERS[keyword]
        setattr(dataset, keyword, placeholder)
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        data = buffer.getvalue()
        if data.count(placeholder.encode()) != 1:
            raise AssertionError(f"placeholder for {keyword} is not unique in the copy")
        path = folder / f"canary-header-{keyword}.dcm"
        path.write_bytes(data.replace(placeholder.encode(), value.encode()))
        # An invalid Window Center is ignored (min-max instead): that copy still decodes.
        copies.append(CanaryFile(path, f"canary as {keyword}", keyword == "WindowCenter"))
    return copies


_PLACEHOLDERS = {"PhotometricInterpretation": "MONOCHROMEXQZJ", "NumberOfFrames": "+918273",
                 "WindowCenter": "+9.182736"}


def _undecodable_name(folder: Path, source: Path) -> CanaryFile:
    """A Patient Name that is not valid UTF-8 although the character set says UTF-8."""
    dataset = _with_canaries(pydicom.dcmread(source))
    dataset.SpecificCharacterSet = "ISO_IR 192"
    first, last = CANARIES["PatientName"].split("^")
    dataset[0x00100010] = DataElement(0x00100010, "PN",
                                      first.encode() + b"\xff\xfe^" + last.encode())
    path = folder / "canary-bad-charset.dcm"
    dataset.save_as(path)
    return CanaryFile(path, "Patient Name undecodable in its character set", True)


def canaries_in_file(path: Path) -> set[str]:
    """Which canary keywords the file holds (checks that the copies carry what they should)."""
    data = path.read_bytes()
    try:
        text = json.dumps(pydicom.dcmread(io.BytesIO(data), force=True,
                                          stop_before_pixels=True).to_json_dict(
            bulk_data_threshold=1, bulk_data_element_handler=lambda _e: ""))
    except Exception:  # noqa: BLE001 - a cut copy is searched as raw bytes only
        text = ""
    text += data.decode("latin-1")
    hits = canary_hits({"file": text})
    return {keyword for keyword, per in hits.items() if per["file"]}


# -- events ----------------------------------------------------------------------------

def event_leaks(path: Path, event_document: dict) -> list[str]:
    """Header elements, other than UIDs, modality and body part, whose value is in the event.

    Empty when the modality copied nothing it should not have.
    """
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - nothing readable, nothing to copy
        return []
    values = {str(v) for v in event_document.values()}
    leaks = []
    for element in header.iterall():
        # UIDs may travel (the event names its instance); binary values cannot match.
        if element.keyword in _EVENT_FIELDS_FROM_HEADER or element.VR in _NOT_COMPARED:
            continue
        text = str(element.value).strip() if element.value is not None else ""
        if len(text) >= 4 and text in values:
            leaks.append(element.keyword or str(element.tag))
    return leaks


# -- running it --------------------------------------------------------------------------

@dataclasses.dataclass
class PhiReport:
    """What the job made of the canary files, and where any canary turned up."""
    files: int
    findings: int
    dead_letters: int
    without_outcome: list[str]          # files whose event got no outcome in time
    wrong_path: list[str]               # files not ending as built for (finding or dead letter)
    event_leaks: list[str]              # "file: element" copied into an event
    hits: dict[str, dict[str, int]]     # canary -> output -> hits
    metrics_scraped: bool
    job_exit: int | None

    @property
    def total_hits(self) -> int:
        return total_hits(self.hits)

    @property
    def ok(self) -> bool:
        return not (self.total_hits or self.event_leaks or self.without_outcome
                    or self.wrong_path) and self.job_exit == 0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "phi_hits": self.total_hits, "ok": self.ok}


def run_phi_check(config: KafkaConfig, topics, job, workdir: Path,
                  scrape_metrics: Callable[[], str] | None = None,
                  timeout_s: float = JOB_START_S) -> PhiReport:
    """Send the canary files through a running job, stop it, and search all it produced.

    ``workdir`` must lie inside the job's allowed roots; ``topics`` has ``events``,
    ``findings`` and ``dead_letters``. Start the job with ``MEDIMG_LOG_LEVEL=DEBUG``
    for the widest log, and with ``--metrics_port`` and pass ``scrape_metrics``
    (e.g. ``functools.partial(metrics_page, port)``) to have its metrics page
    searched. The job is stopped (drained) so that its whole log is searched.
    """
    files = write_canary_files(Path(workdir))
    sent = {event.event_id: (event, canary) for event, canary in
            ((bad_files.announce(f.path, SENDER), f) for f in files)}
    leaks = [f"{canary.path.name}: {element}" for event, canary in sent.values()
             for element in event_leaks(canary.path, event.to_document())]
    ensure_topics(config, {topics.events: 3, topics.findings: 3, topics.dead_letters: 3})
    with OutcomeLog(config, topics.findings, topics.dead_letters) as log:
        publish_events(config, topics.events, [event for event, _ in sent.values()])
        log.wait_for(list(sent), timeout_s)
        metrics = scrape_metrics() if scrape_metrics else ""
        job_exit = job.stop()
        log.drain(quiet_s=1.0)
    findings = [o.document for o in log.outcomes if o.kind == "finding"]
    dead_letters = [o.document for o in log.outcomes if o.kind == "dead_letter"]
    hits = canary_hits({
        "findings": json.dumps(findings), "dead_letters": dead_letter_texts(dead_letters),
        "job_log": Path(job.log_path).read_text(errors="replace"), "metrics": metrics,
        "events": json.dumps([event.to_document() for event, _ in sent.values()])})
    return PhiReport(
        files=len(files), findings=len(findings), dead_letters=len(dead_letters),
        without_outcome=[c.path.name for event_id, (_, c) in sent.items()
                         if not log.by_event.get(event_id)],
        wrong_path=[f"{c.path.name} ({c.what})" for event_id, (_, c) in sent.items()
                    if log.by_event.get(event_id) and _not_as_built(log.by_event[event_id], c)],
        event_leaks=leaks, hits=hits, metrics_scraped=bool(metrics), job_exit=job_exit)


def _not_as_built(outcomes: list, canary: CanaryFile) -> bool:
    """Whether the file missed its path: one finding if decodable, else one dead letter."""
    kinds = [o.kind for o in outcomes]
    return kinds != (["finding"] if canary.decodable else ["dead_letter"])


def metrics_page(port: int) -> str:
    """The Prometheus page a job started with ``--metrics_port`` serves on loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode("utf-8")
