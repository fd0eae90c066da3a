"""Customer cohorts: a django-filter FilterSet over declared fields, stored with the run as a
query string (never raw SQL, unlike the seed's `WHERE __filter__`)."""

import re
from urllib.parse import unquote

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict

from notifications.models import Customer


class IdInFilter(django_filters.BaseInFilter, django_filters.NumberFilter):
    """Whole numbers a database id can be (NumberFilter's decimals cut 1.5 to 1, and an id
    beyond 64 bits reached the database and failed there)."""

    field_class = forms.IntegerField


class CharInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    pass


class CustomerFilter(django_filters.FilterSet):
    bid = django_filters.CharFilter(lookup_expr="iexact", help_text="e.g. B5875")
    region = django_filters.CharFilter(lookup_expr="iexact", help_text="e.g. NYC DOE")
    school_year = django_filters.CharFilter(lookup_expr="iexact", help_text="e.g. 2026-27")
    tag = django_filters.CharFilter(method="filter_tag", help_text="One whole tag, e.g. vip")
    company = django_filters.CharFilter(field_name="company_name", lookup_expr="icontains")
    email_domain = django_filters.CharFilter(field_name="email", lookup_expr="iendswith")
    account_ref = CharInFilter(field_name="account_ref", lookup_expr="in")
    id = IdInFilter(field_name="id", lookup_expr="in", min_value=1, max_value=2**63 - 1)

    class Meta:
        model = Customer
        fields: list[str] = []

    def filter_tag(self, queryset, name, value):
        """Customers carrying this tag among their comma-separated tags, as a whole tag
        (in any case, spaces around it ignored): "walk10" is not "walk10b"."""
        tag = re.escape(value.strip())
        return queryset.filter(tags__iregex=rf"(^|,)\s*{tag}\s*(,|$)")


FILTER_FIELDS = tuple(CustomerFilter.base_filters)


def reachable_customers():
    """The seed's base: active customers with an email."""
    return Customer.objects.filter(is_inactive=False).exclude(email="")


def cohort(query: str, *, base=None):
    """The customers a cohort filter selects among `base` (the reachable ones by default);
    ValidationError naming every bad part of it.

    Example: "bid=B5875&region=NYC DOE". An empty filter is refused: a cohort is never
    "everyone" by accident.
    """
    pairs = filter_conditions(query)
    problems = _problems(pairs)
    if problems:
        raise ValidationError({"customer_cohort_filter": problems})
    data = QueryDict(mutable=True)
    for key, value in pairs:
        data.appendlist(key, value)
    filterset = CustomerFilter(data, queryset=reachable_customers() if base is None else base)
    if not filterset.is_valid():
        invalid = "; ".join(
            f"{field}: {' '.join(errors)}" for field, errors in filterset.errors.items()
        )
        raise ValidationError({"customer_cohort_filter": f"Invalid filter: {invalid}"})
    return filterset.qs.order_by("id")


MAX_FILTER_CHARS = 2_000


def filter_conditions(query: str) -> list[tuple[str, str]]:
    """A cohort filter's (field, value) conditions, decoded and stripped, in the order
    written; ValidationError if it has none or joins them with ";". The fields and values
    are checked by `cohort`."""
    query = (query or "").strip().lstrip("?")
    if not query:
        raise ValidationError(
            {"customer_cohort_filter": f"Give a filter, e.g. bid=B5875 (fields: {_fields()})."}
        )
    if len(query) > MAX_FILTER_CHARS:  # SQLite refused a LIKE pattern of 50,000 characters
        raise ValidationError(
            {
                "customer_cohort_filter": f"A filter is at most {MAX_FILTER_CHARS:,} "
                f"characters; this one has {len(query):,}."
            }
        )
    # Conditions are joined by & only. A ";" written where a & belongs ("bid=B5875;region=
    # NYC DOE") would otherwise make the rest part of the value and select nobody. A value
    # may hold a ";" (a company name can), but not one followed by field=: that is a
    # separator. %3B writes it literally (checked before decoding).
    separator = re.compile(r";\s*[A-Za-z_]\w*\s*=")  # ";" then field=, in one part
    parts = [part for part in query.split("&") if part]
    separated = [part for part in parts if separator.search(part)]
    if separated:
        raise ValidationError(
            {
                "customer_cohort_filter": (
                    f"The filter part {separated[0]!r} uses ';' between conditions: separate "
                    "them with &, e.g. "
                    f"{separator.sub(lambda m: '&' + m[0][1:], separated[0])!r} "
                    "(%3B writes a literal ';')."
                )
            }
        )
    # Decoded with unquote, not unquote_plus: a "+" is a plus ("email_domain=+fail@…"), as
    # typed; %26 writes a literal &. Spaces around a name or a value are the typing's, not
    # the filter's: "bid=B5875 & region=NYC DOE" means bid B5875 and region NYC DOE.
    pairs = [
        (unquote(key, errors="replace").strip(), unquote(value, errors="replace").strip())
        for key, _, value in (part.partition("=") for part in parts)
    ]
    if not pairs:
        raise ValidationError({"customer_cohort_filter": f"Cannot read the filter {query!r}."})
    return pairs


