"""File I/O: images, palette masks, score maps, JSON/CSV, all written atomically.

Every writer goes through :func:`atomic_write`: the bytes land in a temporary file in the same folder, which is
then renamed over the target with ``os.replace``. A killed process leaves the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .conventions import IGNORE, palette_for
from .errors import (
    DiskFullError,
    ImageError,
    StageError,
    UnsafeFileError,
    UnwritableError,
    WsssError,
)
from .files import MAX_PIXELS_ENV, decode_utf8, max_pixels, open_regular

# wsss refuses images above its own pixel limit (max_pixels) before decoding them, so PIL's warning for images above
# its default limit says nothing more: keep it out of the logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*")
MAX_ID_LENGTH = 200  # leaves room for suffixes within the usual 255-byte file-name limit
TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files are hidden: ".<name>.<random>.tmp"


def check_image_id(image_id: str, where: str = "") -> str:
    """Return ``image_id`` if it is a safe file stem, else raise :class:`ImageError`.

    Ids become file names inside a stage folder, so path separators, ``..``, leading dots and anything other than
    letters, digits, ``_ . + -`` are rejected: no file is ever written outside the stage folder.
    """
    src = f" in {where}" if where else ""
    if image_id and any(ch.isspace() for ch in image_id):
        suggestion = re.sub(r"\s+", "_", image_id.strip())
        raise ImageError(
            f"image id {image_id!r}{src} holds a space: image ids are file stems without spaces; rename the image "
            f"(e.g. to {suggestion!r}) and its line"
        )
    if not image_id or ".." in image_id or not _ID_PATTERN.fullmatch(image_id):
        raise ImageError(
            f"image id {image_id!r}{src} is not a plain file stem: use ASCII letters, digits and _ . + - only "
            "(no '/', '\\\\' or '..'); rename the image and its line"
        )
    if len(image_id) > MAX_ID_LENGTH:
        raise ImageError(f"image id {image_id[:40]!r}...{src} is {len(image_id)} characters long; rename the image "
                         f"to at most {MAX_ID_LENGTH} characters")
    return image_id


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(
        f"{path}: no space left on the device ({os.strerror(exc.errno)}); free some space and re-run the same "
        "command: finished outputs are kept and the run resumes"
    )


def unwritable(path: str | os.PathLike, exc: OSError) -> UnwritableError:
    """The error for an output that cannot be written (no permission, read-only file system)."""
    where = exc.filename or path
    return UnwritableError(
        f"{where}: cannot write here ({os.strerror(exc.errno)}); give a --run folder you can write to, or fix the "
        "folder's permissions (a read-only mount cannot hold a run)"
    )


def output_error(path: str | os.PathLike, exc: OSError) -> WsssError | None:
    """The wsss error for an OSError met while writing ``path`` (full disk, no permission), or None for others."""
    if exc.errno in _DISK_FULL:
        return _disk_full(Path(path), exc)
    if exc.errno in _UNWRITABLE:
        return unwritable(path, exc)
    return None


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` for outputs (mode as the umask says); no permission or a read-only mount raises
    :class:`~wsss.errors.UnwritableError`, a full disk :class:`~wsss.errors.DiskFullError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = output_error(path, exc)
        if err is None:
            raise
        raise err from None
    return path


def _umask() -> int:
    """The process umask, read without changing it where the system allows (``os.umask`` sets it to read it,
    which another thread could see); the value is read anew each time, so a changed umask is honoured."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on error delete it.

    The temporary file is hidden (``.<name>.<random>.tmp``), so no reader takes it for an output; a process killed
    mid-write leaves at most such a file (stage runners delete stale ones when they resume) and ``path`` either
    absent or whole. A full disk (ENOSPC / EDQUOT) raises :class:`~wsss.errors.DiskFullError` and leaves ``path``
    as it was; a folder without write permission or on a read-only mount raises
    :class:`~wsss.errors.UnwritableError`. The file gets the mode a plain ``open`` would give it (``0o666`` less the
    umask), not the private 0600 of the temporary file, so a colleague can read a shared runs folder.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        err = output_error(path, exc)
        if err is None:
            raise
        raise err from exc
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the hidden temporary files that a killed :func:`atomic_write` left under ``folder``; returns how many.

    Only call it when no other process writes into ``folder``.
    """
    count = 0
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                count += 1
    return count


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike):
    """A JSON file (regular files only: a FIFO is refused with :class:`~wsss.errors.StageError`)."""
    with open_regular(path, "JSON file", StageError) as fh:
        return json.loads(fh.read())


def write_csv(path: str | os.PathLike, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line (a manifest, a log) as dicts. Regular files only, UTF-8 (a BOM is
    dropped), LF or CRLF; anything else raises :class:`~wsss.errors.StageError` naming the file (and line)."""
    with open_regular(path, "CSV file", StageError) as fh:
        text = decode_utf8(fh.read(), path, StageError)
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise StageError(f"{path}: not valid CSV ({exc}); it is damaged: re-run the stage that wrote it") from None


