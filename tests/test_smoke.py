from twisted.trial import unittest

from fedlib.crypto import keys, signing


class SpecSigningVectorTests(unittest.TestCase):
    """The spec appendix's "Signing JSON" vector for the empty object."""

    def test_sign_empty_object(self) -> None:
        key = keys.decode_signing_key_base64(
            "ed25519", "1", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
        )
        signed = signing.sign_json({}, "domain", key)
        self.assertEqual(
            signed["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
        )
        signing.verify_json(signed, "domain", keys.get_verify_key(key))
