"""URL blocklists: the pages of listed domains, and of hosts below them, are dropped before extraction, each
naming the domain and the list; every other page goes on as before."""

import json

import pytest

from data_pipeline.io import read_jsonl_gz
from data_pipeline.synthetic import english_pages
from data_pipeline.urls import Blocklist, host_of
from megagpt.errors import ConfigError

PAGES = english_pages()[:8]
URLS = ["http://blocked.com/a", "https://www.Blocked.COM:8443/b?q=1", "http://notblocked.com/c", None,
        "http://ads.tracker.net./d", "http://tracker.net.example.org/e", "http://10.0.0.7/f", "http://0.0.7/g"]
BLOCKED = {0: ("blocked.com", "adult.txt"), 1: ("blocked.com", "adult.txt"), 4: ("tracker.net", "hosts"),
           6: ("10.0.0.7", "adult.txt")}


def lists(tmp_path):
    (tmp_path / "adult.txt").write_text("# UT1 adult, abridged\nblocked.com\n\n10.0.0.7\nBLOCKED.com.  # again\n")
    (tmp_path / "hosts").write_text("0.0.0.0 tracker.net\n127.0.0.1 blocked.com\n0.0.7\n")
    return [str(tmp_path / "adult.txt"), str(tmp_path / "hosts")]


def test_a_host_is_blocked_by_its_domain_or_any_domain_above_it(tmp_path):
    block = Blocklist(lists(tmp_path))
    assert block.sets == [{"blocked.com", "10.0.0.7"}, {"tracker.net", "blocked.com", "0.0.7"}]
    found = {i: block.match(url) for i, url in enumerate(URLS)}
    assert {i: (d, p.rsplit("/", 1)[1]) for i, hit in found.items() if hit for d, p in [hit]} == \
        {**BLOCKED, 7: ("0.0.7", "hosts")}  # an entry listed in two files names the first
    assert block.match("http://10.0.0.7.nip.io/") is None and block.match("http://110.0.0.7/") is None
    assert block.match("http://blocked.com.evil.org/") is None  # the host's end decides, not its start


@pytest.mark.parametrize("url,host", [
    ("HTTP://User:pw@Example.COM:80/x", "example.com"), ("http://example.com./", "example.com"),
    ("http://bücher.de/", "xn--bcher-kva.de"), ("http://faß.de/", "xn--fa-hia.de"), ("http://😀.ws/", "xn--e28h.ws"),
    ("http://[::1]:80/", "::1"), ("http://[::1/", None),
    ("mailto:someone@example.com", None), ("", None), (None, None), ("not a url", None),
    ("<http://Example.com/>", "example.com"), ("example.com/page", "example.com"), ("/relative/page", None),
])
def test_hosts_are_read_as_lists_write_them(url, host):
    assert host_of(url) == host


def test_idns_are_matched_as_browsers_send_them(tmp_path):
    """IDNA 2008: straße.de is its own domain (xn--strae-oqa.de); IDNA 2003 wrote it strasse.de, and blocked that."""
    (tmp_path / "x.txt").write_text("straße.de\n")
    block = Blocklist([str(tmp_path / "x.txt")])
    assert block.sets == [{"xn--strae-oqa.de"}]
    assert block.match("http://www.xn--strae-oqa.de/") and block.match("http://STRAßE.de/")
    assert block.match("http://strasse.de/") is None


def test_real_lists_are_read_whole_and_what_names_no_domain_is_skipped_and_counted(tmp_path, capsys):
    """UT1's lists hold labels DNS refuses (w-w-i-s-.com) and '.domain' for "and below"; hosts files name several
    hosts a line, broadcast and scoped IPv6 addresses, and may start with a byte-order mark."""
    (tmp_path / "x.txt").write_text("\ufeff127.0.0.1 localhost\n255.255.255.255 broadcasthost\nfe80::1%lo0 localhost\n"
                                    "0.0.0.0 a.com B.com.\n.afshin.ir\n*.wild.org\nw-w-i-s-.com\n"
                                    "http://example.com/page\nfoo bar\n0.0.0.0 good.net bad/name\n")
    block = Blocklist([str(tmp_path / "x.txt")])
    assert block.sets == [{"localhost", "broadcasthost", "a.com", "b.com", "afshin.ir", "wild.org", "w-w-i-s-.com",
                           "good.net"}]
    assert block.match("http://www.afshin.ir/") == ("afshin.ir", str(tmp_path / "x.txt"))
    assert (f"megagpt: warning: url.blocklists: {tmp_path}/x.txt line 8 ('http://example.com/page') names no "
            f"domain; 3 such line(s) skipped") in capsys.readouterr().err


