"""Personal data: e-mail and public IP addresses in kept text are replaced by reserved stand-ins and counted;
everything that only looks like one stays."""

import json

import pytest

from data_pipeline.io import read_jsonl_gz
from data_pipeline.pii import EMAIL_STANDIN, IP6_STANDIN, IP_STANDIN, redact
from data_pipeline.synthetic import english_pages


@pytest.mark.parametrize("text,emails,ips,out", [
    ("Write to John.Smith+news@Mail.Example.co.uk.", 1, 0, f"Write to {EMAIL_STANDIN}."),
    ("mailto:bob@corp.io, or first.last@sub-domain.example.org", 2, 0, f"mailto:{EMAIL_STANDIN}, or {EMAIL_STANDIN}"),
    ("Our DNS is 8.8.8.8. The server: 93.184.216.34:443", 0, 2,
     f"Our DNS is {IP_STANDIN}. The server: {IP_STANDIN}:443"),
    ("Router at 192.168.1.1, loopback 127.0.0.1, 10.0.0.7 and 100.64.0.1", 0, 0, None),  # not global
    ("version 1.2.3.4.5, 300.1.1.1, 01.2.3.4 and 2.4.2024", 0, 0, None),  # not addresses
    ("user@localhost, a@b.c, @handle and .@a.com", 0, 0, None),  # no domain with a TLD
    (f"{EMAIL_STANDIN} and {IP_STANDIN}", 0, 0, None),  # the stand-ins themselves
    ("DNS 2001:4860:4860::8888, web [2606:4700:4700::1111]:443, at IP:2a00:1450:4001:82B::200e: done", 0, 3,
     f"DNS {IP6_STANDIN}, web [{IP6_STANDIN}]:443, at IP:{IP6_STANDIN}: done"),
    ("2400:cb00:2048:1:0:0:c629:d7a2", 0, 1, IP6_STANDIN),  # eight words, no '::'
    ("Source:2001:4860::1 ip6:2001:4860::2", 0, 2, f"Source:{IP6_STANDIN} ip6:{IP6_STANDIN}"),  # labels ending in hex
    (f"{IP6_STANDIN}, ::1, fe80::1%eth0, fc00::7, ff02::1", 0, 0, None),  # documentation, loopback, local, multicast
    ("Face::Bad, std::vector, dead::beef, a::b::c, 12:30:45, 00:1a:2b:3c:4d:5e, de:ad:be:ef:00:11:22:33", 0, 0,
     None),  # code, times and MAC addresses: no address, or none in 2000::/3
    ("x2001:4860::8888, 2001:4860::8888x, 1::2001:4860:1:2, 2001:4860::8888.5", 0, 0, None),  # pieces of more
    ("::ffff:8.8.8.8", 0, 1, f"::ffff:{IP_STANDIN}"),  # an IPv4 tail is judged as IPv4
])
def test_addresses_are_replaced_and_lookalikes_stay(text, emails, ips, out):
    new, found = redact(text, emails=True, ips=True)
    assert new == (text if out is None else out)
    assert (found["emails"], found["ips"]) == (emails, ips)


@pytest.mark.parametrize("text", ["Contact a@b.com. " + "0123456789abcdef" * 2500, "A" * 32000 + " @",
                                  "a@" + "b" * 40000, "x@" + "b." * 20000 + "com"])
def test_long_tokens_beside_an_at_sign_are_read_once(text):
    """Unbounded, the e-mail pattern scanned a 40 kB token to its end from each of its positions (11 s a page);
    the local part and labels are bounded as RFC 5321 and DNS bound them."""
    new, found = redact(text, emails=True, ips=True)
    assert found["emails"] == (1 if "." in text.split("@")[1][:100] else 0)
    assert new == text if not found else new.startswith(("Contact email@example.com. 0123", "email@example.com"))


def test_long_hex_and_colon_runs_are_read_once():
    """A hex dump with colons (a key fingerprint, a memory dump) is one candidate, judged once."""
    for text in ("2001:" + "abcd:" * 20000, ":1:" + "2001:" * 20000 + "x", "a::b " * 20000):
        assert redact(text, emails=False, ips=True) == (text, {})


def test_each_kind_is_replaced_only_when_asked():
    text = "mail a@example.org from 8.8.4.4 or 2001:4860::1"
    assert redact(text, emails=True, ips=False) == (f"mail {EMAIL_STANDIN} from 8.8.4.4 or 2001:4860::1",
                                                    {"emails": 1})
    assert redact(text, emails=False, ips=True) == (f"mail a@example.org from {IP_STANDIN} or {IP6_STANDIN}",
                                                    {"ips": 2})


def test_a_run_replaces_counts_and_explains_and_dedups_what_differed_only_in_addresses(tmp_path):
    """Two pages equal but for their contact lines are exact copies once the addresses are replaced: dedup keeps
    one. The counts are the planted ones, in stats.json, the report's table and each document's `pii`."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.explain import explain
    from data_pipeline.pipeline import run
    from data_pipeline.report import summary_table

    pages = english_pages()[:4]
    texts = [pages[0] + "\nContact ann@shop.example.net or 8.8.8.8 for help.",
             pages[0] + "\nContact bob@other.example.net or 1.1.1.1 for help.",
             pages[1] + "\nOur router is 192.168.0.1.", pages[2]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/in.jsonl]", f"output.dir={tmp_path}/out",
                                    "tokenize.vocab_size=400", "executor.workers=1", "filters.min_words=10",
                                    "filters.min_line_punct_ratio=null", "pii.emails=true", "pii.ips=true"])
    summary = run(cfg, progress=False)
    assert summary["stages"]["pii"]["redacted"] == {"emails": 2, "ips": 2}
    assert "personal data replaced (in pages before dedup): emails 2, ips 2" in summary_table(summary)
    docs = list(read_jsonl_gz(str(tmp_path / "out" / "documents" / "commoncrawl" / "00000.jsonl.gz")))
    assert [d["id"] for d in docs] == ["in.jsonl:1", "in.jsonl:3", "in.jsonl:4"]
    assert docs[0]["text"].endswith(f"Contact {EMAIL_STANDIN} or {IP_STANDIN} for help.")
    assert docs[0]["pii"] == {"emails": 1, "ips": 1} and "pii" not in docs[1]
    assert docs[1]["text"].endswith("Our router is 192.168.0.1.")
    dup = next(read_jsonl_gz(str(tmp_path / "out" / "dropped" / "dedup" / "00000.jsonl.gz")))
    assert (dup["id"], dup["duplicate_of"], dup["similarity"]) == ("in.jsonl:2", "in.jsonl:1", 1.0)
    assert "  pii       replaced 1 email, 1 ip" in explain(str(tmp_path / "out"), "in.jsonl:1")
    assert "  pii       passed (nothing replaced)" in explain(str(tmp_path / "out"), "in.jsonl:3")
