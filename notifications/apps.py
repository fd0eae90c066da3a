from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        # Connects the receiver of anymail's tracking signal (email webhooks), and the
        # `__any_of` lookup.
        from notifications import lookups, webhooks  # noqa: F401
        from notifications.batch import on_send_outcome, on_sent
        from notifications.dispatch import register_outcome_listener, register_sent_listener

        # The batch circuit breaker and run completion listen to send outcomes.
        register_outcome_listener(on_send_outcome)
        register_sent_listener(on_sent)

        # Seed 003: the cadence re-check at send time, and the trigger workflow admin.
        from notifications import cadence_checks, trigger_admin  # noqa: F401

        cadence_checks.register()
