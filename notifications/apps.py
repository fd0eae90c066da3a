from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        # Connects the receiver of anymail's tracking signal (email webhooks).
        from notifications import webhooks  # noqa: F401
