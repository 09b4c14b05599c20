"""`postroom domains check` and GET /v1/domains/{name} against a local DNS server holding good and
broken records; `dkim dns --json` lists what the domain needs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from postroom.dkim.management import create_selector
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.dkim_keys import SqlDkimKeys
from postroom.store.engine import create_engine
from tests.conftest import running
from tests.dns_server import serve_dns
from tests.support import postroom_cli

DOMAIN = "checked.example"
MX_HOST = "mx.checked.example"
SENDING_IP = "192.0.2.25"


def write_config(directory: Path, dns_port: int) -> Path:
    path = directory / "postroom.toml"
    path.write_text(f"""state_dir = "{directory}"
[database]
url = "sqlite+aiosqlite:///{directory / 'q.db'}"
[http]
listen = "127.0.0.1:0"
[smtp]
hostname = "{MX_HOST}"
submission_listen = "127.0.0.1:0"
mx_listen = "127.0.0.1:0"
[delivery]
mode = "capture"
capture_dir = "{directory / 'out'}"
dns_resolver = "127.0.0.1:{dns_port}"
sending_ips = ["{SENDING_IP}"]
[log]
format = "text"
[[domains]]
name = "{DOMAIN}"
""")
    return path


async def make_keys(config: Path) -> dict[str, str]:
    from postroom.config import load_settings

    settings = load_settings(config, {})
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        records = {}
        for selector, algorithm in (("r1", "rsa"), ("e1", "ed25519")):
            _, published = await create_selector(SqlDkimKeys(engine), Path(settings.dkim_key_dir),
                                                 DOMAIN, selector, algorithm, 2048, 0.0)  # fmt: skip
            records[published.name] = published.value
        return records
    finally:
        await engine.dispose()


def good_zone(dkim: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    zone = {(name, "TXT"): [value] for name, value in dkim.items()}
    zone[(DOMAIN, "TXT")] = [f"v=spf1 ip4:{SENDING_IP} -all"]
    zone[(f"_dmarc.{DOMAIN}", "TXT")] = ["v=DMARC1; p=quarantine; rua=mailto:d@checked.example"]
    zone[(DOMAIN, "MX")] = [f"10 {MX_HOST}."]
    return zone


async def cli_check(config: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = await asyncio.to_thread(postroom_cli, "domains", "check", DOMAIN, "--json",
                                     "--config", str(config), check=False)  # fmt: skip
    return result.returncode, json.loads(result.stdout)


def verdicts(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {f"{c['kind']}:{c['name']}": c["verdict"] for c in report["checks"]}


async def test_a_good_domain_passes_every_check(tmp_path: Path) -> None:
    async with serve_dns() as (server, port):
        config = write_config(tmp_path, port)
        dkim = await make_keys(config)
        for (name, rtype), values in good_zone(dkim).items():
            server.set(name, rtype, values)
        code, report = await cli_check(config)
    assert code == 0, report
    assert report["ok"] is True
    assert set(verdicts(report).values()) == {"ok"}
    assert {c["kind"] for c in report["checks"]} == {"dkim", "spf", "dmarc", "mx"}
    assert sum(c["kind"] == "dkim" for c in report["checks"]) == 2


async def test_broken_records_get_their_verdicts_and_a_failing_exit(tmp_path: Path) -> None:
    async with serve_dns() as (server, port):
        config = write_config(tmp_path, port)
        dkim = await make_keys(config)
        zone = good_zone(dkim)
        zone[("r1._domainkey." + DOMAIN, "TXT")] = [next(iter(dkim.values())).rsplit("p=", 1)[0] + "p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong"]
        del zone[("e1._domainkey." + DOMAIN, "TXT")]
        zone[(DOMAIN, "TXT")] = ["v=spf1 ip4:198.51.100.1 -all"]
        del zone[(f"_dmarc.{DOMAIN}", "TXT")]
        zone[(DOMAIN, "MX")] = ["10 mx.elsewhere.example."]
        for (name, rtype), values in zone.items():
            server.set(name, rtype, values)
        code, report = await cli_check(config)
    assert code == 1
    got = verdicts(report)
    assert got[f"dkim:r1._domainkey.{DOMAIN}"] == "wrong"
    assert got[f"dkim:e1._domainkey.{DOMAIN}"] == "missing"
    assert got[f"spf:{DOMAIN}"] == "wrong"
    assert got[f"dmarc:_dmarc.{DOMAIN}"] == "missing"
    assert got[f"mx:{DOMAIN}"] == "wrong"
    wrong_mx = next(c for c in report["checks"] if c["kind"] == "mx")
    assert wrong_mx["found"] and "mx.elsewhere.example" in wrong_mx["found"][0]


async def test_spf_mx_passes_the_ipv4_sending_address_when_aaaa_is_refused(tmp_path: Path) -> None:
    # A resolver that answers A and refuses AAAA (dnsmasq without an upstream): an IPv4 address
    # is checked against A records only (RFC 7208 §5.4), so the refusal does not matter.
    async with serve_dns() as (server, port):
        config = write_config(tmp_path, port)
        zone = good_zone(await make_keys(config))
        zone[(DOMAIN, "TXT")] = ["v=spf1 mx ~all"]
        zone[(MX_HOST, "A")] = [SENDING_IP]
        for (name, rtype), values in zone.items():
            server.set(name, rtype, values)
        server.fail(MX_HOST, "AAAA", "REFUSED")
        code, report = await cli_check(config)
    spf = next(c for c in report["checks"] if c["kind"] == "spf")
    assert spf["verdict"] == "ok", spf["detail"]
    assert f"{SENDING_IP}: pass (matched 'mx' at {DOMAIN} (MX host {MX_HOST}))" == spf["detail"]
    assert (MX_HOST, "A") in server.queries and (MX_HOST, "AAAA") not in server.queries
    assert code == 0, report


async def test_http_route_and_metrics(tmp_path: Path) -> None:
    async with serve_dns() as (server, port):
        config = write_config(tmp_path, port)
        dkim = await make_keys(config)
        for (name, rtype), values in good_zone(dkim).items():
            server.set(name, rtype, values)
        server.remove(f"_dmarc.{DOMAIN}")
        from postroom.config import load_settings

        settings = load_settings(config, {})
        engine = create_engine(settings.database)
        try:
            _, token = await SqlApiKeys(engine).create("v", Role.VIEWER, 0.0)
        finally:
            await engine.dispose()
        async with running(settings) as d, aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{d.http}/v1/domains/{DOMAIN}", headers=headers) as response:
                assert response.status == 200
                report = await response.json()
            async with http.get(f"{d.http}/v1/domains/not-ours.example", headers=headers) as response:
                assert response.status == 404
            assert d.metric("postroom_domain_check_ok", {"domain": DOMAIN, "record": "dkim"}) == 1
            assert d.metric("postroom_domain_check_ok", {"domain": DOMAIN, "record": "dmarc"}) == 0
    assert report["ok"] is False


async def test_dkim_dns_lists_every_record_the_domain_needs(tmp_path: Path) -> None:
    config = write_config(tmp_path, 53)
    dkim = await make_keys(config)
    result = await asyncio.to_thread(postroom_cli, "dkim", "dns", DOMAIN, "--json", "--config", str(config))
    records = json.loads(result.stdout)
    by_name = {(r["name"], r["type"]): r["value"] for r in records}
    for name, value in dkim.items():
        assert by_name[(name, "TXT")] == value
    assert by_name[(DOMAIN, "TXT")].startswith("v=spf1") and SENDING_IP in by_name[(DOMAIN, "TXT")]
    assert by_name[(f"_dmarc.{DOMAIN}", "TXT")].startswith("v=DMARC1")
    assert MX_HOST in by_name[(DOMAIN, "MX")]
    assert (f"_mta-sts.{DOMAIN}", "TXT") in by_name and (f"_smtp._tls.{DOMAIN}", "TXT") in by_name
    text = (await asyncio.to_thread(postroom_cli, "dkim", "dns", DOMAIN, "--config", str(config))).stdout
    assert "r1._domainkey.checked.example. IN TXT (" in text  # long RSA values split for zone files
