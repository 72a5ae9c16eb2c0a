"""Error types raised for bad user input (config, data, tensors).

Entry points turn these into a one-paragraph message and a non-zero exit code.
"""


class FewShotError(Exception):
    """Base class for every error caused by user input rather than a bug."""


class ConfigError(FewShotError, ValueError):
    """A config file, key or value is wrong."""


class DataError(FewShotError, ValueError):
    """A dataset root, split file, image or episode is missing or malformed."""
