"""URL blocklists: a page whose host is a listed domain, or lies below one, is dropped before its text is
extracted, as RefinedWeb and FineWeb drop the pages of UT1's adult list.

A list is a text file of domains, one a line (UT1's `domains` files), or a hosts file (`0.0.0.0 example.com`);
`#` starts a comment. A list is a Python set, as datatrove's URLFilter holds it: UT1's adult list (4.6M
domains) takes about 430 MB and 5 s to read. The run's driver reads the lists when it checks the config, and
the local workers it forks share its copy: a lookup that misses writes nothing to the set's pages.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterator, Optional
from urllib.parse import urlsplit

from megagpt.errors import ConfigError

_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_HOSTS_ADDRESSES = ("0.0.0.0", "127.0.0.1", "::1", "::")


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
        host = host_of(url)
        while host:
            for path, domains in zip(self.paths, self.sets):
                if host in domains:
                    return host, path
            host = None if _IPV4.fullmatch(host) else host.partition(".")[2]  # an address has no parent domains
        return None


def host_of(url: Optional[str]) -> Optional[str]:
    """The URL's host as lists write it (lower case, no port, user or trailing dot; an IDN in punycode), or
    None where there is none to judge (a JSONL page without a url, a URL that does not parse)."""
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:  # an unbalanced [ in an IPv6 host
        return None
    if not host:
        return None
    host = host.rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return host or None


def _domains(path: str) -> Iterator[str]:
    try:
        f = open(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise ConfigError(f"url.blocklists: {path!r} cannot be read ({exc.strerror})") from None
    with f:
        try:
            for number, line in enumerate(f, 1):
                fields = line.partition("#")[0].split()
                if not fields:
                    continue
                if len(fields) == 2 and fields[0] in _HOSTS_ADDRESSES:
                    fields = fields[1:]
                domain = fields[0].lower().rstrip(".")
                if not domain.isascii():
                    try:
                        domain = domain.encode("idna").decode("ascii")
                    except UnicodeError:
                        domain = ""
                if len(fields) != 1 or not _DOMAIN.fullmatch(domain):
                    raise ConfigError(f"url.blocklists: {path} line {number}: {line.strip()[:80]!r} is not a domain "
                                      f"(one a line, or a hosts file's '0.0.0.0 domain')")
                yield domain
        except UnicodeDecodeError as exc:
            raise ConfigError(f"url.blocklists: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def blocklist(paths: tuple) -> Blocklist:
    """The lists, read once a process for all its shards (the driver's copy is shared by the workers it forks);
    read again once a file changes."""
    import os

    return _read(paths, tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths))


@lru_cache(maxsize=2)
def _read(paths: tuple, stamps: tuple) -> Blocklist:
    return Blocklist(list(paths))
