"""Hostile HTTP over raw sockets against a real `gateway serve` (SPEC §3, §8).

Smuggling and malformed framing (Content-Length with Transfer-Encoding, two lengths,
obsolete line folding, bare LF, oversized header blocks, NUL and non-UTF-8 bytes): a 4xx
and nothing forwarded, or — where HTTP allows the message — one unambiguous request
upstream, re-framed by the gateway. The upstream is a raw socket server that parses what
it receives with llhttp in strict mode and keeps every byte.

The request target cannot pick the upstream (SSRF): absolute-form URIs, Host tricks,
`..`, encoded slashes and `//host` paths all stay on the configured upstream, and a
second server that stands for the attacker's target is never contacted. Nor can a path
trick dodge the scope rules.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from .conftest import Seed
from .reliability import (
    NO_LIMITS,
    RawUpstream,
    Received,
    StartServe,
    exchange,
    raw_upstream,
    serve,  # noqa: F401
    status_codes,
)

KEY = "{KEY}"


def http(*lines: str, body: bytes = b"", end: bytes = b"\r\n") -> bytes:
    """A request from its lines, each ended by `end` (CRLF unless a test wants otherwise)."""
    return b"".join(line.encode("latin-1") + end for line in lines) + end + body


def auth() -> str:
    return f"Authorization: Bearer {KEY}"


@dataclasses.dataclass(frozen=True)
class Refused:
    """A 4xx (one of `statuses`) and nothing at all reaches the upstream."""

    statuses: tuple[int, ...] = (400,)


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """Exactly these requests reach the upstream, each framed one way, bodies exact."""

    requests: tuple[tuple[str, bytes], ...]  # (target, body)
    header: tuple[str, str] | None = None  # a header that must arrive byte for byte


Expectation = Refused | Forwarded

POST = "POST /v1/echo HTTP/1.1"
GET = "GET /v1/echo HTTP/1.1"
HOST = "Host: gateway.example"

MALFORMED: list[tuple[str, bytes, Expectation]] = [
    # Content-Length and Transfer-Encoding together: the classic CL.TE / TE.CL desync.
    (
        "CL then TE, with a smuggled request",
        http(POST, HOST, auth(), "Content-Length: 4", "Transfer-Encoding: chunked")
        + b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Refused(),
    ),
    (
        "TE then CL",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked", "Content-Length: 6") + b"0\r\n\r\nX",
        Refused(),
    ),
    (
        "two different Content-Lengths",
        http(POST, HOST, auth(), "Content-Length: 4", "Content-Length: 40", body=b"abcd"),
        Refused(),
    ),
    (
        "two equal Content-Lengths",
        http(POST, HOST, auth(), "Content-Length: 4", "Content-Length: 4", body=b"abcd"),
        Refused(),
    ),
    (
        "Content-Length list",
        http(POST, HOST, auth(), "Content-Length: 4, 4", body=b"abcd"),
        Refused(),
    ),
    ("Content-Length +4", http(POST, HOST, auth(), "Content-Length: +4", body=b"abcd"), Refused()),
    ("Content-Length -1", http(POST, HOST, auth(), "Content-Length: -1", body=b"abcd"), Refused()),
    (
        "Content-Length 0x4",
        http(POST, HOST, auth(), "Content-Length: 0x4", body=b"abcd"),
        Refused(),
    ),
    (
        "Transfer-Encoding xchunked",
        http(POST, HOST, auth(), "Transfer-Encoding: xchunked") + b"0\r\n\r\n",
        Refused(),
    ),
    (
        "chunked not last",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked, identity") + b"0\r\n\r\n",
        Refused(),
    ),
    (
        "two Transfer-Encodings",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked", "Transfer-Encoding: chunked")
        + b"0\r\n\r\n",
        Refused(),
    ),
    (
        "space before the colon",
        http(POST, HOST, auth(), "Transfer-Encoding : chunked") + b"0\r\n\r\n",
        Refused(),
    ),
    (
        "chunk size overflow",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked")
        + b"FFFFFFFFFFFFFFFFF1\r\nabcd\r\n0\r\n\r\n",
        Refused(),
    ),
    (
        "bare LF in chunked framing",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked") + b"4\nabcd\n0\n\n",
        Refused(),
    ),
    (
        "CR LF inside a chunk extension",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked")
        + b'4;ext="a\r\nb"\r\nabcd\r\n0\r\n\r\n',
        Refused(),
    ),
    # Obsolete line folding could hide a header from one parser and not another.
    ("obs-fold", http(GET, HOST, auth(), "X-Folded: a", " b"), Refused()),
    (
        "obs-fold continuing Transfer-Encoding",
        http(POST, HOST, auth(), "Transfer-Encoding: identity", " chunked", "Content-Length: 4")
        + b"abcd",
        Refused(),
    ),
    ("bare LF line ends", http(GET, HOST, auth(), end=b"\n"), Refused()),
    (
        "one bare LF",
        GET.encode() + b"\r\n" + HOST.encode() + b"\n" + auth().encode() + b"\r\n\r\n",
        Refused(),
    ),
    ("bare CR", http(GET, HOST + "\rX-A: b", auth()), Refused()),
    # Bytes no header may carry.
    ("NUL in a value", http(GET, HOST, auth(), "X-A: a\x00b"), Refused()),
    ("NUL in a name", http(GET, HOST, auth(), "X-\x00A: b"), Refused()),
    ("control bytes in a value", http(GET, HOST, auth(), "X-A: a\x01\x7fb"), Refused()),
    ("non-UTF-8 byte in a name", http(GET, HOST, auth(), "X-\xe9: a"), Refused()),
    ("non-UTF-8 bytes in the path", http("GET /v1/echo/caf\xe9 HTTP/1.1", HOST, auth()), Refused()),
    (
        "UTF-8 bytes in the path",
        "GET /v1/echo/café HTTP/1.1\r\n".encode() + http(HOST, auth()),
        Refused(),
    ),
    (
        "non-UTF-8 Authorization",
        http(GET, HOST, "Authorization: Bearer \xff\xfe" + KEY),
        Refused((401,)),
    ),
    # Oversized heads: one long line, too many lines, or many long lines.
    ("9,000-byte header", http(GET, HOST, auth(), "X-A: " + "a" * 9000), Refused((400, 431))),
    (
        "200 headers",
        http(GET, HOST, auth(), *(f"X-{i}: v" for i in range(200))),
        Refused((400, 431)),
    ),
    (
        "800 KB header block",
        http(GET, HOST, auth(), *(f"X-{i}: " + "v" * 8000 for i in range(100))),
        Refused((431,)),
    ),
    (
        "9,000-byte target",
        http(f"GET /v1/echo/{'a' * 9000} HTTP/1.1", HOST, auth()),
        Refused((400, 414)),
    ),
    # Request lines and hosts that are not what they seem.
    ("space in the target", http("GET /v1/echo /x HTTP/1.1", HOST, auth()), Refused()),
    ("lower-case method", http("get /v1/echo HTTP/1.1", HOST, auth()), Refused()),
    ("odd method", http("G@T /v1/echo HTTP/1.1", HOST, auth()), Refused()),
    ("no Host", http(GET, auth()), Refused()),
    ("two Hosts", http(GET, HOST, "Host: other.example", auth()), Refused()),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Refused()),
    # Allowed by HTTP: forwarded once, with the gateway's own framing.
    (
        "chunked after identity",
        http(POST, HOST, auth(), "Transfer-Encoding: identity, chunked")
        + b"4\r\nabcd\r\n0\r\n\r\n",
        Forwarded((("/v1/echo", b"abcd"),)),
    ),
    (
        "trailer fields are not forwarded",
        http(POST, HOST, auth(), "Transfer-Encoding: chunked")
        + b"4\r\nabcd\r\n0\r\nX-Smuggled: 1\r\n\r\n",
        Forwarded((("/v1/echo", b"abcd"),)),
    ),
    (
        "chunked over HTTP/1.0",
        http("POST /v1/echo HTTP/1.0", HOST, auth(), "Transfer-Encoding: chunked")
        + b"2\r\nab\r\n0\r\n\r\n",
        Forwarded((("/v1/echo", b"ab"),)),
    ),
    (
        # RFC 9110 §5.5: bytes above 0x7F in a value are opaque data. Forwarded as they
        # came, never re-encoded (a decode-and-re-encode would change what they mean).
        "non-UTF-8 bytes in a value",
        http(GET, HOST, auth(), "X-Opaque: caf\xe9 \xff\xfe"),
        Forwarded((("/v1/echo", b""),), header=("X-Opaque", "caf\xe9 \xff\xfe")),
    ),
    (
        "a body followed by a second request",
        http(POST, HOST, auth(), "Content-Length: 5", body=b"hello")
        + http("POST /v1/echo/second HTTP/1.1", HOST, auth(), "Content-Length: 3", body=b"abc"),
        Forwarded((("/v1/echo", b"hello"), ("/v1/echo/second", b"abc"))),
    ),
    (
        "Upgrade is not passed on",
        http(GET, HOST, auth(), "Connection: Upgrade", "Upgrade: websocket"),
        Forwarded((("/v1/echo", b""),)),
    ),
]


def framing_problems(request: Received, upstream_host: str) -> list[str]:
    """What would make this request mean two things to two parsers."""
    problems = []
    lengths, codings = request.header("Content-Length"), request.header("Transfer-Encoding")
    if lengths and codings:
        problems.append("Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or len(codings) > 1:
        problems.append("repeated framing header")
    if codings and codings != ["chunked"]:
        problems.append(f"Transfer-Encoding {codings}")
    if request.header("Host") != [upstream_host]:
        problems.append(f"Host {request.header('Host')}")
    if request.header("Upgrade") or request.header("X-Smuggled"):
        problems.append("hop-by-hop or trailer header forwarded")
    return problems


def is_gateway_error(answer: bytes) -> bool:
    """Is the first response the gateway's own error: JSON, under its name?"""
    head, _, rest = answer.partition(b"\r\n\r\n")
    fields = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    length = int(fields.get(b"content-length", b"0"))
    try:
        body = json.loads(rest[:length])
    except ValueError:
        return False
    return (
        fields.get(b"content-type", b"").startswith(b"application/json")
        and fields.get(b"server") == b"GrowPanel-Gateway"
        and set(body["error"]) >= {"code", "message", "request_id"}
    )