# --------------------------------------------------------------------------------------------------- images
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB.

    Conversions (documented behaviour): grayscale is repeated to three channels; RGBA / LA / PA drop alpha (no
    blending); palette images are expanded through their palette; CMYK / YCbCr go through PIL's RGB conversion;
    16-bit images (PIL modes ``I;16*``) keep their high byte (``value >> 8``); 32-bit integer or float images
    (modes ``I`` / ``F``) are scaled by 255/65535 when a value exceeds 255, else taken as 8-bit values (clipped to
    0..255). EXIF orientation is not applied (masks and boxes refer to the stored pixels). A missing, unreadable
    or truncated file raises :class:`ImageError`.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: image file not found; check the id in the split file or add the image")
    with _decoded(path, "image") as img:
        try:
            return _to_rgb(img)
        except (OSError, ValueError) as exc:
            raise ImageError(f"{path}: cannot convert the image to RGB ({exc}); re-export it as 8-bit RGB") from exc


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Image.DecompressionBombError)


@contextlib.contextmanager
def _decoded(path: Path, what: str) -> Iterator[Image.Image]:
    """The one guard every image and mask read goes through: a regular file only (a FIFO or device is refused at
    once), its width x height checked against :func:`wsss.files.max_pixels` from the header before any pixel is
    decoded (a decompression bomb is refused naming the file), then fully decoded; any decoder error is an
    :class:`ImageError` naming the file."""
    limit = max_pixels()
    if limit > (Image.MAX_IMAGE_PIXELS or 0) * 2:  # PIL refuses above twice its own limit: let wsss's rule decide
        Image.MAX_IMAGE_PIXELS = limit
    fix = ("the file is corrupt or truncated: re-export or remove it" if what == "image"
           else "re-export it as a PNG")
    try:
        fh = open_regular(path, f"{what} file", ImageError)
    except FileNotFoundError:
        raise ImageError(f"{path}: {what} file not found") from None
    with fh:
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise ImageError(_too_large(path, what, None, limit, exc)) from None
        except _DECODE_ERRORS as exc:
            reason = str(exc).replace(repr(fh), repr(str(path)))  # PIL names the file object: name the file
            raise ImageError(f"{path}: cannot decode {what} ({reason}); {fix}") from None
        with img:
            width, height = img.size
            if width * height > limit:
                raise ImageError(_too_large(path, what, (width, height), limit))
            try:
                img.load()
            except MemoryError:
                raise ImageError(f"{path}: not enough memory to decode the {width}x{height} {what}; lower "
                                 f"{MAX_PIXELS_ENV} or shrink the {what}") from None
            except _DECODE_ERRORS as exc:
                raise ImageError(f"{path}: cannot decode {what} ({exc}); the file is corrupt or truncated: {fix} "
                                 "or remove it") from None
            yield img


