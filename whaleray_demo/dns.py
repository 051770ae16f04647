"""A small authoritative DNS server on asyncio + dnslib: the loopback stand-in for Cloud Map.

It serves A and SRV records of one zone over UDP, answers NXDOMAIN (with the zone's SOA) for other names in
the zone and REFUSED outside it, and counts the queries it receives. Tests steer it: change records and
TTLs, make a name answer SERVFAIL, or make the whole server silent (a resolver that times out).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import uvloop
from dnslib import QTYPE, RCODE, RR, SOA, SRV, A, DNSRecord

log = logging.getLogger("whaleray_demo.dns")


@dataclass(frozen=True, slots=True)
class SrvTarget:
    target: str
    port: int
    priority: int = 10
    weight: int = 10


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class DemoDnsServer(asyncio.DatagramProtocol):
    def __init__(self, zone: str = "whaleray.local", ttl: int = 10) -> None:
        self.zone = _key(zone)
        self.ttl = ttl
        self.a_records: dict[str, tuple[list[str], int]] = {}
        self.srv_records: dict[str, tuple[list[SrvTarget], int]] = {}
        self.servfail: set[str] = set()
        self.refused: set[str] = set()  # names answered REFUSED, as a server that holds only its own records does
        self.silent = False
        self.srv_glue = True  # add the SRV targets' A records to the additional section
        # Addresses for names not in the table (benchmarks: every never-seen id exists), or None.
        self.wildcard: Callable[[str], list[str] | None] | None = None
        self.queries: Counter[str] = Counter()
        self.host = ""
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    # --- steering ------------------------------------------------------------------------------------------

    def set_a(self, name: str, addresses: list[str], ttl: int | None = None) -> None:
        self.a_records[self._fqdn(name)] = (list(addresses), self.ttl if ttl is None else ttl)

    def set_srv(self, name: str, targets: list[SrvTarget], ttl: int | None = None) -> None:
        self.srv_records[self._fqdn(name)] = (list(targets), self.ttl if ttl is None else ttl)

    def remove(self, name: str) -> None:
        self.a_records.pop(self._fqdn(name), None)
        self.srv_records.pop(self._fqdn(name), None)

    def query_count(self, name: str | None = None) -> int:
        return sum(self.queries.values()) if name is None else self.queries[self._fqdn(name)]

    def _fqdn(self, name: str) -> str:
        key = _key(name)
        return key if key == self.zone or key.endswith("." + self.zone) else f"{key}.{self.zone}"

    # --- serving -------------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        self.host, self.port = transport.get_extra_info("sockname")[:2]
        return self.host, self.port

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - garbage from the network is dropped, as a real server does
            return
        name = _key(str(query.q.qname))
        self.queries[name] += 1
        if self.silent:
            return
        if self._transport is not None:
            self._transport.sendto(self.answer(query).pack(), addr)

    def answer(self, query: DNSRecord) -> DNSRecord:
        reply = query.reply()
        name = _key(str(query.q.qname))
        qtype = query.q.qtype
        if name != self.zone and not name.endswith("." + self.zone):
            reply.header.rcode = RCODE.REFUSED
            return reply
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if name in self.refused:
            reply.header.rcode = RCODE.REFUSED
            return reply
        a = self.a_records.get(name)
        srv = self.srv_records.get(name)
        if a is None and srv is None and self.wildcard is not None:
            addresses = self.wildcard(name)
            a = (addresses, self.ttl) if addresses else None
        if a is None and srv is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self._soa())
            return reply
        if qtype == QTYPE.A and a is not None:
            addresses, ttl = a
            for address in addresses:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=ttl))
        elif qtype == QTYPE.SRV and srv is not None:
            targets, ttl = srv
            for target in targets:
                rdata = SRV(priority=target.priority, weight=target.weight, port=target.port, target=target.target)
                reply.add_answer(RR(name, QTYPE.SRV, rdata=rdata, ttl=ttl))
                glue = self.a_records.get(self._fqdn(target.target)) if self.srv_glue else None
                for address in glue[0] if glue else []:  # Cloud Map sends the targets' A records along
                    reply.add_ar(RR(self._fqdn(target.target), QTYPE.A, rdata=A(address), ttl=ttl))
        if not reply.rr:  # the name exists without records of this type: NODATA
            reply.add_auth(self._soa())
        return reply

    def _soa(self) -> RR:
        soa = SOA(f"ns.{self.zone}", f"hostmaster.{self.zone}", (1, 60, 60, 3600, self.ttl))
        return RR(self.zone, QTYPE.SOA, rdata=soa, ttl=self.ttl)

    def load_zone_file(self, text: str) -> None:
        """Load the A and SRV records of a BIND zone file (the docker demo's), replacing what is there."""
        self.a_records.clear()
        self.srv_records.clear()
        for record in RR.fromZone(text):
            name = _key(str(record.rname))
            if record.rtype == QTYPE.A:
                addresses, _ = self.a_records.get(name, ([], record.ttl))
                self.a_records[name] = ([*addresses, str(record.rdata)], record.ttl)
            elif record.rtype == QTYPE.SRV:
                targets, _ = self.srv_records.get(name, ([], record.ttl))
                rdata = record.rdata
                target = SrvTarget(_key(str(rdata.target)), rdata.port, rdata.priority, rdata.weight)
                self.srv_records[name] = ([*targets, target], record.ttl)

    def __repr__(self) -> str:
        counts = f"Names: {len(self.a_records) + len(self.srv_records)} | Queries: {self.query_count()}"
        return f"<DemoDnsServer {self.zone} on {self.host}:{self.port} [{counts}]>"


async def _serve_zone(text: str, host: str, port: int) -> None:
    origin = next((line.split()[1] for line in text.splitlines() if line.startswith("$ORIGIN")), "whaleray.local.")
    server = DemoDnsServer(origin)
    server.load_zone_file(text)
    await server.start(host, port)
    log.warning("serving %s on %s:%d: %d names", origin, host, port, len(server.a_records) + len(server.srv_records))
    # As PID 1 in a container the process gets no default handling of SIGTERM: stop on it, or `docker stop`
    # waits out its grace period and kills.
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    """`python -m whaleray_demo.dns --zone-file F`: the docker demo's Cloud Map stand-in."""
    parser = argparse.ArgumentParser(description="Serve the A and SRV records of a BIND zone file over UDP.")
    parser.add_argument("--zone-file", required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5353)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with open(args.zone_file, encoding="utf-8") as handle:
        text = handle.read()
    uvloop.run(_serve_zone(text, args.host, args.port))


if __name__ == "__main__":
    main()
