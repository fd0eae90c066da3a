from django.apps import AppConfig


class KiosksConfig(AppConfig):
    name = "kiosks"
    verbose_name = "Kiosks"

    def ready(self):
        # The kiosk trigger events plug into the engine's evaluator registry.
        from kiosks import evaluators

        evaluators.register()
