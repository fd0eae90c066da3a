from django.apps import AppConfig


class HeraldConfig(AppConfig):
    """`config` is an app only to carry the project-wide commands (setup_schedules,
    seed_demo, ensure_dev_superuser, ping_worker): it may import every other app."""

    name = "config"
    label = "herald"
    verbose_name = "Herald"
