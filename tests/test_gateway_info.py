"""docpipe models / quota against the simulator, through the CLI in a subprocess."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web

from pipeline.config import load_config
from pipeline.gateway_info import Model, ModelList, Quota, TokenQuota, format_quota, models, quota

from .conftest import TEST_KEY, cli


@pytest.mark.parametrize("shape", ["openai", "newapi"])
def test_models_reads_both_response_shapes(sim, shape: str) -> None:
    server = sim(models_shape=shape, models=("gpt-4o-all", "gpt-4-all", "o3-mini"))
    r = cli("models", "--base-url", server.url, "--api-key", TEST_KEY, "--json", timeout=15)
    assert r.returncode == 0, r.stderr
    assert [m["id"] for m in json.loads(r.stdout)["models"]] == ["gpt-4-all", "gpt-4o-all", "o3-mini"]

    text = cli("models", "--base-url", server.url, "--api-key", TEST_KEY, timeout=15)
    assert text.returncode == 0
    assert [line.split()[0] for line in text.stdout.splitlines()] == ["gpt-4-all", "gpt-4o-all", "o3-mini"]


def test_quota_shows_limit_usage_and_new_api_token_quota_in_usd(sim) -> None:
    server = sim(hard_limit_usd=50.0, used_usd=12.25)
    r = cli("quota", "--base-url", server.url, "--api-key", TEST_KEY, "--json", timeout=15)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)
    assert (q["hard_limit_usd"], q["used_usd"], q["remaining_usd"]) == (50.0, 12.25, 37.75)
    token = q["token"]  # /api/usage/token/ in quota units, 500000 per USD
    assert (token["granted_usd"], token["used_usd"], token["available_usd"]) == (50.0, 12.25, 37.75)

    text = cli("quota", "--base-url", server.url, "--api-key", TEST_KEY, timeout=15)
    assert text.returncode == 0
    assert "limit $50.00, used $12.25, remaining $37.75" in text.stdout


def test_models_and_quota_are_typed_records_whose_json_the_cli_prints(sim) -> None:
    server = sim(hard_limit_usd=50.0, used_usd=12.25, models=("o3-mini", "gpt-4o-all"))
    cfg = load_config(base_url=server.url, api_key=TEST_KEY, timeout=15)

    listed = models(cfg)
    assert isinstance(listed, ModelList)
    assert [m.id for m in listed.models] == ["gpt-4o-all", "o3-mini"]
    assert all(isinstance(m, Model) for m in listed.models)
    r = cli("models", "--base-url", server.url, "--api-key", TEST_KEY, "--json", timeout=15)
    assert json.loads(r.stdout) == listed.to_dict()

    found = quota(cfg)
    assert isinstance(found, Quota) and isinstance(found.token, TokenQuota)
    assert (found.remaining_usd, found.token.available_usd, found.unavailable) == (37.75, 37.75, ())
    r = cli("quota", "--base-url", server.url, "--api-key", TEST_KEY, "--json", timeout=15)
    assert json.loads(r.stdout) == found.to_dict()


def test_quota_text_copes_with_missing_figures() -> None:
    token = TokenQuota(name=None, granted_usd=None, used_usd=None, available_usd=None, unlimited=False,
                       expires_at=None)  # fmt: skip
    q = Quota(base_url="http://gw/v1", hard_limit_usd=None, used_usd=2.5, remaining_usd=None, token=token,
              unavailable=("/dashboard/billing/subscription: HTTP 404",))  # fmt: skip
    assert format_quota(q).splitlines() == ["gateway: http://gw/v1", "limit unknown, used $2.50, remaining unknown",
                                            "token: granted unknown, used unknown, available unknown"]  # fmt: skip


def test_key_from_the_environment_is_used(sim) -> None:
    server = sim(api_key=TEST_KEY)
    r = cli("models", "--base-url", server.url, env={"APICORE_API_KEY": TEST_KEY}, timeout=15)
    assert r.returncode == 0, r.stderr
    assert "gpt-4o-all" in r.stdout


@pytest.mark.parametrize("command", ["models", "quota"])
def test_a_refused_key_is_one_line_and_exit_3(sim, command: str) -> None:
    server = sim(api_key="sk-the-right-one")
    r = cli(command, "--base-url", server.url, "--api-key", "sk-wrong-key-123", timeout=15)
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0] and "APICORE_API_KEY" in lines[0], r.stderr
    assert "sk-wrong-key-123" not in r.stderr + r.stdout

    r = cli(command, "--base-url", server.url, timeout=15)
    assert r.returncode == 3 and "no API key was sent" in r.stderr


def test_an_unreachable_gateway_is_one_line(sim) -> None:
    server = sim()
    url = server.url
    server.stop()
    r = cli("quota", "--base-url", url, "--api-key", TEST_KEY, "--timeout", "2", timeout=15)
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@contextmanager
def one_api_gateway() -> Iterator[str]:
    """An older one-api: billing endpoints only; its web UI answers any other path
    with an HTML page and status 200."""

    async def subscription(request: web.Request) -> web.Response:
        return web.json_response({"object": "billing_subscription", "hard_limit_usd": 20})

    async def usage(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "total_usage": 150.0})

    async def web_ui(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>One API</title>", content_type="text/html")

    ready, stop = threading.Event(), threading.Event()
    port: list[int] = []

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/dashboard/billing/subscription", subscription)
        app.router.add_get("/v1/dashboard/billing/usage", usage)
        app.router.add_get("/{tail:.*}", web_ui)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port.append(runner.addresses[0][1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield f"http://127.0.0.1:{port[0]}/v1"
    finally:
        stop.set()
        thread.join(5)


def test_quota_without_the_new_api_endpoint_shows_the_billing_figures() -> None:
    with one_api_gateway() as url:
        r = cli("quota", "--base-url", url, "--api-key", TEST_KEY, "--json", timeout=15)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)
    assert (q["hard_limit_usd"], q["used_usd"], q["remaining_usd"], q["token"]) == (20.0, 1.5, 18.5, None)
    assert any("/api/usage/token/" in u for u in q["unavailable"])
