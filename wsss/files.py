"""Opening input files defensively. The lowest floor beside :mod:`wsss.errors`: it imports nothing else of wsss.

* **Regular files only.** A FIFO, a socket or a device in place of an image, a mask or a text file would block a
  stage forever (a FIFO without a writer) or stream without end (``/dev/zero``). :func:`open_regular` opens with
  ``O_NONBLOCK`` (which returns at once even on a FIFO) and checks the opened file with ``fstat``, so the check and
  the read are about the same file; anything but a regular file is refused naming it.
* **Text in the encodings people produce.** :func:`read_text` reads UTF-8 with or without a byte-order mark
  (Windows Notepad writes one), LF or CRLF line ends; a file that is not UTF-8 is one error naming the file, the
  line and the column. :func:`read_csv_rows` gives each CSV row with its line number, for errors that name it.
* **The pixel limit** of decoded images and masks (:func:`max_pixels`): ``WSSS_MAX_PIXELS`` (or ``wsss
  --max-pixels``), default :data:`DEFAULT_MAX_PIXELS`.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError, DatasetError

MAX_PIXELS_ENV = "WSSS_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP (e.g. 8660x5773): ~150 MB as decoded RGB, several GB of float score maps


def max_pixels() -> int:
    """The largest width x height an image or mask may decode to: ``$WSSS_MAX_PIXELS`` or
    :data:`DEFAULT_MAX_PIXELS`. A value that is not a positive whole number raises :class:`ConfigError`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: give the pixel limit as a positive whole "
                          f"number (width x height), e.g. {MAX_PIXELS_ENV}={DEFAULT_MAX_PIXELS}")
    return value


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: str | os.PathLike, what: str = "file", error: type[Exception] = DatasetError) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (symlinks to one are fine); else raise ``error``
    naming the file. A missing file raises :class:`FileNotFoundError` (callers word their own fix)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror}); fix its permissions") from None
    except OSError as exc:
        raise error(f"{path}: cannot open the {what} ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is a {_kind(mode)}, not a regular file; wsss reads each {what} from a plain file "
                        "(a pipe or device would block the stage): put the file itself there")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def decode_utf8(data: bytes, path: str | os.PathLike, error: type[Exception] = DatasetError) -> str:
    """``data`` decoded as UTF-8, a leading byte-order mark dropped; else ``error`` naming the line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{path}: line {line}, column {column}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as "
            "UTF-8 (e.g. 'iconv -f latin1 -t utf-8 OLD > NEW', or 'Save as... UTF-8' in an editor)"
        ) from None


def read_text(path: str | os.PathLike, what: str = "text file", error: type[Exception] = DatasetError) -> str:
    """A text input file as a string: regular file only, UTF-8 (BOM dropped); ``splitlines()`` handles CRLF."""
    with open_regular(path, what, error) as fh:
        data = fh.read()
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise error(f"{path}: line {line}: holds a NUL byte, so it is not a text file (UTF-16? binary?); save it as "
                    "UTF-8 text")
    return decode_utf8(data, path, error)


def read_yaml(path: str | os.PathLike, what: str = "YAML file", error: type[Exception] = ConfigError,
              not_found: str | None = None):
    """``yaml.safe_load`` of a text input file (:func:`read_text`: regular file, UTF-8; no arbitrary objects). A
    missing file raises ``error`` with ``"<path>: <not_found>"`` (default: the ``what`` is not found), invalid
    YAML raises ``error`` naming the file and the parser's complaint."""
    import yaml

    try:
        return yaml.safe_load(read_text(path, what, error))
    except FileNotFoundError:
        raise error(f"{path}: {not_found or what + ' not found'}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None


def read_csv_rows(path: str | os.PathLike, what: str = "CSV file",
                  error: type[Exception] = DatasetError) -> list[tuple[int, list[str]]]:
    """``[(line number, cells), ...]`` of a CSV text file (UTF-8, BOM dropped, LF or CRLF); blank rows are left out.
    A malformed row (e.g. an unclosed quote) raises ``error`` naming the line."""
    reader = csv.reader(io.StringIO(read_text(path, what, error), newline=""))
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise error(f"{path}: line {start}: not valid CSV ({exc}); fix the line") from None
        if row and any(cell.strip() for cell in row):
            rows.append((start, row))
