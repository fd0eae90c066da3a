from django.apps import AppConfig
from django.core import checks


class ProductionRunsConfig(AppConfig):
    name = "production_runs"
    verbose_name = "Production runs"

    def ready(self):
        from notifications import dispatch, events
        from production_runs import dispatcher

        # The wildcard dispatcher: every production_run.* event (lifecycle, reminders,
        # digests) goes through one subscriber and its event → template map.
        events.subscribe(
            "production_run.*",
            dispatcher.handle_production_run_event,
            name="production_runs.dispatcher",
        )
        events.subscribe(
            "whatsapp.template_status",
            handle_template_status_event,
            name="production_runs.template_status",
        )
        # At send time: a reminder whose run moved on is cancelled; a template variant not
        # approved on the sending platform holds the message back, and its design image too.
        dispatch.register_send_time_check(dispatcher.still_stalled_check)
        dispatch.register_send_time_check(dispatcher.template_approved_check)
        # Last: a design image goes only after its message, which the checks above may hold.
        dispatch.register_send_time_check(dispatcher.follows_its_message_check)
        checks.register(check_template_specs)
        checks.register(check_platform_languages_setting)


def handle_template_status_event(event):
    from django.utils import timezone

    from production_runs.whatsapp_templates import apply_template_status_event

    return apply_template_status_event(event.payload or {}, now=timezone.now())


def check_template_specs(app_configs=None, **kwargs):
    from production_runs.whatsapp_templates import SPECS, SpecProblem, validate_spec

    errors = []
    for spec in SPECS.values():
        try:
            validate_spec(spec)
        except SpecProblem as problem:
            errors.append(checks.Error(str(problem), id="production_runs.E001"))
    return errors


def check_platform_languages_setting(app_configs=None, **kwargs):
    """A malformed WHATSAPP_PLATFORM_LANGUAGES is said at start-up (`manage.py check`, the
    web and worker processes), not first when a reminder is sent."""
    from django.core.exceptions import ImproperlyConfigured

    from production_runs.whatsapp_templates import check_platform_languages

    try:
        check_platform_languages()
    except ImproperlyConfigured as problem:
        return [checks.Error(str(problem), id="production_runs.E002")]
    return []
