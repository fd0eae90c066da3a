from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        # Connects the receiver of anymail's tracking signal (email webhooks).
        from notifications import webhooks  # noqa: F401
        from notifications.batch import on_send_outcome
        from notifications.dispatch import register_outcome_listener

        # The batch circuit breaker and run completion listen to every send outcome.
        register_outcome_listener(on_send_outcome)