def check(
    name: str,
    expectation: Expectation,
    answer: bytes,
    new: list[Received],
    upstream: RawUpstream,
) -> list[str]:
    statuses = status_codes(answer)
    host = f"127.0.0.1:{upstream.port}"
    if isinstance(expectation, Refused):
        problems = []
        if not statuses or statuses[0] not in expectation.statuses:
            problems.append(f"expected {expectation.statuses}, got {answer[:120]!r}")
        elif not is_gateway_error(answer):
            problems.append(f"not the gateway's JSON error: {answer!r}")
        if new:
            problems.append(f"forwarded {[(r.method, r.target) for r in new]}")
        return [f"{name}: {p}" for p in problems]
    problems = []
    if statuses != [200] * len(expectation.requests):
        problems.append(f"expected 200s, got {statuses}: {answer!r}")
    got = [(r.target, r.body) for r in new]
    if got != list(expectation.requests):
        problems.append(f"forwarded {got}")
    for request in new:
        problems += framing_problems(request, host)
    if expectation.header is not None:
        field, value = expectation.header
        if [r.header(field) for r in new] != [[value]] * len(new):
            problems.append(f"{field} arrived as {[r.header(field) for r in new]}")
    return [f"{name}: {p}" for p in problems]


async def test_smuggling_and_malformed_requests_get_a_4xx_and_nothing_ambiguous_is_forwarded(
    serve: StartServe,  # noqa: F811
    seed: Seed,
) -> None:
    async with raw_upstream() as upstream:
        gateway = await serve(upstream.url, **NO_LIMITS)
        key = (await seed.key()).key
        problems: list[str] = []
        for name, raw, expectation in MALFORMED:
            before = len(upstream.received)
            responses = len(expectation.requests) if isinstance(expectation, Forwarded) else 1
            answer = await exchange(
                gateway.proxy_port, raw.replace(KEY.encode(), key.encode()), responses, 5
            )
            problems += check(name, expectation, answer, upstream.received[before:], upstream)
            if key.encode() in answer:
                problems.append(f"{name}: the answer quotes the key")
        assert problems == [], "\n".join(problems)
        assert upstream.parse_errors == 0
        assert not [r for r in upstream.received if "smuggled" in r.target]
        assert gateway.process.poll() is None
    logs = gateway.logs()
    assert key not in logs, "a malformed request's bytes, with its key, reached the log"
    assert gateway.trouble() == []


