from django.core.management.base import BaseCommand, CommandError

from config.tasks import ping


class Command(BaseCommand):
    help = "Send a ping task through the broker and wait for a Celery worker to answer."

    def add_arguments(self, parser):
        parser.add_argument(
            "--timeout",
            type=float,
            default=20.0,
            help="seconds to wait for the answer, more than 0 (default: %(default)g)",
        )

    def handle(self, *args, timeout, **options):
        if not timeout > 0:  # also refuses nan
            raise CommandError("--timeout must be more than 0 seconds")
        try:
            answer = ping.delay("pong").get(timeout=timeout)
        except Exception as exc:
            raise CommandError(f"no worker answered within {timeout:g}s: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"worker answered: {answer}"))
