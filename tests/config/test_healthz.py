import pytest
from django.db import OperationalError, connections


@pytest.mark.django_db
def test_healthz_is_200_when_database_and_embedded_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "problems": {}}


@pytest.mark.django_db
def test_healthz_is_503_naming_the_broker_when_it_is_unreachable(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert list(body["problems"]) == ["broker"]


@pytest.mark.django_db
def test_healthz_is_503_naming_the_database_when_it_fails(client, monkeypatch, settings):
    settings.DEBUG = True  # make run's development settings: the error itself is shown

    def refuse(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["problems"] == {"database": "OperationalError: connection refused"}


@pytest.mark.django_db
def test_healthz_keeps_the_drivers_error_for_the_log_without_debug(
    client, settings, monkeypatch, caplog
):
    """The endpoint needs no login: a stranger learns which part, not its host and port."""
    settings.DEBUG = False

    def refuse(*args, **kwargs):
        raise OperationalError('connection to server at "10.0.0.5", port 5432 failed')

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["problems"] == {"database": "unreachable"}
    assert '"10.0.0.5", port 5432 failed' in caplog.text


@pytest.mark.django_db
def test_healthz_answers_a_head_request_with_the_same_status(client, settings):
    """Uptime monitors and load balancers often probe with HEAD (`curl -I`): it was a 405,
    so a healthy Herald looked down to them."""
    assert client.head("/healthz").status_code == 200
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    assert client.head("/healthz").status_code == 503
