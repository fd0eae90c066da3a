from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Development only (DEBUG=True): create the superuser admin/admin (or --username/"
        "--password) if no user of that name exists, and print the credentials."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--username", default="admin", help="the user to create (default: %(default)s)"
        )
        parser.add_argument(
            "--password",
            default="admin",
            help="its password, used only when the user is created (default: %(default)s)",
        )

    def handle(self, *args, username, password, **options):
        if not settings.DEBUG:
            raise CommandError("refusing to create a development superuser with DEBUG off")
        User = get_user_model()
        if not User.objects.filter(username=username).exists():
            User.objects.create_superuser(username, f"{username}@localhost", password)
            self.stdout.write(f"created superuser {username!r}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Admin: http://127.0.0.1:8000/admin/  user: {username}  password: {password}"
            )
        )