# Lookups that ignore case (and the tag filter, an iregex): a value in one of them is the
# same value in any case. ASCII letters only: SQLite's LIKE folds no others.
CASELESS_LOOKUPS = frozenset({"iexact", "icontains", "istartswith", "iendswith", "iregex"})
CASELESS_METHODS = frozenset({"tag"})
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def canonical_filter(query: str) -> tuple[tuple[str, str], ...]:
    """A cohort filter as the cohort reads it, whatever its typing: its conditions sorted
    by field, a value lowercased where its field ignores case, a list's items (account_ref,
    id) sorted. "bid=B5875&region=NYC DOE" and "region=nyc%20doe & bid=b5875" are the same
    filter. ValidationError as `filter_conditions`."""
    canonical = []
    for key, value in filter_conditions(query):
        spec = CustomerFilter.base_filters.get(key)
        if isinstance(spec, django_filters.BaseInFilter):
            items = {item.strip() for item in value.split(",")}
            if isinstance(spec, IdInFilter):
                items = {str(int(item)) if _number(item) else item for item in items}
            value = ",".join(sorted(items))
        elif spec is not None and (spec.lookup_expr in CASELESS_LOOKUPS or key in CASELESS_METHODS):
            value = value.translate(_ASCII_LOWER)
        canonical.append((key, value))
    return tuple(sorted(canonical))


def _number(text: str) -> bool:
    """Digits 0-9 only (str.isdigit also takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def _problems(pairs: list[tuple[str, str]]) -> list[str]:
    """Everything wrong with the filter's field=value parts, each said once: a part without
    a field name, unknown fields, known fields without a value, fields given twice."""
    problems = []
    nameless = [f"{key}={value}" for key, value in pairs if not key.strip()]
    if nameless:
        problems.append(
            f"The filter part {nameless[0]!r} has no field name before its '='; write "
            f"field=value, with a field among {_fields()}."
        )
    named = [(key, value) for key, value in pairs if key.strip()]
    unknown = sorted({key for key, _ in named} - set(FILTER_FIELDS))
    if unknown:
        # "company=Smith & Sons": the & ended the condition, and " Sons" reads as a field.
        valueless = any(key in unknown and not value for key, value in named)
        hint = " (an & inside a value is written %26: company=Smith %26 Sons)" if valueless else ""
        problems.append(f"Unknown filter field {', '.join(unknown)}; use {_fields()}{hint}.")
    known = [(key, value) for key, value in named if key in FILTER_FIELDS]
    empty = sorted({key for key, value in known if not value.strip()})
    if empty:
        problems.append(f"The filter field {', '.join(empty)} has no value.")
    keys = [key for key, _ in known]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:  # a QueryDict would quietly keep the last value of each
        problems.append(
            f"The filter field {', '.join(repeated)} is given more than once; give it once "
            "(fields joined by & must all match; account_ref and id take a comma-separated "
            "list)."
        )
    return problems


def _fields() -> str:
    return ", ".join(FILTER_FIELDS)
