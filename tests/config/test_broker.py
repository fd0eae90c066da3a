"""The embedded broker hands a worker only whole messages."""

import pytest
from django.conf import settings
from kombu import Connection
from kombu.transport import filesystem
from kombu.transport.virtual import Empty

from config.env import broker_config


def test_a_message_being_written_is_not_taken_by_a_worker_before_it_is_whole(tmp_path, monkeypatch):
    # kombu's own transport created the file, then wrote it: a worker listing the queue in
    # between read an empty file, failed to decode it and stopped (JSONDecodeError).
    url, options, _ = broker_config("", var_dir=tmp_path)
    with Connection(url, transport="config.broker:Transport", transport_options=options) as conn:
        writer, worker = conn.channel(), conn.channel()
        seen_while_writing = []
        encode = filesystem.dumps

        def encode_while_the_worker_looks(payload):
            try:
                seen_while_writing.append(worker._get("celery"))
            except Empty:
                seen_while_writing.append(None)
            return encode(payload)

        monkeypatch.setattr(filesystem, "dumps", encode_while_the_worker_looks)
        writer._put("celery", {"body": "look now"})

        assert seen_while_writing == [None]
        assert worker._get("celery") == {"body": "look now"}
        with pytest.raises(Empty):
            worker._get("celery")


@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("filesystem:"), reason="a broker server is set"
)
def test_the_embedded_broker_is_herald_s_filesystem_transport():
    assert settings.CELERY_BROKER_TRANSPORT == "config.broker:Transport"