def test_a_list_that_names_no_domain_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("# nothing but comments\n\nhttp://example.com/page\n")
    with pytest.raises(ConfigError, match=r"url.blocklists\[0\]=.*x.txt' lists no domain: it would drop nothing"):
        Blocklist([str(tmp_path / "x.txt")])


def test_a_list_in_another_encoding_is_refused(tmp_path):
    (tmp_path / "x.txt").write_bytes("b\xfccher.de\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"x.txt is not UTF-8 text \(invalid start byte at byte 1\)"):
        Blocklist([str(tmp_path / "x.txt")])


def _config(tmp_path, *overrides):
    from data_pipeline.config import load_corpus_config

    return load_corpus_config(None, [f"input.paths=[{tmp_path}/in.jsonl]", f"output.dir={tmp_path}/out",
                                     "tokenize.vocab_size=400", "executor.workers=1", "filters.min_words=10",
                                     *overrides])


def test_a_run_drops_the_listed_pages_and_says_why(tmp_path):
    from data_pipeline.explain import explain
    from data_pipeline.pipeline import run

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, **({"url": u} if u else {})}) + "\n"
                                               for t, u in zip(PAGES, URLS)))
    paths = lists(tmp_path)
    summary = run(_config(tmp_path, f"url.blocklists=[{paths[0]}, {paths[1]}]"), progress=False)
    blocked = {**BLOCKED, 7: ("0.0.7", "hosts")}
    url = summary["stages"]["url"]
    assert (url["in"], url["kept"], dict(url["dropped"])) == (8, 3, {"blocked domain": 5})
    assert url["skipped"] == {"no host to judge": 1}  # the page without a url, kept
    assert summary["stages"]["extract"]["in"] == 3 and summary["documents"] == 3
    drops = list(read_jsonl_gz(str(tmp_path / "out" / "dropped" / "process" / "00000.jsonl.gz")))
    assert {int(d["id"].split(":")[1]) - 1: (d["domain"], d["blocklist"].rsplit("/", 1)[1]) for d in drops
            if d["stage"] == "url"} == blocked
    kept = {d["id"] for d in read_jsonl_gz(str(tmp_path / "out" / "documents" / "commoncrawl" / "00000.jsonl.gz"))}
    assert not kept & {f"in.jsonl:{i + 1}" for i in blocked}
    lines = explain(str(tmp_path / "out"), "in.jsonl:2")
    assert lines[2].split() == ["read", "passed"]
    assert lines[3] == f"  url       dropped: blocked domain (domain=blocked.com, blocklist={paths[0]})"
    assert lines[4].split() == ["extract", "not", "reached"]
    assert "  url       passed" in explain(str(tmp_path / "out"), "in.jsonl:3")


def test_changed_list_contents_refuse_a_resume_and_older_runs_resume(tmp_path):
    """A list edited in place changes what a run drops, as much as another list would. A run recorded before
    the url stage existed has no url setting in run.json: it resumes, the stage being off."""
    from data_pipeline.pipeline import run
    from data_pipeline.runs import RECORD, Run

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "url": u or ""}) + "\n"
                                               for t, u in zip(PAGES, URLS)))
    paths = lists(tmp_path)
    run(_config(tmp_path, f"url.blocklists=[{paths[0]}]"), progress=False)
    with open(paths[0], "a") as f:
        f.write("notblocked.com\n")
    with pytest.raises(ConfigError, match=r"url.blocklists: a file's contents changed"):
        Run(_config(tmp_path, f"url.blocklists=[{paths[0]}]"))
    with pytest.raises(ConfigError, match=r"url.blocklists: \[.*adult.txt'\] -> \[\]"):
        Run(_config(tmp_path))

    run(_config(tmp_path), progress=False, mode="restart")
    record = json.loads((tmp_path / "out" / RECORD).read_text())
    del record["config"]["url.blocklists"]
    (tmp_path / "out" / RECORD).write_text(json.dumps(record))
    Run(_config(tmp_path)).close()
    with pytest.raises(ConfigError, match=r"url.blocklists: None -> \[.*adult.txt'\]"):
        Run(_config(tmp_path, f"url.blocklists=[{paths[0]}]"))


def test_a_missing_list_is_refused_at_once(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": PAGES[0]}) + "\n")
    with pytest.raises(ConfigError, match=r"url.blocklists\[0\]='.*gone.txt': file not found"):
        _config(tmp_path, f"url.blocklists=[{tmp_path}/gone.txt]")
    (tmp_path / "bad.txt").write_text("a b c\n")
    with pytest.raises(ConfigError, match=r"bad.txt' lists no domain"):
        _config(tmp_path, f"url.blocklists=[{tmp_path}/bad.txt]")
