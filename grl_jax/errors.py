"""The errors a user can cause, one family: `grl_jax.main` prints any of them as one line.

Each message names the config field, file or value at fault and what was expected, so the
line alone tells the user what to change. Anything else that escapes is a bug and keeps its
traceback. The classes also derive from the builtin a caller would naturally catch
(`ValueError`, `OSError`, ...), so `except ValueError` keeps working around library calls.
"""
from __future__ import annotations


class GrlJaxError(Exception):
  """Base of every user-facing error (bad config, dataset, checkpoint, conversion, workdir)."""


class ConfigError(GrlJaxError, ValueError):
  """A config field or command-line argument holds a value the system cannot run with."""


class DatasetError(GrlJaxError, ValueError):
  """A dataset root, index file or row is missing or malformed; names the file / row."""


class BadFrameError(GrlJaxError, IOError):
  """A frame is missing or cannot be decoded while `config.data.strict` is set."""


class CheckpointError(GrlJaxError, ValueError):
  """A checkpoint directory is missing, incomplete or of the wrong kind for the request."""


class ConversionError(GrlJaxError, ValueError):
  """A source checkpoint does not match the requested format or target model."""


class WorkdirError(GrlJaxError, OSError):
  """The workdir cannot be created or written."""


class NonFiniteLossError(GrlJaxError, FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class InputError(GrlJaxError, ValueError):
  """An array of the wrong layout, size, dtype or value range was passed to an Extractor."""


class ExportError(GrlJaxError, ValueError):
  """An export cannot run here (missing package) or its artifact disagrees with JAX."""


class StorageError(GrlJaxError, OSError):
  """A remote path whose bucket is missing, not accessible, or needs credentials we lack."""
