"""`make demo`: the router, a DNS server standing in for Cloud Map, and demo backends, all on loopback."""
