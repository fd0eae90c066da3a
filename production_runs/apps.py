from django.apps import AppConfig


class ProductionRunsConfig(AppConfig):
    name = "production_runs"
    verbose_name = "Production runs"
