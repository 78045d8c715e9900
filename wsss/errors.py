"""Exceptions. Every message names the file (or option) at fault and says how to fix it."""


class WsssError(Exception):
    """Base class of every error wsss raises on purpose."""


class DatasetError(WsssError):
    """The dataset as a whole cannot be used (missing folder, empty split file, unknown layout)."""


class ImageError(WsssError):
    """One image (or its annotation) cannot be used; the stage records it and goes on."""


class StageError(WsssError):
    """A stage folder is unusable (config mismatch, missing manifest, missing upstream)."""


class ConfigError(WsssError):
    """A config value or recipe key is wrong."""


class UnsafeFileError(WsssError):
    """A checkpoint or array file holds something other than plain tensors/arrays."""


class DiskFullError(WsssError):
    """The disk (or quota) is full. Not one image's fault: the stage stops; finished outputs are kept."""


class UnwritableError(WsssError):
    """A file or folder cannot be written (no permission, read-only file system). Not one image's fault: the stage
    stops, as it does on a full disk."""
