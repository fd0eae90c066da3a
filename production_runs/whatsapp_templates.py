"""The WhatsApp templates production runs use: canonical specs (the one source for sends and
for submitting them to Meta), which languages each platform gets, and the sync with Meta:
plan (no network), upsert (submit only missing variants) and refresh (read statuses back).

Bodies fill {{1}}..{{n}} from `variables` in order. The three reminder templates are seed
002's, word for word; the lifecycle, digest and design-image templates follow their style.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q

from notifications.models import Channel, Delivery
from notifications.outbox import kick_dispatch_on_commit
from production_runs.models import TemplateStatus, TemplateVariantStatus, WhatsAppPlatform

logger = logging.getLogger(__name__)

UTILITY = "UTILITY"
PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    family: str  # reminder, lifecycle, digest, design
    variables: tuple[str, ...]  # context names for {{1}}..{{n}}
    bodies: dict[str, str]  # language -> body text
    examples: dict[str, tuple[str, ...]]  # language -> one example value per variable
    category: str = UTILITY
    header_image: bool = False
    button_text: dict[str, str] = field(default_factory=dict)  # language -> URL button label

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.bodies)


_EX_EN = ("Rajesh", "Block Print Kurta", "prun_01ABC")
_EX_HI = ("राजेश", "ब्लॉक प्रिंट कुर्ता", "prun_01ABC")

SPECS: dict[str, TemplateSpec] = {
    spec.name: spec
    for spec in [
        # --- Seed 002's reminders (the exact bodies of its "Path B" JSON) ---------------
        TemplateSpec(
            name="jyt_production_run_reminder_pending_v1",
            family="reminder",
            variables=("partner_name", "design_name", "run_id", "days_since_assignment"),
            bodies={
                "en": "Hi {{1}}, a quick reminder — production run {{3}} for design {{2}} has "
                "been waiting for your response.\n\n*Waiting since:* {{4}} day(s) ago\n\n"
                "Please open the partner portal and tap Accept or Decline so we can plan the "
                "next steps. Reply here if you need help.",
                "hi": "नमस्ते {{1}}, याद दिला रहे हैं — डिज़ाइन {{2}} के लिए प्रोडक्शन रन {{3}} "
                "अभी भी आपके उत्तर की प्रतीक्षा में है।\n\n*प्रतीक्षा अवधि:* {{4}} दिन\n\n"
                "कृपया पार्टनर पोर्टल खोलें और स्वीकार करें या मना करें पर टैप करें ताकि हम "
                "अगले कदम तय कर सकें। मदद चाहिए तो यहीं उत्तर दें।",
            },
            examples={"en": (*_EX_EN, "2"), "hi": (*_EX_HI, "2")},
        ),
        TemplateSpec(
            name="jyt_production_run_reminder_not_started_v1",
            family="reminder",
            variables=("partner_name", "design_name", "run_id", "days_since_acceptance"),
            bodies={
                "en": "Hi {{1}}, just checking in — you've accepted production run {{3}} for "
                "design {{2}}, but we haven't seen it start yet.\n\n*Days since acceptance:* "
                "{{4}}\n\nIf you've already begun, please tap Start in the partner portal so "
                "we can track progress. Reply here if you're blocked on anything and the team "
                "will help.",
                "hi": "नमस्ते {{1}}, बस संपर्क कर रहे हैं — आपने डिज़ाइन {{2}} के लिए प्रोडक्शन "
                "रन {{3}} स्वीकार किया है, लेकिन काम अभी शुरू नहीं हुआ है।\n\n*स्वीकृति के बाद "
                "के दिन:* {{4}}\n\nयदि आप पहले से शुरू कर चुके हैं, तो कृपया पार्टनर पोर्टल में "
                "Start (शुरू करें) पर टैप करें ताकि हम प्रगति ट्रैक कर सकें। कोई बाधा हो तो "
                "यहीं उत्तर दें, टीम मदद करेगी।",
            },
            examples={"en": (*_EX_EN, "2"), "hi": (*_EX_HI, "2")},
        ),
        TemplateSpec(
            name="jyt_production_run_reminder_idle_v1",
            family="reminder",
            variables=("partner_name", "design_name", "run_id", "produced_quantity", "quantity"),
            bodies={
                "en": "Hi {{1}}, checking in on production run {{3}} for design {{2}} — it's "
                "been quiet for a few days.\n\n*Progress:* {{4}} of {{5}} pieces produced\n\n"
                "Please log a fresh produced-quantity update in the partner portal so we know "
                "where things stand. Reply here if you're blocked and the team will help.",
                "hi": "नमस्ते {{1}}, डिज़ाइन {{2}} के लिए प्रोडक्शन रन {{3}} पर अपडेट चाहिए — "
                "कुछ दिनों से कोई गतिविधि नहीं है।\n\n*प्रगति:* {{5}} में से {{4}} पीस पूरे\n\n"
                "कृपया पार्टनर पोर्टल में ताज़ा उत्पादित मात्रा अपडेट दर्ज करें ताकि हमें "
                "वर्तमान स्थिति का पता चले। कोई बाधा हो तो यहीं उत्तर दें, टीम मदद करेगी।",
            },
            examples={"en": (*_EX_EN, "120", "250"), "hi": (*_EX_HI, "120", "250")},
        ),
        # --- Lifecycle (the transactional flow: sent_to_partner, cancelled, completed) ----
        TemplateSpec(
            name="jyt_production_run_assigned_v1",
            family="lifecycle",
            variables=("partner_name", "design_name", "run_id", "quantity"),
            bodies={
                "en": "Hi {{1}}, production run {{3}} for design {{2}} has been sent to you: "
                "{{4}} pieces.\n\nPlease open the partner portal and tap Accept or Decline. "
                "Reply here if you need help.",
                "hi": "नमस्ते {{1}}, डिज़ाइन {{2}} के लिए प्रोडक्शन रन {{3}} आपको भेजा गया है: "
                "{{4}} पीस।\n\nकृपया पार्टनर पोर्टल खोलें और स्वीकार करें या मना करें पर टैप "
                "करें। मदद चाहिए तो यहीं उत्तर दें।",
            },
            examples={"en": (*_EX_EN, "250"), "hi": (*_EX_HI, "250")},
        ),
        TemplateSpec(
            name="jyt_production_run_cancelled_v1",
            family="lifecycle",
            variables=("partner_name", "design_name", "run_id"),
            bodies={
                "en": "Hi {{1}}, production run {{3}} for design {{2}} has been cancelled. "
                "Please stop work on it. Reply here if you have questions.",
                "hi": "नमस्ते {{1}}, डिज़ाइन {{2}} के लिए प्रोडक्शन रन {{3}} रद्द कर दिया गया "
                "है। कृपया इस पर काम रोक दें। कोई प्रश्न हो तो यहीं उत्तर दें।",
            },
            examples={"en": _EX_EN, "hi": _EX_HI},
        ),
        TemplateSpec(
            name="jyt_production_run_completed_v1",
            family="lifecycle",
            variables=("partner_name", "design_name", "run_id", "produced_quantity"),
            bodies={
                "en": "Hi {{1}}, thank you — production run {{3}} for design {{2}} is complete "
                "with {{4}} pieces produced.",
                "hi": "नमस्ते {{1}}, धन्यवाद — डिज़ाइन {{2}} के लिए प्रोडक्शन रन {{3}} पूरा हो "
                "गया है, {{4}} पीस तैयार हुए।",
            },
            examples={"en": (*_EX_EN, "250"), "hi": (*_EX_HI, "250")},
        ),
        # --- The design image with the raw run id and the signed portal link -------------
        TemplateSpec(
            name="jyt_production_run_design_v1",
            family="design",
            variables=("run_id", "design_name"),
            bodies={
                "en": "Run {{1}} — design {{2}}. Tap the button to open it in the partner portal.",
                "hi": "रन {{1}} — डिज़ाइन {{2}}। पार्टनर पोर्टल में खोलने के लिए बटन पर टैप करें।",
            },
            examples={
                "en": ("prun_01ABC", "Block Print Kurta"),
                "hi": ("prun_01ABC", "ब्लॉक प्रिंट कुर्ता"),
            },
            header_image=True,
            button_text={"en": "Open run", "hi": "रन खोलें"},
        ),
        # --- Digest family (one message per partner and bucket) ---------------------------
        TemplateSpec(
            name="jyt_production_run_digest_pending_v1",
            family="digest",
            variables=("partner_name", "run_count", "run_list"),
            bodies={
                "en": "Hi {{1}}, {{2}} production runs are waiting for your response: {{3}}."
                "\n\nPlease open the partner portal and tap Accept or Decline on each. Reply "
                "here if you need help.",
                "hi": "नमस्ते {{1}}, {{2}} प्रोडक्शन रन आपके उत्तर की प्रतीक्षा में हैं: {{3}}।"
                "\n\nकृपया पार्टनर पोर्टल खोलें और हर रन पर स्वीकार करें या मना करें पर टैप "
                "करें। मदद चाहिए तो यहीं उत्तर दें।",
            },
            examples={
                "en": ("Rajesh", "3", "prun_01ABC, prun_01ABD, prun_01ABE"),
                "hi": ("राजेश", "3", "prun_01ABC, prun_01ABD, prun_01ABE"),
            },
        ),
        TemplateSpec(
            name="jyt_production_run_digest_not_started_v1",
            family="digest",
            variables=("partner_name", "run_count", "run_list"),
            bodies={
                "en": "Hi {{1}}, you've accepted {{2}} production runs that haven't started "
                "yet: {{3}}.\n\nIf you've already begun, please tap Start on each in the "
                "partner portal. Reply here if you're blocked and the team will help.",
                "hi": "नमस्ते {{1}}, आपने {{2}} प्रोडक्शन रन स्वीकार किए हैं जो अभी शुरू नहीं "
                "हुए: {{3}}।\n\nयदि आप शुरू कर चुके हैं, तो कृपया पार्टनर पोर्टल में हर रन पर "
                "Start (शुरू करें) पर टैप करें। कोई बाधा हो तो यहीं उत्तर दें, टीम मदद करेगी।",
            },
            examples={
                "en": ("Rajesh", "2", "prun_01ABC, prun_01ABD"),
                "hi": ("राजेश", "2", "prun_01ABC, prun_01ABD"),
            },
        ),
        TemplateSpec(
            name="jyt_production_run_digest_idle_v1",
            family="digest",
            variables=("partner_name", "run_count", "run_list"),
            bodies={
                "en": "Hi {{1}}, {{2}} of your production runs have been quiet for a few "
                "days: {{3}}.\n\nPlease log a fresh produced-quantity update for each in the "
                "partner portal. Reply here if you're blocked and the team will help.",
                "hi": "नमस्ते {{1}}, आपके {{2}} प्रोडक्शन रन पर कुछ दिनों से कोई गतिविधि नहीं "
                "है: {{3}}।\n\nकृपया पार्टनर पोर्टल में हर रन के लिए ताज़ा उत्पादित मात्रा "
                "अपडेट दर्ज करें। कोई बाधा हो तो यहीं उत्तर दें, टीम मदद करेगी।",
            },
            examples={
                "en": ("Rajesh", "2", "prun_01ABC, prun_01ABD"),
                "hi": ("राजेश", "2", "prun_01ABC, prun_01ABD"),
            },
        ),
    ]
}

DESIGN_TEMPLATE = "jyt_production_run_design_v1"


class SpecProblem(ValueError):
    pass


def validate_spec(spec: TemplateSpec) -> None:
    """Meta rejects a body whose placeholders are not exactly {{1}}..{{n}} with one example
    value each; catch that here instead of in a review email."""
    if spec.category != UTILITY:
        raise SpecProblem(f"{spec.name}: reminders are UTILITY templates, not {spec.category}")
    for language, body in spec.bodies.items():
        numbers = sorted({int(n) for n in PLACEHOLDER.findall(body)})
        expected = list(range(1, len(spec.variables) + 1))
        if numbers != expected:
            raise SpecProblem(
                f"{spec.name} ({language}): the body uses {numbers}, the variables need {expected}"
            )
        example = spec.examples.get(language)
        if example is None or len(example) != len(spec.variables):
            raise SpecProblem(
                f"{spec.name} ({language}): the example has "
                f"{0 if example is None else len(example)} values for {len(spec.variables)} "
                "variables"
            )
        if body.strip().startswith("{{") or body.strip().endswith("}}"):
            raise SpecProblem(
                f"{spec.name} ({language}): Meta refuses a body that starts or ends with a variable"
            )
        if spec.header_image and language not in spec.button_text:
            raise SpecProblem(f"{spec.name} ({language}): the portal button needs its label")


def portal_link_base() -> str:
    return f"{settings.PARTNER_PORTAL_URL.rstrip('/')}/wa-auth?token="


def request_body(spec: TemplateSpec, language: str) -> dict:
    """The JSON Meta's POST /{waba-id}/message_templates takes for one variant."""
    components: list[dict] = []
    if spec.header_image:
        handle = settings.WHATSAPP_HEADER_IMAGE_HANDLE
        components.append(
            {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": [handle]}}
        )
    components.append(
        {
            "type": "BODY",
            "text": spec.bodies[language],
            "example": {"body_text": [list(spec.examples[language])]},
        }
    )
    if spec.header_image:
        components.append(
            {
                "type": "BUTTONS",
                "buttons": [
                    {
                        "type": "URL",
                        "text": spec.button_text[language],
                        "url": portal_link_base() + "{{1}}",
                        "example": [portal_link_base() + "example"],
                    }
                ],
            }
        )
    return {
        "name": spec.name,
        "category": spec.category,
        "language": language,
        "components": components,
    }


def django_body(spec: TemplateSpec, language: str) -> str:
    """The body in Django template syntax over named variables (for the Delivery's text)."""
    return PLACEHOLDER.sub(
        lambda match: "{{ " + spec.variables[int(match.group(1)) - 1] + " }}",
        spec.bodies[language],
    )


# --- languages per platform ---------------------------------------------------------------


PLATFORM_LANGUAGES_FORMAT = (
    'like "IN=en,hi;AU=en": a platform label, "=", its language codes separated by commas; '
    'platforms separated by ";"'
)
# Meta's language codes: en, hi, fil, en_US, pt_BR, zh_CN...
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(_[A-Za-z]{2,4})?")


def parse_platform_languages(value: str) -> dict[str, list[str]]:
    """WHATSAPP_PLATFORM_LANGUAGES="AU=en;IN=en,hi" -> {"AU": ["en"], "IN": ["en", "hi"]}.
    Raises ImproperlyConfigured (one line, naming the setting and its format) otherwise."""
    result: dict[str, list[str]] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        label, sep, languages = part.partition("=")
        codes = [code.strip() for code in languages.split(",") if code.strip()]
        if not sep or not label.strip() or not codes:
            raise ImproperlyConfigured(
                f"WHATSAPP_PLATFORM_LANGUAGES: {part.strip()!r} is not {PLATFORM_LANGUAGES_FORMAT}"
            )
        for code in codes:
            if not LANGUAGE_CODE.fullmatch(code):
                raise ImproperlyConfigured(
                    f"WHATSAPP_PLATFORM_LANGUAGES: {code!r} is not a language code like en, hi "
                    f"or pt_BR (in {part.strip()!r}; the setting is {PLATFORM_LANGUAGES_FORMAT})"
                )
        result[label.strip()] = codes
    return result


def check_platform_languages() -> None:
    """Raises ImproperlyConfigured when WHATSAPP_PLATFORM_LANGUAGES is malformed."""
    parse_platform_languages(settings.WHATSAPP_PLATFORM_LANGUAGES)


def languages_for_platform(platform: WhatsAppPlatform) -> list[str]:
    """Seed 002's languagesForPlatform: +91 among the country codes -> en + hi, else en;
    WHATSAPP_PLATFORM_LANGUAGES overrides by label."""
    override = parse_platform_languages(settings.WHATSAPP_PLATFORM_LANGUAGES)
    if platform.label in override:
        return override[platform.label]
    return ["en", "hi"] if "+91" in platform.country_code_list else ["en"]


def languages_without_variants(
    platforms: list[WhatsAppPlatform], specs: list[TemplateSpec]
) -> list[str]:
    """One line per platform and configured language that some of `specs` have no variant
    in (WHATSAPP_PLATFORM_LANGUAGES="IN=en,fr" or "AU=de"). The plan leaves such a variant
    out, and a platform left with no variant of a template cannot send it."""
    notes = []
    for platform in platforms:
        languages = languages_for_platform(platform)
        for language in languages:
            lacking = [spec for spec in specs if language not in spec.bodies]
            if not lacking:
                continue
            if len(lacking) == 1:
                which = f"{lacking[0].name} (it has {', '.join(lacking[0].languages)})"
            else:
                written = sorted({lang for spec in lacking for lang in spec.languages})
                share = "any" if len(lacking) == len(specs) else len(lacking)
                which = f"{share} of the {len(specs)} templates (they have {', '.join(written)})"
            served = [spec for spec in lacking if any(lang in spec.bodies for lang in languages)]
            unserved = [spec.name for spec in lacking if spec not in served]
            if not unserved:
                outcome = f"{language} is left out"
            elif served:
                outcome = f"{platform.label} gets no variant of {', '.join(unserved)}"
            else:
                outcome = (
                    f"{platform.label} gets no variant of {'it' if len(lacking) == 1 else 'them'}"
                )
            notes.append(f"{platform.label}: no {language} variant of {which}: {outcome}")
    return notes


# --- sync with Meta -----------------------------------------------------------------------


@dataclass
class PlanItem:
    platform: str
    template: str
    language: str
    action: str  # create, exists, blocked, created, failed, missing
    status: str = ""
    detail: str = ""

    def as_dict(self) -> dict:
        return {
            "platform": self.platform,
            "template": self.template,
            "language": self.language,
            "action": self.action,
            "status": self.status,
            "detail": self.detail,
        }


def selected_specs(names: list[str] | None = None) -> list[TemplateSpec]:
    if not names:
        return list(SPECS.values())
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown template(s): {', '.join(unknown)}")
    # A name given twice is one template: submitted twice, Meta refused the second as
    # "already exists" and the command failed.
    return [SPECS[name] for name in dict.fromkeys(names)]


def select_platforms(ids: list[str] | None = None) -> list[WhatsAppPlatform]:
    """Active platforms, or the ones named by id or label (inactive ones included)."""
    if not ids:
        return list(WhatsAppPlatform.objects.filter(is_active=True))
    found = []
    for ident in ids:
        platform = WhatsAppPlatform.objects.filter(label=ident).first()
        if platform is None and ident.isascii() and ident.isdigit():
            platform = WhatsAppPlatform.objects.filter(pk=int(ident)).first()
        if platform is None:
            raise ValueError(f"no WhatsApp platform with id or label {ident!r}")
        if platform not in found:  # named twice (or by label and by id): synced once
            found.append(platform)
    return found


def _blocker(spec: TemplateSpec) -> str:
    if spec.header_image and not settings.WHATSAPP_HEADER_IMAGE_HANDLE:
        return (
            "needs WHATSAPP_HEADER_IMAGE_HANDLE (a sample image uploaded with Meta's Resumable "
            "Upload API) to submit an image header"
        )
    return ""


def variants(platform: WhatsAppPlatform, specs: list[TemplateSpec]):
    for spec in specs:
        for language in languages_for_platform(platform):
            if language in spec.bodies:
                yield spec, language


def plan(*, platforms: list[WhatsAppPlatform], specs: list[TemplateSpec]) -> list[PlanItem]:
    """What an upsert would do, from the statuses Herald has recorded. No network call."""
    items = []
    for platform in platforms:
        known = {
            (row.template_name, row.language): row
            for row in TemplateVariantStatus.objects.filter(platform=platform)
        }
        for spec, language in variants(platform, specs):
            row = known.get((spec.name, language))
            if row is not None and row.status != TemplateStatus.MISSING:
                items.append(
                    PlanItem(platform.label, spec.name, language, "exists", row.status, row.reason)
                )
                continue
            blocker = _blocker(spec)
            items.append(
                PlanItem(
                    platform.label,
                    spec.name,
                    language,
                    "blocked" if blocker else "create",
                    TemplateStatus.MISSING,
                    blocker,
                )
            )
    return items


def meta_status(value: str) -> str:
    """Meta's template status (or webhook event) as one of ours."""
    value = (value or "").upper()
    if value in TemplateStatus.values:
        return value
    return {
        "REINSTATED": TemplateStatus.APPROVED,
        "FLAGGED": TemplateStatus.APPROVED,  # still sendable; quality warning only
        "IN_APPEAL": TemplateStatus.PENDING,
        "PENDING_DELETION": TemplateStatus.DISABLED,
        "DELETED": TemplateStatus.MISSING,
        "LIMIT_EXCEEDED": TemplateStatus.PAUSED,
    }.get(value, TemplateStatus.PENDING)


# Statuses in which Meta may still approve a variant: a message whose variant is in one of
# them is held (dispatcher.template_approved_check), and looked at again every
# dispatcher.TEMPLATE_REVIEW_RETRY, or at once when the status changes (release_held).
IN_REVIEW = (TemplateStatus.PENDING, TemplateStatus.PAUSED)
WAITING_FOR_APPROVAL = "waiting for approval"


def variant_named(template: str, language: str) -> str:
    """How a delivery's reason names a template variant (release_held finds them by it)."""
    return f"template {template} ({language})"


def variant_state(template: str, language: str, status: str, platform: WhatsAppPlatform) -> str:
    """How a send-time decision about a template variant names it (a delivery's reason)."""
    return f"{variant_named(template, language)} is {status} on WhatsApp platform {platform.label}"


def release_held(
    *, platform: WhatsAppPlatform, template: str, language: str, status: str, now: datetime
) -> int:
    """The messages held waiting for this variant's approval are due now, when it left
    review (APPROVED: sent by the next dispatch; REJECTED, DISABLED, MISSING: cancelled by
    it, saying why) instead of at their next re-check, and the design images following
    them with them (sent right after their message, or cancelled with it). Only rows still
    scheduled move (conditional UPDATEs): a message being sent is not touched, so none goes
    twice; other templates, languages and platforms are left as they are. Returns how many
    messages moved."""
    if status in IN_REVIEW:
        return 0
    phone = Q(payload__phone_number_id=platform.phone_number_id)
    if platform.phone_number_id == settings.WHATSAPP_PHONE_NUMBER_ID:
        phone |= Q(payload__phone_number_id="")  # the send-time check reads "" as this one
    if status == TemplateStatus.APPROVED:
        outcome = f"now APPROVED on WhatsApp platform {platform.label}: due for sending"
    else:
        outcome = f"now {status} on WhatsApp platform {platform.label}: due, to be cancelled"
    held = Delivery.objects.filter(
        phone,
        # The outbox's due index: WHERE status = 'scheduled' AND send_at > now
        status=Delivery.Status.SCHEDULED,
        send_at__gt=now,
        channel=Channel.WHATSAPP,
        context_key__startswith="production_run",
        payload__template=template,
        payload__language=language,
        status_reason__startswith=f"{variant_named(template, language)} is ",
        status_reason__endswith=f": {WAITING_FOR_APPROVAL}",
    )
    with transaction.atomic():
        keys = dict(held.values_list("id", "idempotency_key"))
        released = held.filter(id__in=keys).update(
            send_at=now,
            status_reason=f"{variant_named(template, language)} {outcome}"[:300],
            updated_at=now,
        )
        if released:
            _release_design_images(list(keys.values()), now=now)
    if released:
        logger.info(
            "template %s (%s) %s on %s: %d held message(s) due now",
            template,
            language,
            status,
            platform.label,
            released,
        )
        kick_dispatch_on_commit()
    return released


# A message's design image is staged under the message's key with ":design" after the event
# (dispatcher.DESIGN_KEY reads it back): production_run_event:<id>:design:<recipient>.
MESSAGE_KEY = re.compile(r"^(?P<event>production_run_event:\d+):(?P<recipient>partner:.+)$")


def _release_design_images(message_keys: list[str], *, now: datetime) -> int:
    """The design images waiting for these messages (deferred until the message's re-check,
    "follows message ...") are due now too: the dispatch that sends a released message sends
    its image right after it (claims go in send_at, then id order, and the image was staged
    after its message), not at the message's former re-check up to TEMPLATE_REVIEW_RETRY
    later. An image held for its own template's approval stays held."""
    image_keys = [
        f"{found['event']}:design:{found['recipient']}"
        for key in message_keys
        if (found := MESSAGE_KEY.match(key))
    ]
    if not image_keys:
        return 0
    return Delivery.objects.filter(
        idempotency_key__in=image_keys,
        status=Delivery.Status.SCHEDULED,
        send_at__gt=now,
        status_reason__startswith="follows message ",
    ).update(
        send_at=now,
        status_reason="follows its message, released with it",
        updated_at=now,
    )


def record_status(
    *,
    platform: WhatsAppPlatform,
    template: str,
    language: str,
    status: str,
    now: datetime,
    meta_id: str = "",
    reason: str = "",
) -> TemplateVariantStatus:
    """Record what Meta says about a variant. When it leaves review (approved, rejected...),
    the messages held for it are re-decided at once (release_held)."""
    before = (
        TemplateVariantStatus.objects.filter(
            platform=platform, template_name=template, language=language
        )
        .values_list("status", flat=True)
        .first()
    )
    row, _ = TemplateVariantStatus.objects.update_or_create(
        platform=platform,
        template_name=template,
        language=language,
        defaults={
            "status": meta_status(status),
            "reason": reason[:300],
            "updated_at": now,
            **({"meta_id": meta_id} if meta_id else {}),
        },
    )
    if row.status != before:
        release_held(
            platform=platform, template=template, language=language, status=row.status, now=now
        )
    return row


def sync(
    *,
    mode: str,
    platforms: list[WhatsAppPlatform],
    specs: list[TemplateSpec],
    now: datetime,
) -> list[PlanItem]:
    """mode "upsert": read each WABA's templates, record their statuses and submit only the
    missing variants. mode "refresh": read statuses back, submit nothing. In both modes a
    variant absent from the list read is recorded MISSING, unless an upsert submits it
    successfully (then it is recorded as Meta answered, usually PENDING)."""
    from production_runs.graph import GraphClient, GraphError

    if mode not in ("upsert", "refresh"):
        raise ValueError(f"unknown mode {mode!r}")
    items: list[PlanItem] = []
    for platform in platforms:
        wanted = list(variants(platform, specs))
        try:
            client = GraphClient(platform)
            existing = {(t["name"], t["language"]): t for t in client.list_templates()}
        except (GraphError, ImproperlyConfigured) as error:
            items += [
                PlanItem(platform.label, s.name, lang, "failed", "", str(error))
                for s, lang in wanted
            ]
            continue
        for spec, language in wanted:
            found = existing.get((spec.name, language))
            if found is not None:
                row = record_status(
                    platform=platform,
                    template=spec.name,
                    language=language,
                    status=found.get("status", ""),
                    meta_id=str(found.get("id", "")),
                    reason=str(found.get("rejected_reason") or ""),
                    now=now,
                )
                items.append(PlanItem(platform.label, spec.name, language, "exists", row.status))
                continue
            # Absent from the list just read: Meta does not have this variant, whatever was
            # recorded before. Only a successful submission changes that (to what Meta
            # answered); otherwise it is recorded MISSING, so the plan, the admin and the
            # dispatcher stop taking it for sendable (record_status releases the messages
            # held for it, to be cancelled). One record per variant: a submission that
            # succeeds does not pass through MISSING and so keeps its held messages held.
            if mode == "refresh":
                missing = PlanItem(platform.label, spec.name, language, "missing", "MISSING")
            elif blocker := _blocker(spec):
                missing = PlanItem(
                    platform.label, spec.name, language, "blocked", "MISSING", blocker
                )
            else:
                try:
                    created = client.create_template(request_body(spec, language))
                except GraphError as error:
                    if error.unsure:
                        # Meta was busy or unreachable, or says it has it: it may have taken
                        # it. Recorded in review (its messages stay held, not cancelled)
                        # until a refresh or the next upsert reads Meta's list again.
                        row = record_status(
                            platform=platform,
                            template=spec.name,
                            language=language,
                            status=TemplateStatus.PENDING,
                            now=now,
                        )
                        items.append(
                            PlanItem(
                                platform.label,
                                spec.name,
                                language,
                                "failed",
                                row.status,
                                f"{error}; recorded in review until a refresh",
                            )
                        )
                        continue
                    missing = PlanItem(
                        platform.label, spec.name, language, "failed", "MISSING", str(error)
                    )
                else:
                    row = record_status(
                        platform=platform,
                        template=spec.name,
                        language=language,
                        status=created.get("status") or TemplateStatus.PENDING,
                        meta_id=str(created.get("id", "")),
                        now=now,
                    )
                    items.append(
                        PlanItem(platform.label, spec.name, language, "created", row.status)
                    )
                    continue
            record_status(
                platform=platform,
                template=spec.name,
                language=language,
                status=TemplateStatus.MISSING,
                now=now,
            )
            items.append(missing)
    logger.info(
        "whatsapp templates %s: %s",
        mode,
        {a: sum(1 for i in items if i.action == a) for a in {i.action for i in items}},
    )
    return items


def apply_template_status_event(payload: dict, *, now: datetime) -> dict:
    """A "whatsapp.template_status" ledger event (Meta's message_template_status_update
    webhook): update the variant's status on the WABA it names."""
    platform = WhatsAppPlatform.objects.filter(waba_id=payload.get("waba_id", "")).first()
    name = payload.get("template_name", "")
    if platform is None:
        return {"skipped": "unknown_waba", "waba_id": payload.get("waba_id", "")}
    if name not in SPECS:
        return {"skipped": "not_our_template", "template": name}
    row = record_status(
        platform=platform,
        template=name,
        language=payload.get("language", ""),
        status=payload.get("event", ""),
        meta_id=payload.get("template_id", ""),
        reason=payload.get("reason", "") or payload.get("event", ""),
        now=now,
    )
    return {"template": name, "language": row.language, "status": row.status}
