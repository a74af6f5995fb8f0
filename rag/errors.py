"""User-facing errors: the CLI prints their message and exits with a documented code, no traceback."""


class RagError(Exception):
    """Base of every error caused by input, configuration or environment rather than a bug."""

    exit_code = 2


class ConfigError(RagError):
    """A bad option, an unknown component name or an invalid argument."""


class EmptyQueryError(RagError):
    """A query or question with no text."""


class CorpusError(RagError):
    """A corpus file that cannot be read: missing, malformed, duplicate ids."""

    exit_code = 3


class IndexFormatError(RagError):
    """A missing, corrupt or mismatched index."""

    exit_code = 4


class ModelError(RagError):
    """A model that is unknown, not installed, or fails its checksum."""

    exit_code = 5


class CollectionBusyError(RagError):
    """Another process kept the collection's writer lock too long, or changed the index under a build."""

    exit_code = 4


class RemoteError(RagError):
    """A remote server (an OpenAI-compatible generator) that cannot be reached, refuses or breaks off."""

    exit_code = 6
