"""Against a real `branet serve` (its own port and BRANET_HOME), with a raw socket that sends the headers,
then the body slowly in chunks: an upload without a valid token is answered 401, and one over the size
limit 413, while the sender still has most of its body to send (the server stopped reading early).
TestClient cannot show this: it hands the app the whole body at once."""
from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest

from server.launcher import branet
from tests.live_server import live_server

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("early-home")
    token = branet(home, "users", "add", "uploader", "--no-password").strip()
    with live_server(home) as port:
        yield port, token, home


def send_slowly(port: int, head: bytes, body_chunks, total: int, pause: float = 0.005) -> tuple[int, bytes, int]:
    """Send `head`, then each chunk with a pause, watching for an answer after each one; returns
    (bytes of body sent when the answer was first readable, the answer, status)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)  # little kernel buffering on our side
    sock.sendall(head)
    sent, answer = 0, b""
    try:
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed the connection: it is not reading any more
            sent += len(chunk)
            time.sleep(pause)
        sock.settimeout(10)
        while not answer.endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    finally:
        sock.close()
    assert answer, f"no answer after {sent} of {total} bytes"
    return sent, answer, int(answer.split(b" ", 2)[1])


def multipart_head(port: int, path: str, token: str | None, content_length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: multipart/form-data; boundary=xyz"]
    lines += [f"Authorization: Bearer {token}"] if token else []
    lines += [f"Content-Length: {content_length}"] if content_length is not None else ["Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def file_body(total: int):
    yield (b'--xyz\r\nContent-Disposition: form-data; name="modality"\r\n\r\nus\r\n'
           b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG\r\n\x1a\n')
    for _ in range(total // CHUNK):
        yield b"\0" * CHUNK


def as_http_chunks(chunks):
    for chunk in chunks:
        yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"


@pytest.mark.parametrize("path", ["/v1/images", "/v1/analyses"])
@pytest.mark.parametrize("token", [None, "bn_not-a-real-token"])
def test_an_upload_without_a_valid_token_is_refused_before_its_body_is_read(server, path, token):
    port, _, home = server
    total = 8 * 1024 * 1024  # under the 10 MB limit: only the token can stop it
    sent, answer, status = send_slowly(port, multipart_head(port, path, token, total + 200), file_body(total), total)
    assert status == 401, answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "unauthorized"
    assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")
    assert sent < total / 4, f"the 401 came after {sent} of {total} bytes"
    assert not list((home / "images").glob("*/*"))


def test_an_upload_over_the_limit_is_refused_while_it_streams(server):
    port, token, home = server
    total = 40 * 1024 * 1024  # no Content-Length (chunked): only the bytes as they arrive can tell
    sent, answer, status = send_slowly(port, multipart_head(port, "/v1/images", token, None),
                                       as_http_chunks(file_body(total)), total, pause=0.001)
    assert status == 413, answer[:300]
    assert b"\"too_large\"" in answer
    assert 10 * 1024 * 1024 < sent < total / 2, f"the 413 came after {sent} of {total} bytes"
    # Declared too large: refused from the headers, before any of the body.
    sent, answer, status = send_slowly(port, multipart_head(port, "/v1/images", token, total), file_body(total), total)
    assert status == 413 and sent < total / 10, (status, sent)
    assert not list((home / "images").glob("*/*"))


def test_a_valid_token_still_uploads(server):
    port, token, _ = server
    from tests.test_api_bad_input import encode, scan
    res = httpx.post(f"http://127.0.0.1:{port}/v1/images", files={"file": ("s.png", encode(scan()))},
                     data={"modality": "us"}, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert res.status_code == 201, res.text
