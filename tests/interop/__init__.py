"""Interoperability tests against a real Synapse on 127.0.0.1 (see ``synapse.py``)."""