@dataclasses.dataclass(frozen=True)
class Stays:
    """Reaches the configured upstream (as `target`, Host the upstream's), nobody else."""

    target: str
    forwarded_host: str | None = None  # X-Forwarded-Host the upstream must see


def ssrf_cases(evil: str, host: str) -> list[tuple[str, bytes, Stays | Refused]]:
    key = auth()
    return [
        (
            "absolute-form URI naming another server",
            http(f"GET http://{evil}/v1/customers?q=1 HTTP/1.1", f"Host: {evil}", key),
            Stays("/base/v1/customers?q=1", forwarded_host=evil),
        ),
        (
            "absolute-form https URI",
            http(f"GET https://{evil}/v1/customers HTTP/1.1", f"Host: {evil}", key),
            Stays("/base/v1/customers", forwarded_host=evil),
        ),
        (
            "absolute-form URI with user info",
            http(f"GET http://user@{evil}/v1/customers HTTP/1.1", f"Host: {host}", key),
            Stays("/base/v1/customers", forwarded_host=host),
        ),
        (
            "Host naming another server",
            http("GET /v1/customers HTTP/1.1", f"Host: {evil}", key),
            Stays("/base/v1/customers", forwarded_host=evil),
        ),
        (
            "forwarding headers from an untrusted client",
            http(
                "GET /v1/customers HTTP/1.1",
                f"Host: {host}",
                key,
                f"X-Forwarded-Host: {evil}",
                f"Forwarded: host={evil};proto=https",
                "X-Forwarded-Proto: https",
            ),
            Stays("/base/v1/customers", forwarded_host=host),
        ),
        (
            "//host path",
            http(f"GET //{evil}/v1/customers HTTP/1.1", f"Host: {host}", key),
            Refused(),
        ),
        ("..", http("GET /v1/customers/../../x HTTP/1.1", f"Host: {host}", key), Refused()),
        (
            "encoded ..",
            http("GET /v1/customers/%2e%2e/%2E%2E/x HTTP/1.1", f"Host: {host}", key),
            Refused(),
        ),
        (
            "encoded slash",
            http("GET /v1/customers%2F..%2Fx HTTP/1.1", f"Host: {host}", key),
            Refused(),
        ),
        (
            "encoded backslash",
            http("GET /v1/customers%5C..%5Cx HTTP/1.1", f"Host: {host}", key),
            Refused(),
        ),
        ("..;", http("GET /v1/customers/..;/x HTTP/1.1", f"Host: {host}", key), Refused()),
        (
            "target without a slash",
            http(f"GET @{evil}/x HTTP/1.1", f"Host: {host}", key),
            Refused((400, 404)),
        ),
        (
            "CONNECT",
            http(f"CONNECT {evil} HTTP/1.1", f"Host: {evil}", key),
            Refused((400, 404, 405)),
        ),
        ("asterisk-form", http("OPTIONS * HTTP/1.1", f"Host: {host}", key), Refused((400, 404))),
    ]


