"""URL blocklists: a page whose host is a listed domain, or lies below one, is dropped before its text is
extracted, as RefinedWeb and FineWeb drop the pages of UT1's adult list.

A list is a text file of domains, one a line (UT1's `domains` files), or a hosts file (`0.0.0.0 example.com`);
`#` starts a comment. A list is a Python set, as datatrove's URLFilter holds it: UT1's adult list (4.6M
domains) takes about 430 MB and 5 s to read. The run's driver reads the lists when it checks the config, and
the local workers it forks share its copy: a lookup that misses writes nothing to the set's pages.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from functools import lru_cache
from typing import Iterator, Optional
from urllib.parse import urlsplit

import idna

from megagpt.errors import ConfigError

_DOMAIN = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")  # lists hold labels DNS would refuse (w-w-i-s-.com)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


class Blocklist:
    """The domains of some list files, a set each: the file that blocks a host is the first that lists it."""

    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        self.sets = []
        for i, path in enumerate(self.paths):
            self.sets.append(frozenset(_domains(path)))
            if not self.sets[-1]:
                raise ConfigError(f"url.blocklists[{i}]={path!r} lists no domain: it would drop nothing")

    def match(self, url: Optional[str]) -> Optional[tuple[str, str]]:
        """(the listed domain, its list file) that blocks `url`'s host, or None."""
        return self.match_host(host_of(url))

    def match_host(self, host: Optional[str]) -> Optional[tuple[str, str]]:
        while host:
            for path, domains in zip(self.paths, self.sets):
                if host in domains:
                    return host, path
            host = None if _IPV4.fullmatch(host) else host.partition(".")[2]  # an address has no parent domains
        return None


def host_of(url: Optional[str]) -> Optional[str]:
    """The URL's host as lists write it (lower case, no port, user or trailing dot; an IDN in punycode), or
    None where there is none to judge (a JSONL page without a url, a URL that does not parse)."""
    url = (url or "").strip().removeprefix("<").removesuffix(">")  # WARC 1.0 writes <http://...>
    if not url:
        return None
    try:
        parts = urlsplit(url)
        if not parts.scheme and not parts.netloc:  # example.com/page, as some JSONL sets write urls
            parts = urlsplit("//" + url)
        host = parts.hostname
    except ValueError:  # an unbalanced [ in an IPv6 host
        return None
    if not host:
        return None
    return host if ":" in host else _domain(host)  # an IPv6 address as it is; "not a url" names no domain


def _domains(path: str) -> Iterator[str]:
    """The domains a list file names. A line that names none (a URL, prose) is skipped, and the skips are
    counted in one warning naming the first: real lists hold a few (UT1's bank list has `w-w-i-s-.com`'s kin)."""
    try:
        f = open(path, encoding="utf-8-sig", errors="strict")  # -sig: a byte-order mark is no part of line 1
    except OSError as exc:
        raise ConfigError(f"url.blocklists: {path!r} cannot be read ({exc.strerror})") from None
    skipped, first = 0, None
    with f:
        try:
            for number, line in enumerate(f, 1):
                fields = line.partition("#")[0].split()
                if not fields:
                    continue
                if len(fields) > 1 and _is_address(fields[0]):  # a hosts file: an address, then its names
                    domains = [_domain(name) for name in fields[1:]]
                else:  # one domain a line; several words are no list's line
                    domains = [_domain(fields[0]) if len(fields) == 1 else None]
                yield from filter(None, domains)
                if not all(domains):
                    skipped += 1
                    first = first or (number, line.strip()[:80])
        except UnicodeDecodeError as exc:
            raise ConfigError(f"url.blocklists: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if skipped:
        print(f"megagpt: warning: url.blocklists: {path} line {first[0]} ({first[1]!r}) names no domain; "
              f"{skipped} such line(s) skipped", file=sys.stderr, flush=True)


def _domain(name: str) -> Optional[str]:
    """A list entry or a URL's host as they are matched: lower case, punycode, no leading '.' or '*.' (both mean "and below",
    which every entry means here) nor trailing dot; None if it is no domain."""
    name = name.lower().removeprefix("*.").lstrip(".").rstrip(".")
    if not name.isascii():
        name = _punycode(name)
    return name if name and _DOMAIN.fullmatch(name) else None


def _punycode(name: str) -> Optional[str]:
    """An IDN as browsers send it: IDNA 2008 with UTS 46's mapping, as the `idna` package writes it (Python's own
    codec is IDNA 2003, which writes faß.de as fass.de, another registrable domain). A name IDNA 2008 refuses
    but 2003 takes (an emoji label: such domains are registered) is written as 2003 writes it."""
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        pass
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def _is_address(field: str) -> bool:
    try:
        ipaddress.ip_address(field.partition("%")[0])  # fe80::1%lo0: a scoped address
        return True
    except ValueError:
        return False


def blocklist(paths: tuple) -> Blocklist:
    """The lists, read once a process for all its shards (the driver's copy is shared by the workers it forks);
    read again once a file changes."""
    return _read(paths, tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths))


@lru_cache(maxsize=2)
def _read(paths: tuple, stamps: tuple) -> Blocklist:
    return Blocklist(list(paths))