def _too_large(path: Path, what: str, size, limit: int, exc=None) -> str:
    shown = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else f"too large ({exc})"
    return (f"{path}: {what} is {shown}, above the limit of {limit:,} pixels (a decompression bomb, or "
            f"simply too large for this machine); shrink or tile the {what}, or raise the limit with "
            f"{MAX_PIXELS_ENV}=N or 'wsss --max-pixels N'")


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16) >> 8
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    if mode in ("I", "F"):
        arr = np.asarray(img)
        hi = 65535 if arr.max(initial=0) > 255 else 255
        arr = np.clip(arr.astype(np.float64) * 255.0 / hi, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------- masks
def read_mask(path: str | os.PathLike, num_classes: int | None = None, *, ignore_values: tuple[int, ...] = ()) -> np.ndarray:
    """Read a label mask as (H, W) uint8.

    Palette PNGs give their indices, grayscale PNGs their values. Values listed in ``ignore_values`` become 255.
    With ``num_classes`` given, any value outside ``{0..num_classes-1, 255}`` raises :class:`ImageError`.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: mask file not found")
    with _decoded(path, "mask") as img:
        if img.mode not in ("P", "L", "I;16", "I", "1"):
            raise ImageError(
                f"{path}: mask has mode {img.mode}; save masks as palette (P) or grayscale (L) PNGs whose "
                "pixel values are class ids"
            )
        try:
            mask = np.asarray(img)
        except (OSError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode mask ({exc}); re-export it as a PNG") from exc
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.max(initial=0) > 255:
        raise ImageError(f"{path}: mask values up to {mask.max()} do not fit uint8 labels (0..254, 255 = ignore)")
    mask = mask.astype(np.uint8)
    for value in ignore_values:
        mask[mask == value] = IGNORE
    if num_classes is not None:
        bad = (mask >= num_classes) & (mask != IGNORE)
        if bad.any():
            values = sorted(np.unique(mask[bad]).tolist())
            raise ImageError(
                f"{path}: mask values {values[:8]} are outside 0..{num_classes - 1} and 255; relabel them or "
                "fix the class list"
            )
    return mask


def write_mask(path: str | os.PathLike, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an (H, W) uint8 mask as a palette PNG (atomically)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) uint8, got {mask.shape} {mask.dtype}")
    img = Image.fromarray(mask, mode="P")
    img.putpalette((palette if palette is not None else palette_for(256)).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    write_bytes(path, buf.getvalue())


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8 array as a PNG (atomically)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    write_bytes(path, buf.getvalue())


def write_jpeg(path: str | os.PathLike, array: np.ndarray, quality: int = 90) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------- scores
def write_scores(path: str | os.PathLike, scores: np.ndarray, class_ids) -> None:
    """Write (K, H, W) score maps as float16 plus their class ids to an ``.npz`` (atomically, no pickles)."""
    scores = np.asarray(scores)
    class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
    if scores.ndim != 3 or scores.shape[0] != class_ids.size:
        raise ValueError(f"scores {scores.shape} do not match {class_ids.size} class ids")
    buf = io.BytesIO()
    np.savez_compressed(buf, scores=scores.astype(np.float16), class_ids=class_ids)
    write_bytes(path, buf.getvalue())


def read_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(scores (K, H, W) float32, class_ids (K,) int)`` from an ``.npz``; pickled content is refused."""
    path = Path(path)
    try:
        with open_regular(path, "scores file", UnsafeFileError) as fh, np.load(fh, allow_pickle=False) as data:
            if "scores" not in data.files or "class_ids" not in data.files:
                raise UnsafeFileError(f"{path}: not a wsss scores file (keys {data.files}); re-run the stage")
            scores = data["scores"].astype(np.float32)
            class_ids = data["class_ids"].astype(np.int64)
    except UnsafeFileError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: scores file not found; re-run the upstream stage") from exc
    except (ValueError, TypeError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UnsafeFileError(
            f"{path}: not a plain numeric .npz ({exc}); it may be corrupt or tampered with: delete it and re-run "
            "the stage that wrote it"
        ) from exc
    if scores.ndim != 3 or scores.shape[0] != class_ids.size:
        raise UnsafeFileError(f"{path}: scores {scores.shape} do not match class ids {class_ids.shape}")
    return scores, class_ids


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike, state) -> None:
    """Write a torch checkpoint atomically (serialised in memory, then :func:`write_bytes`): a kill leaves the old
    file or the new one, never half of one. Every checkpoint writer in wsss goes through here."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """Load a torch checkpoint safely: ``torch.load(path, weights_only=True)``, so it can hold only tensors and
    plain containers (dict, list, tuple, str, numbers). Every checkpoint reader in wsss goes through here.

    A file holding any other pickled object (which could run code when unpickled) raises
    :class:`~wsss.errors.UnsafeFileError` naming the file and nothing is executed; a missing or corrupt file raises
    :class:`~wsss.errors.UnsafeFileError` too (with its own fix).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UnsafeFileError(f"{path}: checkpoint file not found; check the path or re-run training")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused to load: the checkpoint holds pickled objects other than tensors and plain "
            f"containers ({_refusal_reason(exc)}), which could run code; it may be tampered with. Only use "
            "checkpoints written by wsss, or re-run training"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UnsafeFileError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:200]}); it is corrupt or "
            "truncated: delete it and re-run training"
        ) from None


def _refusal_reason(exc: Exception) -> str:
    """torch's reason for a ``weights_only`` refusal (which global was refused), without its boilerplate (the
    advice to load with ``weights_only=False`` or to allow-list the global is exactly what must not be done)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if re.search(r"GLOBAL|global|Unsupported|WeightsUnpickler|opcode", line):
            return re.split(r"\s(?:Please|If you|Check the documentation|To )\b", line, maxsplit=1)[0].rstrip(" .")
    skip = ("Weights only load failed", "Check the documentation", "Re-running")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    return (useful or lines or [type(exc).__name__])[0][:300]
