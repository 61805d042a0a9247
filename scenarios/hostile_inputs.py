"""Hostile inputs: each class of bad event, how Hypothesis generates it, its reason code.

``HOSTILE_CLASSES`` lists them, each with the dead-letter reason the job must give
it: broken JSON and schema breaches (parse stage), URIs out of bounds or pointing
at nothing readable (access), files that are cut, garbled, bombs or not images
(decoding). ``good_event`` generates valid events in unusual but legal forms, which
must each get a finding. Every strategy draws its files into a ``Workshop``: a root
the job may read and an "outside" folder next to it that it must not.

Files are written while examples are drawn (generate phase only, see hostile.py);
``bad_files`` builds them.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Callable

import pydicom
from hypothesis import assume
from hypothesis import strategies as st

from scenarios import bad_files
from streaming.contracts import validation
from streaming.local import phantoms
from streaming.local.reference_data import ScannerFilesMissing, scanner_files
from streaming.local.demo import STUDY_IMAGE_SIZE
from streaming.contracts.events import DEFAULT_MAX_EVENT_BYTES
from streaming.imaging.types import ImageLimits
from streaming.tools.modality import event_for_file
from streaming.contracts.reasons import Reason
SENDER = "HOSTILE_CAMPAIGN"
PIXEL_DATA = 0x7FE00010
# Real files the cut and garbled inputs start from (pydicom's test files); phantoms
# of every encodable transfer syntax are added to them.
TRUNCATION_SOURCES = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm",
                      "MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm",
                      "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm",
                      "rtdose.dcm", "emri_small.dcm", "US1_J2KI.dcm", "SC_rgb_2frame.dcm")
COMPRESSED_SOURCES = ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm",
                      "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm",
                      "SC_rgb_rle.dcm", "JPGExtended.dcm", "SC_rgb_rle_16bit.dcm",
                      "US1_J2KR.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_gdcm_KY.dcm")
NON_IMAGE_SOURCES = ("waveform_ecg.dcm", "test-SR.dcm", "reportsi.dcm", "rtplan.dcm")


# -- the workshop: files the campaign writes and points events at ----------------------

@dataclasses.dataclass
class Workshop:
    """Where the campaign's files live, and the real files it starts from.

    ``root`` is the job's only allowed root; ``outside`` sits next to it (its name
    even starts with root's name, so a string-prefix check would let it through).
    """
    root: Path
    outside: Path
    good_images: list[Path]
    truncation_sources: list[tuple[Path, list[bad_files.ElementSpan]]]
    compressed_sources: list[Path]
    non_image_sources: list[Path]
    special_files: dict[str, Path]
    limits: ImageLimits
    max_event_bytes: int
    _serial: itertools.count = dataclasses.field(default_factory=itertools.count)

    def new_path(self, stem: str, suffix: str = ".dcm") -> Path:
        """A fresh file name under root/files, never used before in this campaign."""
        folder = self.root / "files"
        folder.mkdir(exist_ok=True)
        return folder / f"{stem}-{next(self._serial):05d}{suffix}"


def prepare_workshop(workdir: Path, limits: ImageLimits = ImageLimits(),
                     max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                     good_images: int = 8) -> Workshop:
    """Write the chest phantoms, the files outside the root and the special files.

    ``workdir`` becomes the workshop root (the job's allowed root); its parent must
    be writable and outside every allowed root.
    """
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    cases = phantoms.generate_study_set(root / "good", good_images, seed=17,
                                        size=STUDY_IMAGE_SIZE)
    chest = [case.path for case in cases if case.expected_label is not None]
    shutil.copyfile(chest[0], outside / "private.dcm")
    sources = _real_files()
    return Workshop(
        root=root, outside=outside, good_images=chest,
        truncation_sources=_truncation_sources(
            [sources[n] for n in TRUNCATION_SOURCES if n in sources]
            + [c.path for c in cases if c.transfer_syntax != "deflate"]),
        compressed_sources=[sources[n] for n in COMPRESSED_SOURCES if n in sources]
        + [c.path for c in cases if c.transfer_syntax in ("jpeg_ls_lossless",
                                                          "jpeg2000_lossless", "rle")],
        non_image_sources=_copied(root / "real", [sources[n] for n in NON_IMAGE_SOURCES
                                                   if n in sources]),
        special_files=_special_files(root, outside, limits),
        limits=limits, max_event_bytes=max_event_bytes)


def _real_files() -> dict[str, Path]:
    try:
        return {path.name: path for path in scanner_files()}
    except ScannerFilesMissing:
        return {}  # phantoms alone still cover every class


def _copied(folder: Path, paths: list[Path]) -> list[Path]:
    """Copies under ``folder`` (inside the root, where the job may read them)."""
    folder.mkdir(exist_ok=True)
    return [Path(shutil.copyfile(path, folder / path.name)) for path in paths]


def _truncation_sources(paths: list[Path]) -> list[tuple[Path, list[bad_files.ElementSpan]]]:
    sources = []
    for path in paths:
        try:
            spans = bad_files.element_spans(path.read_bytes())
        except ValueError:
            continue  # offsets cannot be told (e.g. deflated): not a source for cuts
        if any(span.tag == PIXEL_DATA for span in spans):
            sources.append((path, spans))
    return sources



def _special_files(root: Path, outside: Path, limits: ImageLimits) -> dict[str, Path]:
    """Files the access classes point at: not regular, looping, or huge."""
    special = root / "special"
    special.mkdir(exist_ok=True)
    fifo = special / "fifo.dcm"
    if not fifo.exists():
        os.mkfifo(fifo)
    (special / "folder.dcm").mkdir(exist_ok=True)
    loop_a, loop_b = special / "loop-a.dcm", special / "loop-b.dcm"
    for link, target in ((loop_a, loop_b), (loop_b, loop_a)):
        if not link.is_symlink():
            link.symlink_to(target)
    dangling = special / "dangling.dcm"
    if not dangling.is_symlink():
        dangling.symlink_to(special / "never-written.dcm")
    linked_folder = root / "linked-outside"
    if not linked_folder.is_symlink():
        linked_folder.symlink_to(outside, target_is_directory=True)
    bomb = special / "deflate-bomb.dcm"
    if not bomb.exists():
        bad_files.deflate_bomb(bomb, limits.max_file_bytes)
    return {"fifo": fifo, "folder": special / "folder.dcm", "loop": loop_a,
            "dangling": dangling, "linked_folder": linked_folder, "deflate_bomb": bomb}


# -- events ----------------------------------------------------------------------------

def _uid(number: int) -> str:
    return f"2.25.{number}"


@st.composite
def event_documents(draw, uri: str, content_type: str = "application/dicom") -> dict:
    """A valid event document (a fresh event_id) for ``uri``."""
    study = draw(st.integers(1, 2 ** 120))
    return {
        "schema_version": 1, "event_id": str(draw(st.uuids())),
        "study_instance_uid": _uid(study), "series_instance_uid": _uid(study + 1),
        "sop_instance_uid": _uid(study + 2), "modality": draw(st.sampled_from(["CR", "DX"])),
        "uri": uri, "content_type": content_type,
        "sent_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "sender": SENDER, "priority": draw(st.sampled_from(["routine", "urgent"])),
    }


def encode(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _file_uri(path: str | Path, host: str = "") -> str:
    return f"file://{host}{urllib.parse.quote(str(path))}"


def _as_path_or_uri(path: str | Path) -> st.SearchStrategy[str]:
    return st.sampled_from([str(path), _file_uri(path), _file_uri(path, "localhost")])


# -- parse stage: what the event bytes themselves get wrong ---------------------------

def _is_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return True


def invalid_json_bytes(shop: Workshop) -> st.SearchStrategy[bytes]:
    """Random bytes that no JSON parser reads (the empty record included)."""
    return st.binary(max_size=2048).filter(lambda data: not _is_json(data))


def invalid_json_text(shop: Workshop) -> st.SearchStrategy[bytes]:
    """Text that is not JSON: a valid event cut short, or arbitrary text."""
    cut_event = st.tuples(event_documents(str(shop.good_images[0])), st.floats(0, 0.999)).map(
        lambda pair: encode(pair[0])[:int(len(encode(pair[0])) * pair[1])])
    text = st.text(max_size=512).map(lambda t: t.encode("utf-8"))
    return st.one_of(cut_event, text).filter(lambda data: not _is_json(data))


def deeply_nested_json(shop: Workshop) -> st.SearchStrategy[bytes]:
    """JSON nested deeper than Python's parser can recurse, within the size limit."""
    limit = shop.max_event_bytes

    def nest(args) -> bytes:
        depth, opener, closer = args
        depth = min(depth, (limit - 2) // (len(opener) + len(closer)))
        return (opener * depth + b"1" + closer * depth)

    return st.tuples(st.integers(5_000, 20_000),
                     st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")])).map(
        lambda args: nest((args[0], *args[1])))


def tombstone_record(shop: Workshop) -> st.SearchStrategy[None]:
    """A record without a value (a Kafka tombstone); only its key varies."""
    return st.none()


def not_a_json_object(shop: Workshop) -> st.SearchStrategy[bytes]:
    """Valid JSON that is not an object: null, numbers, strings, arrays of events."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=64))
    arrays = st.lists(st.one_of(scalars, event_documents(str(shop.good_images[0]))), max_size=3)
    return st.one_of(scalars, arrays).map(encode)


_JSON_NON_STRINGS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=8), st.integers(),
                                                         max_size=2))


@st.composite
def wrong_field_type(draw, shop: Workshop) -> bytes:
    """A valid event with one field's value replaced by a non-string JSON value."""
    document = draw(event_documents(str(shop.good_images[0])))
    field = draw(st.sampled_from(sorted(set(document) - {"schema_version"})))
    document[field] = draw(_JSON_NON_STRINGS)
    return encode(document)


_INVALID_VALUES = {
    "event_id": st.one_of(st.just(""), st.text(min_size=129, max_size=200),
                          st.from_regex(r"[^A-Za-z0-9][A-Za-z0-9]{0,20}", fullmatch=True),
                          st.from_regex(r"[A-Za-z0-9]{1,10}[ /\\%#@]", fullmatch=True)),
    "study_instance_uid": st.sampled_from(["", "1", "1..2", "01.2", "1.2.", "a.b.c",
                                           "1.2.3.4-5", "1." + "2" * 63]),
    "modality": st.sampled_from(["", "cr", "C/R", "X" * 17, "CR;DROP"]),
    "uri": st.one_of(st.just(""), st.text(min_size=2049, max_size=2100)),
    "content_type": st.sampled_from(["image/gif", "application/pdf", "text/plain",
                                     "APPLICATION/DICOM", "application/dicom; charset=utf-8"]),
    "sent_at": st.sampled_from(["yesterday", "2026-13-01T00:00:00Z", "2026-11-26",
                                "2026-11-26T10:00:00", "1764150000", "2026-11-26 10:00:00Z"]),
    "sender": st.one_of(st.just(""), st.text(min_size=65, max_size=80)),
    "priority": st.sampled_from(["", "URGENT", "stat", "low"]),
    "sha256": st.one_of(st.text(alphabet="0123456789abcdef", max_size=63),
                        st.text(alphabet="0123456789ABCDEF", min_size=64, max_size=64),
                        st.just("g" * 64)),
    "body_part_examined": st.sampled_from(["", "chest", "CHEST/ABDOMEN", "A" * 17]),
}


@st.composite
def invalid_field_value(draw, shop: Workshop) -> bytes:
    """A valid event with one string field breaking its pattern, enum, format or length."""
    document = draw(event_documents(str(shop.good_images[0])))
    field = draw(st.sampled_from(sorted(_INVALID_VALUES)))
    target = field if field != "study_instance_uid" else draw(st.sampled_from(
        ["study_instance_uid", "series_instance_uid", "sop_instance_uid"]))
    document[target] = draw(_INVALID_VALUES[field])
    assume(validation.errors(validation.IMAGE_EVENT, document))  # the schema is the judge
    return encode(document)


@st.composite
def missing_required_field(draw, shop: Workshop) -> bytes:
    """A valid event without one or more of its required fields."""
    document = draw(event_documents(str(shop.good_images[0])))
    required = validation.schema(validation.IMAGE_EVENT)["required"]
    for field in draw(st.sets(st.sampled_from(required), min_size=1)):
        document.pop(field, None)
    return encode(document)


_EXTRA_FIELDS = ("patient_name", "PatientName", "patient_id", "patient_birth_date",
                 "accession_number", "institution_name", "referring_physician", "image",
                 "pixels", "comment", "$schema", "__proto__", "")


@st.composite
def extra_field(draw, shop: Workshop) -> bytes:
    """A valid event with fields the contract does not have (patient identity included)."""
    document = draw(event_documents(str(shop.good_images[0])))
    names = draw(st.lists(st.one_of(st.sampled_from(_EXTRA_FIELDS), st.text(max_size=20)),
                          min_size=1, max_size=3))
    for name in names:
        if name not in document:
            document[name] = draw(st.one_of(st.text(max_size=40), _JSON_NON_STRINGS))
    assume(set(document) - set(validation.schema(validation.IMAGE_EVENT)["properties"]))
    return encode(document)


@st.composite
def unknown_schema_version(draw, shop: Workshop) -> bytes:
    """A valid v1 event body under any schema_version other than 1."""
    document = draw(event_documents(str(shop.good_images[0])))
    version = draw(st.one_of(st.integers(), st.text(max_size=8),
                             st.floats(allow_nan=False, allow_infinity=False), st.none(),
                             st.lists(st.integers(), max_size=2)))
    # JSON cannot tell 1 from 1.0, and Python treats true as 1: those are version 1.
    assume(not (version == 1 and not isinstance(version, str)))
    document["schema_version"] = version
    return encode(document)


@st.composite
def oversized_event(draw, shop: Workshop) -> bytes:
    """A valid event padded past --max_event_bytes: trailing blanks, extra field, long sender."""
    payload = encode(draw(event_documents(str(shop.good_images[0]))))
    target = shop.max_event_bytes + draw(st.integers(1, shop.max_event_bytes * 2))
    padding = target - len(payload)
    how = draw(st.sampled_from(["whitespace", "field", "sender"]))
    if how == "whitespace":
        return payload + b" " * padding
    document = json.loads(payload)
    if how == "field":
        document["padding"] = "x" * padding
    else:  # too long for the schema as well: the size is judged first
        document["sender"] = "S" * (padding + len(document["sender"]))
    return encode(document)


# -- load stage: where the URI points ------------------------------------------------

_SYSTEM_PATHS = ("/proc/self/environ", "/proc/self/mem", "/proc/1/cmdline", "/proc/self/fd/0",
                 "/proc/kcore", "/dev/zero", "/dev/urandom", "/dev/stdin", "/dev/fd/0",
                 "/dev/null", "/sys/kernel/mm/transparent_hugepage/enabled",
                 "/sys/class/net/lo/address")
_ELSEWHERE = ("/etc/passwd", "/etc/hostname", "/etc/shadow", "/root/.bashrc",
              "/usr/lib/os-release", "/var/log/dpkg.log", "/bin/sh", "/")


@st.composite
def path_traversal(draw, shop: Workshop) -> bytes:
    """A path that starts inside the root and climbs out of it with '..' segments."""
    start = shop.root / draw(st.sampled_from(["", "good", "files", "good/study_000"]))
    target = draw(st.sampled_from([shop.outside / "private.dcm",
                                   shop.outside / "never-written.dcm", *map(Path, _ELSEWHERE[:5])]))
    climb = os.path.relpath(target, start).split(os.sep)
    noise = draw(st.lists(st.sampled_from([".", "", "a/.."]), max_size=3))
    segments = [str(start)] + noise + climb
    path = "/".join(segments)
    if draw(st.booleans()):
        return encode(draw(event_documents(path)))
    encoded = "/".join(urllib.parse.quote(s) if s != ".." or draw(st.booleans())
                       else "%2e%2e" for s in path.split("/"))
    return encode(draw(event_documents(f"file://{encoded}")))


@st.composite
def symlink_escape(draw, shop: Workshop) -> bytes:
    """A link inside the root: its target outside it, in a system tree, or nowhere (dangling,
    looping). No symlink below a root is followed, whatever it points at."""
    link = shop.new_path("link")
    target_kind = draw(st.sampled_from(["outside_file", "relative", "system", "chain",
                                        "folder", "loop", "dangling"]))
    if target_kind == "outside_file":
        link.symlink_to(shop.outside / "private.dcm")
    elif target_kind == "relative":
        link.symlink_to(os.path.relpath(shop.outside / "private.dcm", link.parent))
    elif target_kind == "system":
        link.symlink_to(draw(st.sampled_from(["/etc/passwd", "/proc/self/environ",
                                              "/dev/zero", "/sys/kernel/mm"])))
    elif target_kind == "chain":
        middle = shop.new_path("link-middle")
        middle.symlink_to(shop.outside / "private.dcm")
        link.symlink_to(middle)
    elif target_kind == "folder":
        link = shop.special_files["linked_folder"] / "private.dcm"
    else:
        link = shop.special_files[target_kind]
    return encode(draw(event_documents(draw(_as_path_or_uri(link)))))


def system_path(shop: Workshop) -> st.SearchStrategy[bytes]:
    """Kernel and device files, which are never images whatever the roots say."""
    return st.sampled_from(_SYSTEM_PATHS).flatmap(_as_path_or_uri).flatmap(
        event_documents).map(encode)


@st.composite
def outside_allowed_roots(draw, shop: Workshop) -> bytes:
    """Absolute paths elsewhere, relative or Windows-style paths, NUL bytes."""
    uri = draw(st.one_of(
        st.sampled_from(_ELSEWHERE),
        st.just(str(shop.outside / "private.dcm")),  # shares root's name as a prefix
        st.sampled_from(["good/study_000/image_01.dcm", "./x.dcm", "~/x.dcm",
                         "C:\\images\\x.dcm", "\\\\pacs\\share\\x.dcm", "x.dcm"]),
        st.just(str(shop.good_images[0]) + "\x00.png"),
    ))
    if uri.startswith("/") and draw(st.booleans()):
        uri = _file_uri(uri)
    return encode(draw(event_documents(uri)))


def foreign_host_file_uri(shop: Workshop) -> st.SearchStrategy[bytes]:
    """file:// URIs naming another machine, for a file that exists here."""
    hosts = st.sampled_from(["otherhost", "127.0.0.1", "pacs.example.org", "[::1]",
                             "user@localhost", "localhost:8080", "LOCALHOST.", "%6cocalhost"])
    return hosts.map(lambda host: _file_uri(shop.good_images[0], host)).flatmap(
        event_documents).map(encode)


@st.composite
def disallowed_scheme(draw, shop: Workshop) -> bytes:
    """http(s), ftp, data, cloud and other schemes the job does not allow."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", "sftp", "gs", "s3", "hdfs",
                                   "smb", "ssh", "jar", "ldap", "gopher", "dict", "azfs"]))
    host = draw(st.sampled_from(["pacs.example.org", "169.254.169.254", "localhost",
                                 "bucket"]))
    path = draw(st.sampled_from(["/studies/x.dcm", "/latest/meta-data/", "/wado?study=1"]))
    uri = f"{scheme}://{host}{path}"
    if draw(st.integers(0, 3)) == 0:
        uri = "data:application/dicom;base64," + base64.b64encode(
            draw(st.binary(max_size=64))).decode()
    return encode(draw(event_documents(uri)))


@st.composite
def missing_or_special_file(draw, shop: Workshop) -> bytes:
    """Inside the root, but not a readable regular file: absent, a folder, a FIFO."""
    kind = draw(st.sampled_from(["absent", "absent_folder", "long_name", "fifo", "folder"]))
    if kind == "absent":
        path = shop.root / "files" / f"not-yet-{draw(st.uuids())}.dcm"
    elif kind == "absent_folder":
        path = shop.root / f"no-such-study-{draw(st.integers(0, 10 ** 6))}" / "image.dcm"
    elif kind == "long_name":
        path = shop.root / ("n" * draw(st.integers(256, 400)) + ".dcm")
    else:
        path = shop.special_files[kind]
    return encode(draw(event_documents(draw(_as_path_or_uri(path)))))


@st.composite
def sha256_mismatch(draw, shop: Workshop) -> bytes:
    """A good image announced with a digest that is not its own."""
    path = draw(st.sampled_from(shop.good_images))
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    digest = draw(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
    assume(digest != actual)
    return encode(draw(event_documents(str(path))) | {"sha256": digest})


@st.composite
def oversized_file(draw, shop: Workshop) -> bytes:
    """A file over --max_file_bytes (sparse: it costs no disk)."""
    size = shop.limits.max_file_bytes + draw(st.integers(1, 2 ** 32))
    path = bad_files.sparse_file(shop.new_path("huge"), size)
    return encode(draw(event_documents(str(path))))


# -- decode stage: what the file holds --------------------------------------------------

_MAGIC = (b"%PDF-1.7\n", b"PK\x03\x04", b"\x7fELF\x02\x01\x01", b"GIF89a", b"BM",
          b"II*\x00", b"MM\x00*", b"\x1f\x8b\x08", b"<!DOCTYPE html>", b"{\"a\": 1}",
          b"RIFF\x00\x00\x00\x00WEBP", b"\x00\x00\x00\x0cjP  \r\n\x87\n")
_CONTENT_TYPES = {".dcm": "application/dicom", ".png": "image/png", ".jpg": "image/jpeg"}


def _looks_like_an_image(data: bytes) -> bool:
    return (data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))
            or data[128:132] == b"DICM")


@st.composite
def not_dicom_file(draw, shop: Workshop) -> bytes:
    """Text, random bytes or other formats, named and declared as an image."""
    content = draw(st.one_of(
        st.binary(max_size=4096),
        st.text(max_size=1024).map(lambda t: t.encode("utf-8")),
        st.tuples(st.sampled_from(_MAGIC), st.binary(max_size=512)).map(b"".join)))
    assume(not _looks_like_an_image(content))
    suffix = draw(st.sampled_from(sorted(_CONTENT_TYPES)))
    path = shop.new_path("not-an-image", suffix)
    path.write_bytes(content)
    declared = draw(st.sampled_from([_CONTENT_TYPES[suffix], *_CONTENT_TYPES.values()]))
    return encode(draw(event_documents(str(path), declared)))


@st.composite
def truncated_dicom_header(draw, shop: Workshop) -> bytes:
    """A real DICOM file cut inside its preamble, meta information or header elements."""
    source, spans = draw(st.sampled_from(shop.truncation_sources))
    header = [s for s in spans if s.tag < PIXEL_DATA]
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, header[0].start))  # preamble, prefix or meta
    else:
        span = draw(st.sampled_from(header))
        cut = draw(st.integers(span.start + 1, span.end - 1))  # inside the element
    path = shop.new_path("truncated-header")
    path.write_bytes(bad_files.truncated(source.read_bytes(), cut))
    return encode(draw(event_documents(str(path))))


@st.composite
def truncated_pixel_data(draw, shop: Workshop) -> bytes:
    """A real DICOM file cut inside the value of its Pixel Data."""
    source, spans = draw(st.sampled_from(shop.truncation_sources))
    (pixels,) = [s for s in spans if s.tag == PIXEL_DATA]
    # Short of the last 8 bytes: an encapsulated value ends with its delimiter item.
    cut = draw(st.integers(pixels.value_start + 1, pixels.end - 9))
    path = shop.new_path("truncated-pixels")
    path.write_bytes(bad_files.truncated(source.read_bytes(), cut))
    return encode(draw(event_documents(str(path))))


@st.composite
def corrupt_compressed_pixel_data(draw, shop: Workshop) -> bytes:
    """JPEG, JPEG-LS, JPEG 2000 or RLE pixel data whose codestream header is garbled."""
    source = draw(st.sampled_from(shop.compressed_sources))
    garbled = bad_files.garbled_codestream(source.read_bytes(),
                                           draw(st.sampled_from(bad_files.GARBLINGS)),
                                           draw(st.integers(0, 255)))
    path = shop.new_path("garbled")
    path.write_bytes(garbled)
    return encode(draw(event_documents(str(path))))


@st.composite
def codestream_size_bomb(draw, shop: Workshop) -> bytes:
    """A compressed frame whose codestream claims more pixels than the DICOM header."""
    source = draw(st.sampled_from([p for p in shop.compressed_sources
                                   if bad_files.codec_of(_first_fragment(p)) != "rle"]))
    header = _header_size(source)
    rows = draw(st.integers(header // 65535 + 1, 65535))
    columns = draw(st.integers(header // rows + 1, 65535))
    path = shop.new_path("codestream-bomb")
    path.write_bytes(bad_files.codestream_size_bomb(source.read_bytes(), rows, columns))
    return encode(draw(event_documents(str(path))))


def _first_fragment(path: Path) -> bytes:
    data = path.read_bytes()
    offset, length = bad_files.first_fragment(data)
    return data[offset:offset + 8]


def _header_size(path: Path) -> int:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return int(header.Rows) * int(header.Columns)


@st.composite
def non_image_dicom(draw, shop: Workshop) -> bytes:
    """DICOM objects without pixels: reports, documents, waveforms, presentation states."""
    kind = draw(st.sampled_from(["report", "pdf", "key_objects", "presentation_state",
                                 "real_file"]))
    if kind == "real_file" and shop.non_image_sources:
        path = draw(st.sampled_from(shop.non_image_sources))
    else:
        builder = {"pdf": bad_files.encapsulated_pdf, "key_objects": bad_files.key_object_selection,
                   "presentation_state": bad_files.presentation_state}.get(
            kind, bad_files.structured_report)
        path = builder(shop.new_path(kind), draw(st.text(max_size=60)))
    return encode(draw(event_documents(str(path))))


@st.composite
def frame_pixel_bomb(draw, shop: Workshop) -> bytes:
    """Rows x Columns over --max_frame_pixels, over a few bytes of pixel data."""
    limit = shop.limits.max_frame_pixels
    rows = draw(st.integers(limit // 65535 + 1, 65535))
    columns = draw(st.integers(limit // rows + 1, 65535))
    path = bad_files.pixel_bomb(shop.new_path("frame-bomb"), rows=rows, columns=columns,
                                samples=draw(st.sampled_from([1, 3])),
                                bits=draw(st.sampled_from([8, 16])))
    return encode(draw(event_documents(str(path))))


@st.composite
def frame_count_bomb(draw, shop: Workshop) -> bytes:
    """Number of Frames over --max_frames, with small frames."""
    frames = draw(st.integers(shop.limits.max_frames + 1, 2 ** 31 - 1))
    path = bad_files.pixel_bomb(shop.new_path("frames-bomb"), rows=draw(st.integers(1, 64)),
                                columns=draw(st.integers(1, 64)), frames=frames)
    return encode(draw(event_documents(str(path))))


@st.composite
def total_sample_bomb(draw, shop: Workshop) -> bytes:
    """Frames and frame size each within the limits, their product over the sample limit."""
    limits = shop.limits
    samples = draw(st.sampled_from([1, 3]))
    least_frames = limits.max_total_samples // (limits.max_frame_pixels * samples) + 1
    frames = draw(st.integers(max(2, least_frames), limits.max_frames))
    pixels_needed = limits.max_total_samples // (frames * samples) + 1
    assume(pixels_needed <= limits.max_frame_pixels)
    rows = draw(st.integers(max(1, pixels_needed // 65535 + 1),
                            min(65535, limits.max_frame_pixels)))
    columns = draw(st.integers(-(-pixels_needed // rows), limits.max_frame_pixels // rows))
    assume(1 <= columns <= 65535)
    path = bad_files.pixel_bomb(shop.new_path("samples-bomb"), rows=rows, columns=columns,
                                frames=frames, samples=samples, bits=8)
    return encode(draw(event_documents(str(path))))


@st.composite
def raster_bomb(draw, shop: Workshop) -> bytes:
    """PNG and JPEG headers claiming more pixels than --max_frame_pixels."""
    limit = shop.limits.max_frame_pixels
    if draw(st.booleans()):
        width = draw(st.integers(1, 2 ** 31 - 1))
        height = draw(st.integers(limit // width + 1, 2 ** 31 - 1))
        path = bad_files.png_header_bomb(shop.new_path("bomb", ".png"), width, height)
        content_type = "image/png"
    else:
        width = draw(st.integers(limit // 65535 + 1, 65535))
        height = draw(st.integers(limit // width + 1, 65535))
        path = bad_files.jpeg_header_bomb(shop.new_path("bomb", ".jpg"), width, height)
        content_type = "image/jpeg"
    return encode(draw(event_documents(str(path), content_type)))


def deflate_bomb(shop: Workshop) -> st.SearchStrategy[bytes]:
    """A deflated data set that inflates past --max_file_bytes (one file, many events)."""
    return event_documents(str(shop.special_files["deflate_bomb"])).map(encode)


# -- the classes ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HostileClass:
    """One kind of bad input: how to generate it and the reason the job must give it."""
    name: str
    reason: Reason
    strategy: Callable[[Workshop], st.SearchStrategy]
    most: int | None = None  # a cap, for inputs that cost the job real work each time

    @property
    def description(self) -> str:
        return (self.strategy.__doc__ or "").strip().splitlines()[0]


HOSTILE_CLASSES = (
    HostileClass("invalid_json_bytes", Reason.INVALID_JSON, invalid_json_bytes),
    HostileClass("invalid_json_text", Reason.INVALID_JSON, invalid_json_text),
    HostileClass("deeply_nested_json", Reason.INVALID_JSON, deeply_nested_json),
    HostileClass("tombstone_record", Reason.INVALID_JSON, tombstone_record),
    HostileClass("not_a_json_object", Reason.SCHEMA_VIOLATION, not_a_json_object),
    HostileClass("wrong_field_type", Reason.SCHEMA_VIOLATION, wrong_field_type),
    HostileClass("invalid_field_value", Reason.SCHEMA_VIOLATION, invalid_field_value),
    HostileClass("missing_required_field", Reason.SCHEMA_VIOLATION, missing_required_field),
    HostileClass("extra_field", Reason.SCHEMA_VIOLATION, extra_field),
    HostileClass("unknown_schema_version", Reason.UNSUPPORTED_SCHEMA_VERSION,
                 unknown_schema_version),
    HostileClass("oversized_event", Reason.PAYLOAD_TOO_LARGE, oversized_event),
    HostileClass("path_traversal", Reason.URI_NOT_ALLOWED, path_traversal),
    HostileClass("symlink_escape", Reason.URI_NOT_ALLOWED, symlink_escape),
    HostileClass("system_path", Reason.URI_NOT_ALLOWED, system_path),
    HostileClass("outside_allowed_roots", Reason.URI_NOT_ALLOWED, outside_allowed_roots),
    HostileClass("foreign_host_file_uri", Reason.URI_NOT_ALLOWED, foreign_host_file_uri),
    HostileClass("disallowed_scheme", Reason.URI_NOT_ALLOWED, disallowed_scheme),
    HostileClass("missing_or_special_file", Reason.UNREADABLE_URI, missing_or_special_file),
    HostileClass("sha256_mismatch", Reason.CHECKSUM_MISMATCH, sha256_mismatch),
    HostileClass("oversized_file", Reason.FILE_TOO_LARGE, oversized_file),
    HostileClass("not_dicom_file", Reason.NOT_AN_IMAGE, not_dicom_file),
    HostileClass("truncated_dicom_header", Reason.NOT_AN_IMAGE, truncated_dicom_header),
    HostileClass("truncated_pixel_data", Reason.UNDECODABLE_PIXEL_DATA, truncated_pixel_data),
    HostileClass("corrupt_compressed_pixel_data", Reason.UNDECODABLE_PIXEL_DATA,
                 corrupt_compressed_pixel_data),
    HostileClass("codestream_size_bomb", Reason.UNDECODABLE_PIXEL_DATA, codestream_size_bomb),
    HostileClass("non_image_dicom", Reason.NO_PIXEL_DATA, non_image_dicom),
    HostileClass("frame_pixel_bomb", Reason.OVER_SIZE_LIMITS, frame_pixel_bomb),
    HostileClass("frame_count_bomb", Reason.OVER_SIZE_LIMITS, frame_count_bomb),
    HostileClass("total_sample_bomb", Reason.OVER_SIZE_LIMITS, total_sample_bomb),
    HostileClass("raster_bomb", Reason.OVER_SIZE_LIMITS, raster_bomb),
    HostileClass("deflate_bomb", Reason.OVER_SIZE_LIMITS, deflate_bomb, most=5),
)


# -- good events: legal but unusual, each must get its finding -------------------------

def _sent_at_forms(now: dt.datetime) -> st.SearchStrategy[str]:
    """RFC 3339 spellings of ``now``: Z or offsets, fractions or none, t/z in lower case."""
    def spell(args) -> str:
        offset_minutes, digits, lower = args
        zone = dt.timezone(dt.timedelta(minutes=offset_minutes))
        text = now.astimezone(zone).isoformat(
            timespec={0: "seconds", 3: "milliseconds", 6: "microseconds"}[digits])
        if offset_minutes == 0:
            text = text.replace("+00:00", "Z")
        return text.replace("T", "t").replace("Z", "z") if lower else text

    return st.tuples(st.sampled_from([0, 0, 60, -300, 330, 14 * 60, -12 * 60]),
                     st.sampled_from([0, 3, 6]), st.booleans()).map(spell)


@st.composite
def good_event(draw, shop: Workshop) -> tuple[str, bytes, bytes]:
    """(event_id, payload, key): a valid event for a chest phantom, in an unusual legal form."""
    path = draw(st.sampled_from(shop.good_images))
    event = event_for_file(path, sender=SENDER, with_sha256=draw(st.booleans())).to_document()
    event_id = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}", fullmatch=True))
    event["event_id"] = f"{event_id[:90]}-{draw(st.uuids()).hex}"
    event["uri"] = draw(st.sampled_from([str(path), _file_uri(path),
                                         _file_uri(path, "localhost"),
                                         "FILE://" + urllib.parse.quote(str(path))]))
    event["sent_at"] = draw(_sent_at_forms(dt.datetime.now(dt.timezone.utc)))
    event["sender"] = draw(st.text(min_size=1, max_size=64))
    event["priority"] = draw(st.sampled_from(["routine", "urgent"]))
    if draw(st.booleans()):
        event.pop("body_part_examined", None)
    if draw(st.integers(0, 9)) == 0:
        event["schema_version"] = 1.0  # the same number as 1 in JSON
    problems = validation.errors(validation.IMAGE_EVENT, event)
    if problems:
        raise AssertionError(f"the good-event generator made an invalid event: {problems}")
    key = event["study_instance_uid"].encode()
    return event["event_id"], json.dumps(event, ensure_ascii=draw(st.booleans())).encode(), key