async def test_the_request_target_cannot_pick_the_upstream(
    serve: StartServe,  # noqa: F811
    seed: Seed,
) -> None:
    async with raw_upstream() as upstream, raw_upstream() as attacker:
        gateway = await serve(f"{upstream.url}/base", **NO_LIMITS)
        key = (await seed.key()).key
        evil = f"127.0.0.1:{attacker.port}"
        host = f"127.0.0.1:{gateway.proxy_port}"
        problems = []
        for name, raw, expectation in ssrf_cases(evil, host):
            before = len(upstream.received)
            answer = await exchange(gateway.proxy_port, raw.replace(KEY.encode(), key.encode()))
            new = upstream.received[before:]
            statuses = status_codes(answer)
            if isinstance(expectation, Refused):
                if not statuses or statuses[0] not in expectation.statuses or new:
                    problems.append(f"{name}: {statuses} {[r.target for r in new]}")
                continue
            forwarded = [(r.target, r.header("Host"), r.header("X-Forwarded-Host")) for r in new]
            wanted = [
                (expectation.target, [f"127.0.0.1:{upstream.port}"], [expectation.forwarded_host])
            ]
            if statuses != [200] or forwarded != wanted:
                problems.append(f"{name}: {statuses} {forwarded}")
            if any(r.header("Forwarded") for r in new):
                problems.append(f"{name}: Forwarded header passed on")
        assert problems == [], "\n".join(problems)
        assert attacker.accepted == 0, "the gateway connected to a server it was told about"


