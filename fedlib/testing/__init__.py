"""Helpers for trial tests of code that embeds fedlib.

- :func:`start_loopback`: a real :class:`~fedlib.service.FederationService` on
  127.0.0.1 with a self-signed certificate, named ``127.0.0.1:<port>``.
- :class:`FakeRemoteServer`: a scriptable homeserver to federate with, with its
  own keys and rooms, which records what it receives.
- :func:`quiet_dns`: keep Twisted's system resolver from dirtying the reactor.
"""

from fedlib.testing.fake import FakeRemoteServer, FakeRoom, ReceivedRequest
from fedlib.testing.loopback import LoopbackServer, quiet_dns, start_loopback, tls_endpoint

__all__ = [
    "FakeRemoteServer",
    "FakeRoom",
    "LoopbackServer",
    "ReceivedRequest",
    "quiet_dns",
    "start_loopback",
    "tls_endpoint",
]
