from celery import shared_task


@shared_task(name="herald.ping")
def ping(value: str = "pong") -> str:
    """Answer with what was sent: `manage.py ping_worker` uses it to prove a worker is up."""
    return value
