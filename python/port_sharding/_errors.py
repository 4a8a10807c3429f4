"""The exceptions of port_sharding: one class per error of the Rust core, all under :class:`Error`.

Errors that come from the operating system are also :class:`OSError` with ``errno`` set, so
``except OSError`` keeps working (e.g. ``AddrInUseError`` has ``errno == errno.EADDRINUSE``).
The native module raises these classes; they live in Python for docstrings and multiple inheritance.
"""

from typing import Optional

__all__ = [
    "Error",
    "ConfigError",
    "SettingTypeError",
    "AddressError",
    "AddrInUseError",
    "PermissionDeniedError",
    "NotRunningError",
    "TakeoverError",
    "ControlError",
    "InvalidStateError",
    "IoError",
]


class Error(Exception):
    """Base class of every error port_sharding raises."""


class ConfigError(Error, ValueError):
    """A setting is unknown or out of range; ``param`` names it (e.g. ``"workers"``)."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


class SettingTypeError(ConfigError, TypeError):
    """A setting was given a value of the wrong type (``port="80"``); ``param`` names it."""


class AddressError(Error, ValueError):
    """The host is not an address this machine can bind."""


class AddrInUseError(Error, OSError):
    """The port is taken by a socket without SO_REUSEPORT, of another user, or bound with other options.
    ``errno`` is ``EADDRINUSE``."""


class PermissionDeniedError(Error, PermissionError):
    """Binding was refused, e.g. a port below 1024 without privilege. ``errno`` is ``EACCES``."""


class NotRunningError(Error):
    """No port-sharding server answers on the control socket for this host and port."""


class TakeoverError(Error):
    """A takeover could not complete; the old server keeps serving."""


class ControlError(Error):
    """The control socket answered something unexpected (or a server did not become ready)."""


class InvalidStateError(Error, RuntimeError):
    """A ``Server`` was asked for something its state does not allow: started twice, or waited for
    before it started."""


class IoError(Error, OSError):
    """Any other OS error, with what was being done; ``errno`` is kept."""


# Tracebacks and reprs name them as users import them: port_sharding.AddrInUseError.
for _name in __all__:
    globals()[_name].__module__ = "port_sharding"
