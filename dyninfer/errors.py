"""Exceptions shared across dyninfer."""


class UnsupportedLayerError(ValueError):
    """dyninfer.compile met a layer the engine cannot run; the message names its path and type."""


class ExtensionLoadError(ImportError):
    """The C++ extension dyninfer._C could not be loaded; the message says why and how to build it."""
