"""`make demo`: the router, a DNS server standing in for Cloud Map, and demo backends, all on loopback.

Not part of the router: the wheel and the container image's runtime stage do not carry it. It runs from the
repository (`python -m whaleray_demo`, after `pip install -e ".[demo]"` for dnslib), the tests use its DNS
server and backends, and the image's `demo` stage adds it for the docker-compose demo.
"""
