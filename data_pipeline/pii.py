"""Personal data in kept text: e-mail addresses and public IP addresses are replaced by reserved stand-ins, as
FineWeb formats PII, so that the model learns their shape but no one's address.

The stand-ins lie in ranges reserved for documentation (RFC 2606's example.com, RFC 5737's 192.0.2.0/24,
RFC 3849's 2001:db8::/32), so they name no one. Private, loopback and other non-global addresses (192.168.1.1
in a router's manual) stay. As FineWeb's patterns do, these also take four-part version numbers (2.3.4.5) for
addresses, and icon@2x.png for an e-mail address. FineWeb leaves IPv6 addresses; here those in the global
unicast range 2000::/3, the only one handed out, are replaced: hex words joined by colons elsewhere (C++'s
Face::Bad, a MAC address, a time) lie outside it or are no address.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

EMAIL_STANDIN = "email@example.com"
IP_STANDIN = "192.0.2.1"
IP6_STANDIN = "2001:db8::1"
# No lookbehinds: tried at every position of the text they cut the speed to 25 MB/s; the leftmost match starts the
# local part anyway, and an address's edges are checked on the few candidates. English pages: 100 MB/s, and 12
# where a page holds an '@' (the e-mail pattern is tried only then).
# The local part and each label are bounded as RFC 5321 and DNS bound them (64 and 63): unbounded, a long
# token (a hex dump beside an '@') cost a scan to its end from each of its positions, seconds a page.
_EMAIL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
                    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\b")
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
# An address in 2000::/3 starts with four hex digits, the first 2 or 3, and a colon. Pages where no colon has at
# most four hex digits and another colon after it hold no IPv6 address, and are passed over by a scan for colons
# (2.5 GB/s on English pages; the address pattern alone runs at 200 MB/s).
_IPV6_SEED = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(r"[23][0-9A-Fa-f]{3}:[0-9A-Fa-f:]+")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _in_address(text: str, colon: int) -> bool:
    """Whether the colon at `colon` ends a run of hex digits and colons that is an address's start ("1::" before
    "2001:..."), not a label's end ("Source:", "ip6:": the run is preceded by the rest of a word)."""
    i = colon
    while i > 0 and text[i - 1] in _HEX_COLON:
        i -= 1
    return i < colon and not (text[i - 1:i].isalnum() or text[i - 1:i] == "_")


def redact(text: str, emails: bool, ips: bool) -> tuple[str, Counter]:
    """The text with its e-mail addresses and/or public IP addresses replaced, and how many of each."""
    found = Counter()

    def email(match: re.Match) -> str:
        if match[0] != EMAIL_STANDIN:
            found["emails"] += 1
        return EMAIL_STANDIN

    def address(match: re.Match) -> str:
        text, start, end = match.string, match.start(), match.end()
        if start and (text[start - 1].isdigit() or text[start - 1] == ".") or \
                text[end:end + 1].isdigit() or (text[end:end + 1] == "." and text[end + 1:end + 2].isdigit()):
            return match[0]  # a piece of a longer dotted number (1.2.3.4.5), not an address
        try:
            public = ipaddress.IPv4Address(match[0]).is_global
        except ValueError:  # an octet past 255 or with a leading zero: a version or a date, not an address
            return match[0]
        if not public:
            return match[0]
        found["ips"] += 1
        return IP_STANDIN

    def address6(match: re.Match) -> str:
        text, start, end = match.string, match.start(), match.end()
        tail = ":" if text.endswith(":", start, end) and not text.endswith("::", start, end) else ""
        before, after = text[start - 1:start], text[end:end + 1]
        if before.isalnum() or before in ("_", ".") or before == ":" and _in_address(text, start - 1) or \
                after.isalnum() or after == "_" or after == "." and text[end + 1:end + 2].isdigit():
            return match[0]  # a piece of a longer word or address, or one with an IPv4 tail (judged as IPv4)
        try:
            address = ipaddress.IPv6Address(match[0][:len(match[0]) - len(tail)])
        except ValueError:  # hex words joined by colons that are no address
            return match[0]
        if not (address in _GLOBAL_UNICAST and address.is_global):
            return match[0]
        found["ips"] += 1
        return IP6_STANDIN + tail  # a colon that ends a clause ("at 2001:4860::1: ...") stays

    if emails and "@" in text:
        text = _EMAIL.sub(email, text)
    if ips:
        text = _IPV4.sub(address, text)
        if _IPV6_SEED.search(text):
            text = _IPV6.sub(address6, text)
    return text, found
