"""The request fingerprint (issue 15): what enters it, what does not, and the documented recipe."""

from __future__ import annotations

import hashlib
import json

from burstcli.files.fingerprint import deterministic, digest, line_digest, of, salt
from burstcli.files.reader import parse_line
from burstcli.models import Request


def fp_of(line: str, model: str = "gpt-4o-mini") -> str:
    req = parse_line(line.encode(), 1, model)
    assert isinstance(req, Request), req
    return of(req)


def test_the_documented_recipe() -> None:
    # docs/formats.md: BLAKE2b-128 over a version tag and [endpoint, model, body], keys sorted.
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 5}
    canon = json.dumps(["chat", "gpt-4o-mini", body], sort_keys=True, separators=(",", ":"))
    want = hashlib.blake2b(b"burstq-fp1\n" + canon.encode(), digest_size=16).hexdigest()
    assert fp_of('{"input": "hi", "params": {"max_tokens": 5, "temperature": 0}}') == want


def test_key_order_and_whitespace_do_not_matter_but_content_does() -> None:
    a = fp_of('{"id": "a", "input": "hi", "params": {"temperature": 0, "max_tokens": 5}}')
    b = fp_of('{ "params" : { "max_tokens":5,"temperature":0.0 } ,"input":"hi","id":"zz"}')
    assert a == b
    assert a != fp_of('{"input": "hi ", "params": {"temperature": 0, "max_tokens": 5}}')


def test_line_facts_are_left_out_request_facts_are_in() -> None:
    base = fp_of('{"id": "a", "input": "hi"}')
    assert base == fp_of('{"id": "b", "input": "hi", "priority": 9, "metadata": {"row": 3}}')
    assert base != fp_of('{"input": "hi", "model": "gpt-4o"}')
    # The model as sent: --model for a line naming none is the same as the line naming it.
    assert fp_of('{"input": "hi"}', model="gpt-4o") == fp_of('{"input": "hi", "model": "gpt-4o"}')
    assert base != fp_of('{"input": "hi", "params": {"temperature": 0.7}}')
    assert base != fp_of('{"input": "hi", "params": {"response_format": {"type": "json_object"}}}')
    assert fp_of('{"endpoint": "embeddings", "input": "hi"}') != base


def test_both_line_shapes_give_the_same_fingerprint() -> None:
    native = fp_of('{"id": "r1", "messages": [{"role": "user", "content": "hi"}]}')
    batch = fp_of(
        '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}'
    )
    assert native == batch


def test_fingerprint_never_contains_the_key_and_is_memoised() -> None:
    req = parse_line(b'{"input": "hi"}', 1, "gpt-4o-mini")
    assert isinstance(req, Request)
    fp = of(req)
    assert len(fp) == 32 and int(fp, 16) >= 0 and req.fingerprint == fp
    assert digest("chat", "gpt-4o-mini", req.body).hex() == fp


def test_line_digest_depends_on_bytes_and_options_not_the_line_break() -> None:
    s1, s2 = salt({"model": "gpt-4o-mini"}), salt({"model": "gpt-4o"})
    assert line_digest(s1, b'{"input": "hi"}\n') == line_digest(s1, b'{"input": "hi"}')
    assert line_digest(s1, b'{"input": "hi"}') != line_digest(s2, b'{"input": "hi"}')
    assert line_digest(s1, b'{"input": "hi"}') != line_digest(s1, b'{"input":"hi"}')


def test_deterministic_means_embeddings_or_temperature_zero() -> None:
    def req(line: str) -> Request:
        r = parse_line(line.encode(), 1, "m")
        assert isinstance(r, Request)
        return r

    assert deterministic(req('{"endpoint": "embeddings", "input": "x"}'))
    assert deterministic(req('{"input": "x", "params": {"temperature": 0}}'))
    assert not deterministic(req('{"input": "x", "params": {"temperature": 0.7}}'))
    assert not deterministic(req('{"input": "x"}'))  # the provider's default is 1
