"""The web's edges: every hostile value on every route is a 4xx JSON error, never a 500.

Ids past SQLite's 64 bits, NUL bytes, lone surrogates, a foreign Host header, `../`, very long
strings: each comes back as `{"error", "code"}` with a 4xx status (or a normal answer). The
list of values is fixed; nothing here loops at random.
"""

from __future__ import annotations

import io
import json
import re
from urllib.parse import quote

import click
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli.serve_cmd import serve_command
from tests.test_web_api import BASE, client, ids, library, photos  # noqa: F401 (fixtures)
from web import create_app

NASTY = [
    "\0",
    "바다\0.jpg",
    "\ud800",
    "바다\udcff",
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "-1",
    "0",
    "9" * 400,
    "x" * 5000,
    "../",
    "../../etc/passwd",
    "%2e%2e",
    "%2e%2e%2f%2e%2e",
    "\u202e바다",
    "\u200f",
    "",
    " ",
    "nan",
    "1e309",
]


def _q(value: str) -> str:
    """Percent-encode as an attacker would send it: lone surrogates as their raw bytes."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _assert_json_4xx_or_ok(response, what: str) -> dict:
    assert response.status_code < 500, (what, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), (what, response)
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error", "code"}, (what, body)
        assert "Traceback" not in body["error"]
    return body


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 100, 20)).save(buf, "JPEG")
    return buf.getvalue()


def _get_urls(value: str) -> list[str]:
    v = _q(value)
    return [
        f"/api/search?q={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&under={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&after={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&before={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&k={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&offset={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&threshold={v}",
        f"/api/search?q=%EB%B0%94%EB%8B%A4&prompt={v}",
        f"/api/photos/{v}",
        f"/api/photos/{v}/similar",
        f"/api/photos/{v}/thumbnail",
        f"/api/photos/{v}/original",
        f"/api/photos/1/thumbnail?size={v}",
        f"/api/photos/1/similar?under={v}",
        f"/api/image/{v}",
        f"/api/image/{v}?q={v}",
    ]


@pytest.mark.parametrize("value", NASTY, ids=[ascii(v)[:24] for v in NASTY])
def test_every_get_route_answers_nasty_values_with_json(client, value):  # noqa: F811
    for url in _get_urls(value):
        _assert_json_4xx_or_ok(client.get(url), url)


@pytest.mark.parametrize("value", NASTY, ids=[ascii(v)[:24] for v in NASTY])
def test_compose_and_upload_answer_nasty_values_with_json(client, value):  # noqa: F811
    number = value if re.fullmatch(r"-?\d+|1e309", value) else json.dumps(value)
    bodies = [
        f'{{"terms": [{{"text": {json.dumps(value)}}}]}}',
        f'{{"terms": [{{"photo_id": {number}}}]}}',
        f'{{"terms": [{{"text": "바다", "weight": {number}}}]}}',
        f'{{"terms": [{{"text": "바다"}}], "k": {number}}}',
        f'{{"terms": [{{"text": "바다"}}], "offset": {number}}}',
        f'{{"terms": [{{"text": "바다"}}], "under": {json.dumps(value)}}}',
        f'{{"terms": [{{"text": "바다"}}], "after": {json.dumps(value)}}}',
    ]
    for body in bodies:
        response = client.post(
            "/api/compose", content=body, headers={"Content-Type": "application/json"}
        )
        _assert_json_4xx_or_ok(response, body)
    for url in (f"/api/image?q={_q(value)}", f"/api/image?under={_q(value)}"):
        response = client.post(url, content=_jpeg(), headers={"Content-Type": "image/jpeg"})
        _assert_json_4xx_or_ok(response, url)


@pytest.mark.parametrize(
    "url", ["/api/photos/{id}", "/api/photos/{id}/similar", "/api/photos/{id}/thumbnail"]
)
@pytest.mark.parametrize("photo_id", [2**63, 2**64, 10**30])
def test_ids_past_64_bits_are_4xx_json(client, url, photo_id):  # noqa: F811
    response = client.get(url.format(id=photo_id))
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error", "code"}


def test_photo_ids_past_64_bits_in_compose_are_4xx(client):  # noqa: F811
    body = '{"terms": [{"photo_id": 9223372036854775808}]}'
    response = client.post(
        "/api/compose", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["code"] == "bad_request"


@pytest.mark.parametrize("params", ["under=%00", "q=%00", "after=2023%00", "q=a%00b"])
def test_nul_bytes_are_refused(client, params):  # noqa: F811
    query = params if params.startswith("q=") else f"q=%EB%B0%94%EB%8B%A4&{params}"
    response = client.get(f"/api/search?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "bad_request"


def test_lone_surrogates_in_compose_are_refused(client):  # noqa: F811
    body = '{"terms": [{"text": "\\ud800"}]}'
    response = client.post(
        "/api/compose", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "bad_request"


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "", "\u00e9"])
def test_foreign_host_is_a_json_error(client, host):  # noqa: F811
    response = client.get("/api/info", headers={"Host": host.encode("utf-8")})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == "bad_host"


def test_allowed_hosts_still_work(library):  # noqa: F811
    app = create_app(library, warm=False, allowed_hosts=["photos.lan"])
    with TestClient(app, base_url="http://photos.lan") as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"Host": "photos.lan:8000"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "localhost"}).json()["code"] == "bad_host"
    with TestClient(create_app(library, warm=False, allowed_hosts=["*"]), base_url=BASE) as c:
        assert c.get("/api/info", headers={"Host": "anything.example"}).status_code == 200


# -- messages -------------------------------------------------------------------------------


def _flags_outside_commands(message: str) -> set[str]:
    """`--flags` a message advises, leaving out whole commands it quotes in backticks."""
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", re.sub(r"`[^`]*`", "", message)))


def test_web_messages_advise_no_flag_serve_lacks(client):  # noqa: F811
    serve_flags = {o for p in serve_command.params if isinstance(p, click.Option) for o in p.opts}
    requests = [
        ("get", "/api/search?q=%EB%B0%94%EB%8B%A4&under=../..", None),
        ("get", "/api/search?q=%EB%B0%94%EB%8B%A4&after=2024&before=2023", None),
        ("get", "/api/search?q=%EB%B0%94%EB%8B%A4&after=%EC%96%B4%EC%A0%9C", None),
        ("get", "/api/search?q=%EB%B0%94%EB%8B%A4+%2B", None),
        ("get", "/api/search?q=x.jpg", None),
        ("post", "/api/image", b"not an image"),
        ("post", "/api/image", b""),
    ]
    seen = 0
    for method, url, content in requests:
        kwargs = {"content": content, "headers": {"Content-Type": "image/jpeg"}} if content else {}
        if method == "post" and content == b"":
            kwargs = {"content": b"", "headers": {"Content-Type": "image/jpeg"}}
        response = getattr(client, method)(url, **kwargs)
        body = response.json()
        assert response.status_code >= 400, (url, body)
        seen += 1
        assert _flags_outside_commands(body["error"]) <= serve_flags, (url, body["error"])
    assert seen == len(requests)


def test_an_uploaded_photo_is_labelled_by_name_not_by_its_repr(client):  # noqa: F811
    raw = client.post(
        "/api/image",
        params={"q": "바다", "k": 2},
        content=_jpeg(),
        headers={"Content-Type": "image/jpeg"},
    ).json()
    assert "PIL" not in raw["query"] and "<" not in raw["query"]
    assert raw["query"] == "uploaded photo + 바다"
    alone = client.post(
        "/api/image", content=_jpeg(), headers={"Content-Type": "image/jpeg"}
    ).json()
    assert alone["query"] == "uploaded photo"
    named = client.post(
        "/api/image", params={"q": "바다"}, files={"image": ("해변.jpg", _jpeg(), "image/jpeg")}
    ).json()
    assert named["query"] == "해변.jpg + 바다"
    # Paging keeps the label, with or without the text.
    page = client.get(f"/api/image/{named['upload']}", params={"q": "바다", "offset": 1}).json()
    assert page["query"] == "해변.jpg + 바다"
    assert client.get(f"/api/image/{named['upload']}").json()["query"] == "해변.jpg"


def test_no_message_the_web_can_reach_advises_a_flag_serve_lacks():
    """Every string in the packages the server runs (search, db, koclip, web), docstrings
    aside: a `--flag` outside a quoted command must be one of serve's own."""
    import ast
    from pathlib import Path

    serve_flags = {o for p in serve_command.params if isinstance(p, click.Option) for o in p.opts}
    root = Path(__file__).resolve().parents[1]
    found = []
    for package in ("search", "db", "koclip", "web"):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                )
                and node.body
                and isinstance(node.body[0], ast.Expr)
            }
            # Functions named `*_command` build command lines that messages quote in backticks.
            builders = {
                id(inner)
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and node.name.endswith("_command")
                for inner in ast.walk(node)
            }
            for node in ast.walk(tree):
                text = node.value if isinstance(node, ast.Constant) else None
                if isinstance(text, str) and id(node) not in docstrings | builders:
                    extra = _flags_outside_commands(text) - serve_flags
                    found += [(path.name, node.lineno, flag) for flag in extra]
    assert not found, found
