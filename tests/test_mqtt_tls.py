"""MQTT over TLS with a client certificate, against a real Mosquitto TLS listener.

Certificates are made here with openssl: a CA, a server certificate for 127.0.0.1 and a
client certificate. The link must connect and deliver with the right CA and client
certificate, and keep retrying (never raising, never logging a secret) with a wrong CA.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from daemon.config import MqttSettings
from daemon.counters import Counters
from daemon.mqtt import MqttLink
from scripts.broker import Broker, eventually

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing"),
]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return key, cert


def make_cert(d: Path, name: str, ca: tuple[Path, Path], san: str | None) -> tuple[Path, Path]:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[1]),
        "-CAkey",
        str(ca[0]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "room-ca")
    server = make_cert(d, "broker", ca, "IP:127.0.0.1")
    client = make_cert(d, "room-1", ca, None)
    other_ca = make_ca(d, "other-ca")
    return {
        "ca": ca[1],
        "server_key": server[0],
        "server_cert": server[1],
        "client_key": client[0],
        "client_cert": client[1],
        "other_ca": other_ca[1],
    }


@pytest.fixture
def tls_broker(pki: dict[str, Path]) -> Broker:
    options = [
        f"cafile {pki['ca']}",
        f"certfile {pki['server_cert']}",
        f"keyfile {pki['server_key']}",
        "require_certificate true",
    ]
    with Broker(listener_options=options) as broker:
        yield broker  # type: ignore[misc]


def settings(broker: Broker, ca: Path, pki: dict[str, Path]) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=broker.port,
        tls=True,
        ca_file=ca,
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
        room_id="tls-room",
        reconnect_min_s=0.1,
        reconnect_max_s=0.3,
        username="room",
        password=SecretStr("tls-secret-pw"),
    )


async def test_captions_over_tls_with_a_client_certificate(
    tls_broker: Broker, pki: dict[str, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    link = MqttLink(settings(tls_broker, pki["ca"], pki), Counters())
    async with aiomqtt.Client("127.0.0.1", tls_broker.port, tls_context=context) as sub:
        await sub.subscribe("roomtranslate/tls-room/#", qos=1)
        task = asyncio.create_task(link.run())
        await eventually(lambda: link.connected, within_s=15)
        link.publish_caption("de", {"seq": 1, "text": "hallo"}, final=True)
        got: dict[str, bytes] = {}
        async with asyncio.timeout(10):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                got[str(message.topic)] = message.payload
                if "roomtranslate/tls-room/captions/de" in got:
                    break
        await link.close(timeout=1.0)
        await asyncio.wait_for(task, 3)
    assert got["roomtranslate/tls-room/availability"] == b"online"
    assert b'"text":"hallo"' in got["roomtranslate/tls-room/captions/de"]


async def test_wrong_ca_retries_without_raising_or_leaking(
    tls_broker: Broker, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    counters = Counters()
    link = MqttLink(settings(tls_broker, pki["other_ca"], pki), counters)
    task = asyncio.create_task(link.run())
    await eventually(lambda: counters.get("mqtt_connect_failures") >= 2, within_s=15)
    assert not link.connected and not task.done()
    await link.close(timeout=0.5)
    await asyncio.wait_for(task, 3)
    assert "tls-secret-pw" not in caplog.text
