from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Development only (DEBUG=True): create the superuser admin/admin (or --username/"
        "--password) if no user of that name exists, and print where to log in. The "
        "password is printed only when the user is created here."
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
        parser.add_argument(
            "--if-debug",
            action="store_true",
            help="with DEBUG off, say so and create nothing instead of failing (make run)",
        )

    def handle(self, *args, username, password, if_debug, **options):
        if not settings.DEBUG:
            refusal = "refusing to create a development superuser with DEBUG off"
            if not if_debug:
                raise CommandError(refusal)
            self.stdout.write(f"{refusal}: log in with a user made by createsuperuser")
            return
        User = get_user_model()
        try:
            User._meta.get_field(User.USERNAME_FIELD).clean(username, None)
        except ValidationError as error:
            raise CommandError(f"--username {username!r}: {' '.join(error.messages)}") from None
        if not password:
            raise CommandError("--password must not be empty")
        admin = f"{settings.SITE_URL}/admin/"
        if User.objects.filter(username=username).exists():
            self.stdout.write(
                self.style.SUCCESS(f"Admin: {admin}  user: {username} (exists: password unchanged)")
            )
            return
        User.objects.create_superuser(username, f"{username}@localhost", password)
        self.stdout.write(f"created superuser {username!r}")
        self.stdout.write(
            self.style.SUCCESS(f"Admin: {admin}  user: {username}  password: {password}")
        )
