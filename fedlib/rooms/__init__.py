"""Room-level helpers shared by the outbound client and the inbound server."""
