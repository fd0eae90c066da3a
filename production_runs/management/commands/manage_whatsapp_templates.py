import json

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from production_runs.whatsapp_templates import (
    check_platform_languages,
    languages_without_variants,
    plan,
    select_platforms,
    selected_specs,
    sync,
)


def _split(value: str | None, option: str) -> list[str] | None:
    """The names a comma-separated option gives; None when it is not given (all). Given but
    naming nothing ("," or "") is refused: it would silently mean all."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise CommandError(
            f"{option} {value!r} names nothing: give comma-separated names, or leave the "
            "option out for all"
        )
    return names


class Command(BaseCommand):
    help = (
        "Keep the production-run WhatsApp templates on every platform (WABA). dry-run: print "
        "the plan from the recorded statuses, no network call. upsert: read each WABA's "
        "templates and submit only the missing variants. refresh: read statuses back. Both "
        "record a variant absent from Meta's list as MISSING, unless upsert submits it "
        "successfully (then as Meta answered) or Meta may have it (busy, unreachable, or "
        "'already exists': then PENDING, its messages held, until a refresh reads it). "
        "Progress per platform goes to stderr."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--mode",
            choices=["dry-run", "upsert", "refresh"],
            default="dry-run",
            help="dry-run: print the plan, no network call; upsert: submit the missing "
            "variants; refresh: read statuses back from Meta (default: %(default)s)",
        )
        parser.add_argument(
            "--platform-ids",
            help="comma-separated platform ids or labels (default, when left out: all "
            "active); one naming none is refused",
        )
        parser.add_argument(
            "--templates",
            help="comma-separated production-run template names (default, when left out: "
            "all); one naming none is refused",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args, mode, platform_ids, templates, json: bool, **options):
        try:
            check_platform_languages()
            platforms = select_platforms(_split(platform_ids, "--platform-ids"))
            specs = selected_specs(_split(templates, "--templates"))
        except (ValueError, ImproperlyConfigured) as error:
            raise CommandError(str(error)) from error
        if not platforms:
            raise CommandError("no active WhatsApp platform: add one in the admin first")
        # A configured language no template is written in is left out of every plan: say so.
        warnings = languages_without_variants(platforms, specs)
        for warning in warnings:
            self.stderr.write(f"warning: {warning}")
        if mode == "dry-run":
            items = plan(platforms=platforms, specs=specs)
            empty = sorted({p.label for p in platforms} - {i.platform for i in items})
            none = f" (none on {', '.join(empty)})" if empty else ""
            self.stderr.write(
                f"planned {len(items)} variant(s) on {len(platforms)} platform(s){none}"
            )
        else:
            # One platform at a time (each is its own WABA at Meta), with progress on stderr
            # so --json output stays clean.
            items = []
            for number, platform in enumerate(platforms, start=1):
                self.stderr.write(
                    f"[{number}/{len(platforms)}] {platform.label}: reading templates from Meta…"
                )
                done = sync(mode=mode, platforms=[platform], specs=specs, now=timezone.now())
                items += done
                outcome = ", ".join(
                    f"{sum(1 for i in done if i.action == a)} {a}"
                    for a in sorted({i.action for i in done})
                )
                self.stderr.write(f"[{number}/{len(platforms)}] {platform.label}: {outcome}")
        if json:
            self.stdout.write(
                _dumps({"mode": mode, "items": [i.as_dict() for i in items], "warnings": warnings})
            )
        else:
            self.stdout.write(f"mode {mode}: {len(items)} template variant(s)")
            for item in items:
                detail = f" — {item.detail}" if item.detail else ""
                self.stdout.write(
                    f"  {item.platform:<8} {item.template:<46} {item.language:<3} "
                    f"{item.action:<8} {item.status}{detail}"
                )
            counts = {}
            for item in items:
                counts[item.action] = counts.get(item.action, 0) + 1
            self.stdout.write("  " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
        failed = [i for i in items if i.action == "failed"]
        if failed:
            raise CommandError(f"{len(failed)} variant(s) failed: {failed[0].detail}")


def _dumps(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
