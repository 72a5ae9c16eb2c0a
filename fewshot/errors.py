"""Error types raised for bad user input (config, data, tensors).

Entry points turn these into a one-paragraph message and a non-zero exit code.
"""


class FewShotError(Exception):
    """Base class for every error caused by user input rather than a bug."""


class ConfigError(FewShotError, ValueError):
    """A config file, key or value is wrong."""


class OptionError(ConfigError):
    """A ConfigError about one option, named by its ``key`` relative to the options it was
    given in (``temperature``); :meth:`under` names it from where those options were read
    (``model.options.temperature``), so only the layer that read a config knows its keys."""

    def __init__(self, key: str, detail: str):
        self.key, self.detail = key, detail
        super().__init__(f"{key}: {detail}" if key else detail)

    def under(self, prefix: str) -> "OptionError":
        return OptionError(".".join(k for k in (prefix, self.key) if k), self.detail)


class DataError(FewShotError, ValueError):
    """A dataset root, split file, image or episode is missing or malformed."""
