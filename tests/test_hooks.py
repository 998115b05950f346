"""IFederationHooks, NullHooks and FederationConfig."""

from __future__ import annotations

import attrs
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from fedlib.config import (
    ConfigError,
    FederationConfig,
    Limits,
    Notary,
    config_from_mapping,
    load_yaml_config,
    parse_server_name,
)
from fedlib.crypto.keys import generate_signing_key
from fedlib.hooks import IFederationHooks, NullHooks


class NullHooksTests(unittest.TestCase):
    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IFederationHooks, NullHooks()))

    def test_defaults(self) -> None:
        h = NullHooks()
        self.assertIs(h.on_invite("10", {}, []), True)
        self.assertIsNone(h.query_directory("#a:b"))
        self.assertIsNone(h.query_profile("@a:b", None))
        self.assertEqual(h.get_public_rooms(10, None, None)["chunk"], [])
        self.assertEqual(h.query_user_keys({"@a:b": []}), {"device_keys": {"@a:b": {}}})

    def test_subclass_overrides(self) -> None:
        class Hooks(NullHooks):
            def query_directory(self, room_alias: str) -> object:
                return ("!r:b", ["b"])

        self.assertTrue(verifyObject(IFederationHooks, Hooks()))
        self.assertEqual(Hooks().query_directory("#x:b"), ("!r:b", ["b"]))


class ServerNameTests(unittest.TestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_server_name("example.org"), ("example.org", None))
        self.assertEqual(parse_server_name("127.0.0.1:8448"), ("127.0.0.1", 8448))
        self.assertEqual(parse_server_name("[::1]:80"), ("[::1]", 80))

    def test_invalid(self) -> None:
        for bad in ["", "a b", "host:", "host:99999", "[::1", "[zz]:1", "h:1x", "[::1]x"]:
            self.assertRaises(ConfigError, parse_server_name, bad)


class ConfigTests(unittest.TestCase):
    def setUp(self) -> None:
        self.key = generate_signing_key("t1")

    def test_minimal(self) -> None:
        c = FederationConfig("127.0.0.1:1", self.key, store=object())
        self.assertIsInstance(c.hooks, NullHooks)
        self.assertTrue(c.verify_tls)
        self.assertIn(c.default_room_version, c.room_versions)
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, c, "server_name", "x")

    def test_rejects_bad_values(self) -> None:
        self.assertRaises(ConfigError, FederationConfig, "bad name", self.key, object())
        self.assertRaises(ConfigError, FederationConfig, "a", self.key, object(), hooks=object())
        self.assertRaises(
            ConfigError, FederationConfig, "a", self.key, object(), room_versions=("99",)
        )
        self.assertRaises(
            ConfigError,
            FederationConfig,
            "a",
            self.key,
            object(),
            room_versions=("10",),
            default_room_version="11",
        )
        self.assertRaises(ConfigError, FederationConfig, "a", "not a key", object())
        self.assertRaises(ConfigError, Limits, max_request_body=0)

    def test_from_mapping(self) -> None:
        c = config_from_mapping(
            {
                "server_name": "h:8448",
                "verify_tls": False,
                "notaries": ["n.org", {"server_name": "m.org", "verify_keys": {"ed25519:a": "x"}}],
                "limits": {"request_timeout": 5},
                "room_versions": [10, 11],
                "default_room_version": 11,
                "listen": "tcp:0",
            },
            signing_key=self.key,
            store=object(),
        )
        self.assertFalse(c.verify_tls)
        self.assertEqual(c.notaries, (Notary("n.org"), Notary("m.org", {"ed25519:a": "x"})))
        self.assertEqual(c.limits.request_timeout, 5)
        self.assertEqual(c.room_versions, ("10", "11"))
        self.assertEqual(c.listen, ("tcp:0",))

    def test_from_mapping_errors(self) -> None:
        for bad in [
            {},
            {"server_name": "h", "limits": {"nope": 1}},
            {"server_name": "h", "limits": {"request_timeout": -1}},
            {"server_name": "h", "notaries": [3]},
            {"server_name": "h", "listen": [1]},
        ]:
            self.assertRaises(
                ConfigError, config_from_mapping, bad, signing_key=self.key, store=object()
            )

    def test_yaml(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("server_name: a.org\nlimits:\n  request_timeout: 3\n")
        self.assertEqual(load_yaml_config(path)["limits"], {"request_timeout": 3})
        with open(path, "w") as f:
            f.write("server_nam: a.org\n")
        e = self.assertRaises(ConfigError, load_yaml_config, path)
        self.assertIn("server_nam", str(e))
        with open(path, "w") as f:
            f.write("a: [\n")
        self.assertRaises(ConfigError, load_yaml_config, path)
        self.assertRaises(ConfigError, load_yaml_config, path + ".missing")
