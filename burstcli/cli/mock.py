"""`burstq mock-server`: the rehearsal server in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app, boundary


@app.command("mock-server")
@boundary
def mock_server(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port (0 picks a free one).")] = 8000,
    latency: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds before each answer.")
    ] = 0.0,
    jitter: Annotated[
        float, typer.Option(metavar="SECONDS", help="Extra random latency, 0..JITTER s.")
    ] = 0.0,
    rpm: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Requests/minute, enforced per second like providers do (429s)."
        ),
    ] = None,
    tpm: Annotated[int | None, typer.Option(metavar="N", help="Tokens/minute, same way.")] = None,
    fault_rate: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            metavar="FRACTION",
            help="Fraction of requests answered with a random fault (5xx, timeout, "
            "reset, malformed or empty body).",
        ),
    ] = 0.0,
    hang_seconds: Annotated[
        float,
        typer.Option(
            min=0, metavar="SECONDS", help="How long a 'timeout' fault hangs before answering 504."
        ),
    ] = 30.0,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key", metavar="KEY", help="Accept only these keys (401 otherwise). Repeatable."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(metavar="N", help="Seed for faults and jitter.")
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Behave like a self-hosted server (llama.cpp, vLLM): N parallel slots behind "
            "a FIFO queue, no rate-limit headers; an abandoned request keeps its slot.",
        ),
    ] = None,
    token_seconds: Annotated[
        float,
        typer.Option(
            min=0, metavar="SECONDS", help="--slots: seconds a slot takes per completion token."
        ),
    ] = 0.01,
) -> None:
    """Serve an OpenAI-compatible API for rehearsal and tests (chat, embeddings, models).

    Example:

        burstq mock-server --port 8000 --rpm 600 --latency 0.2 --fault-rate 0.05

        burstq mock-server --slots 4 --token-seconds 0.02

        burstq run requests.jsonl --base-url http://127.0.0.1:8000/v1 --api-key x
    """
    from ..mock.server import MockConfig, serve

    serve(
        MockConfig(
            latency=latency,
            latency_jitter=jitter,
            rpm=rpm,
            tpm=tpm,
            fault_rate=fault_rate,
            seed=seed,
            hang_seconds=hang_seconds,
            api_keys=frozenset(api_key) if api_key else None,
            slots=slots,
            slot_token_seconds=token_seconds,
        ),
        host=host,
        port=port,
    )
