"""Endpoint strings as etcdctl accepts them, and NO_PROXY matching."""

from __future__ import annotations

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.etcd.endpoints import parse_endpoint, parse_endpoints
from etcdwarden.etcd.proxy import proxy_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "host", "port", "secure"),
    [
        ("127.0.0.1:2379", "127.0.0.1", 2379, None),
        ("http://10.0.0.1:2379", "10.0.0.1", 2379, False),
        ("https://etcd-0.example.com:2379", "etcd-0.example.com", 2379, True),
        ("https://etcd-0.example.com:2379/", "etcd-0.example.com", 2379, True),
        ("localhost:12379", "localhost", 12379, None),
        ("[::1]:2379", "[::1]", 2379, None),
        ("HTTPS://[fd00::2]:2379", "[fd00::2]", 2379, True),
    ],
)
def test_accepted_forms(text: str, host: str, port: int, secure: bool | None) -> None:
    ep = parse_endpoint(text)
    assert (ep.host, ep.port, ep.secure) == (host, port, secure)


@pytest.mark.parametrize(
    "text",
    ["", "127.0.0.1", "http://127.0.0.1", "ftp://h:1", "h:notaport", "h:0", "h:70000",
     "http://h:1/path", "bad host:1", "unix:///tmp/sock"],
)
def test_malformed_is_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_endpoint(text)
    assert e.value.exit_code == 2


def test_list_dedups_and_splits() -> None:
    eps = parse_endpoints("a:1,b:2,a:1, ,c:3")
    assert [e.raw for e in eps] == ["a:1", "b:2", "c:3"]


@pytest.mark.parametrize(
    ("host", "no_proxy", "proxied"),
    [
        ("127.0.0.1", "", True),
        ("127.0.0.1", "127.0.0.1", False),
        ("127.0.0.1", "localhost,127.0.0.0/8", False),
        ("10.1.2.3", "127.0.0.0/8", True),
        ("etcd.internal.example", ".example", False),
        ("etcd.internal.example", "internal.example", False),
        ("notexample", "example", True),
        ("127.0.0.1", "*", False),
        ("127.0.0.1", "127.0.0.1:2379", False),
        ("127.0.0.1", "127.0.0.1:9999", True),
    ],
)
def test_no_proxy(host: str, no_proxy: str, proxied: bool) -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy_for(host, 2379, env) is not None) is proxied


def test_no_proxy_configured() -> None:
    assert proxy_for("127.0.0.1", 2379, {"NO_PROXY": "x"}) is None
    assert proxy_for("h", 1, {"http_proxy": "http://p:1"}) == "http://p:1"