@pytest.mark.parametrize(
    "request_line",
    ["OPTIONS * HTTP/1.1", "CONNECT example.com:443 HTTP/1.1", "GET http://example.com HTTP/1.1"],
)
async def test_a_target_that_is_not_a_path_gets_the_gateways_json_error(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    request_line: str,
) -> None:
    """No route can match it, and aiohttp's router answered in plain text, under
    `Server: Python/… aiohttp/…`."""
    async with raw_upstream() as upstream:
        gateway = await serve(upstream.url, **NO_LIMITS)
        key = (await seed.key()).key
        request = http(request_line, "Host: example.com", f"Authorization: Bearer {key}")
        raw = await exchange(gateway.proxy_port, request)
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
        assert status_codes(raw)[0] == 404
        assert headers["Server"] == "GrowPanel-Gateway"
        assert headers["Content-Type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert (error["code"], error["request_id"]) == ("not_found", headers["X-Request-Id"])
        assert upstream.received == []


async def test_path_tricks_cannot_dodge_permissions(
    serve: StartServe,  # noqa: F811
    seed: Seed,
) -> None:
    """A key with only `customers:read` cannot reach /v1/reports by spelling the path the
    way an upstream might normalise (merged slashes, path parameters, case)."""
    async with raw_upstream() as upstream:
        gateway = await serve(upstream.url, **NO_LIMITS)
        key = (await seed.key(permissions=["customers:read"])).key
        cases = {
            "/v1/customers": 200,
            "/v1/reports/mrr": 403,
            "/v1//reports/mrr": 400,
            "//v1/reports/mrr": 400,
            "/v1/reports;x=1/mrr": 400,
            "/v1/reports;/mrr": 400,
            "/V1/Reports/mrr": 403,
            "/v1/customers/..;/reports/mrr": 400,
            "/v1/customers/%2e%2e;/reports/mrr": 400,
        }
        got = {}
        for path, _ in cases.items():
            raw = http(
                f"GET {path} HTTP/1.1", "Host: gateway.example", f"Authorization: Bearer {key}"
            )
            answer = await exchange(gateway.proxy_port, raw)
            got[path] = status_codes(answer)[0]
            if got[path] >= 400:
                body = answer.split(b"\r\n\r\n", 1)[1]
                assert json.loads(body)["error"]["code"] in (
                    "invalid_path",
                    "insufficient_permission",
                )
        assert got == cases
        assert [r.target for r in upstream.received] == ["/v1/customers"]
