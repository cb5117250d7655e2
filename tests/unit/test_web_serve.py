"""``reconciler web``: its address, and the warning for an exposed dashboard without a token."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from reconciler.cli import main
from reconciler.settings import Settings
from reconciler.web.serve import exposed_without_token


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


@pytest.mark.parametrize(
    ("host", "exposed"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("dash.example", True),
    ],
)
def test_exposed_without_token(host: str, exposed: bool) -> None:
    """Anything but loopback is exposed, unless a token guards the actions."""
    assert exposed_without_token(host, _settings()) is exposed
    assert not exposed_without_token(host, _settings(web_token=SecretStr("t")))


def test_bad_addr_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """--addr that is not host:port: one line and exit 2, no traceback."""
    assert main(["web", "--addr", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "is not host:port" in err
    assert "Traceback" not in err


def test_bad_web_addr_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RECONCILER_WEB_ADDR that is not host:port fails at start-up with one line."""
    monkeypatch.setenv("RECONCILER_WEB_ADDR", "8080")
    assert main(["web"]) == 2
    err = capsys.readouterr().err
    assert "RECONCILER_WEB_ADDR" in err
    assert len(err.strip().splitlines()) == 1
