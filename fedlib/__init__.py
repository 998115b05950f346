"""fedlib: the Matrix server-server (federation) API for Twisted."""

__version__ = "0.1.0.dev0"
