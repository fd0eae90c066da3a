"""Message templates: checked when saved, compiled once per batch, rendered over plain data.

A template sees only its declared variables, converted to plain values (str, numbers,
dates, lists, dicts), so nothing in a template can call a method that changes data or reach
settings. Email bodies are placed into the layout in templates/emails/ (header and footer
components), sent as HTML with the plain text as the alternative.
"""

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cached_property

from django.template import Context, Engine, Template, TemplateSyntaxError, loader
from django.template import defaulttags as tags
from django.template.base import FilterExpression, Node, NodeList, TextNode, Variable, VariableNode
from django.template.loader_tags import IncludeNode
from django.template.smartif import TokenBase

# Engine for message templates: no loaders (so {% include %} finds nothing), no autoescape
# (the text is plain; the HTML layout escapes it).
_ENGINE = Engine(autoescape=False, string_if_invalid="")

# Control-flow tags only: no {% load %}, {% include %}, {% url %}, {% debug %}, {% csrf_token %}.
_ALLOWED_NODES = (
    TextNode,
    VariableNode,
    tags.IfNode,
    tags.ForNode,
    tags.WithNode,
    tags.FirstOfNode,
    tags.CommentNode,
    tags.SpacelessNode,
    tags.VerbatimNode,
    tags.FilterNode,
    tags.NowNode,
    tags.IfChangedNode,
    tags.CycleNode,
    tags.TemplateTagNode,
)
EMAIL_LAYOUT = "emails/layout.html"


class TemplateProblem(ValueError):
    """A template that cannot be used; `field` names where the problem is."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    html_body: str


def plain(value):
    """Reduce a value to plain data a template may see (model instances become text)."""
    if value is None or isinstance(value, str | int | float | bool | date | datetime):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    return str(value)


def _walk(nodelist: NodeList) -> Iterator[Node]:
    for node in nodelist:
        yield node
        if isinstance(node, tags.IfNode):
            for _, branch in node.conditions_nodelists:
                yield from _walk(branch)
            continue
        for attr in node.child_nodelists:
            yield from _walk(getattr(node, attr, None) or [])


def _expressions(value) -> Iterator[FilterExpression]:
    if isinstance(value, FilterExpression):
        yield value
    elif isinstance(value, TokenBase):  # {% if %} conditions: literals and operators
        for part in ("value", "first", "second"):
            yield from _expressions(getattr(value, part, None))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _expressions(item)
    elif isinstance(value, list | tuple) and not isinstance(value, NodeList):
        for item in value:
            yield from _expressions(item)


def _names_used(expression: FilterExpression, *, own_var: bool = True) -> Iterator[str]:
    if own_var and isinstance(expression.var, Variable) and expression.var.lookups:
        yield expression.var.lookups[0]
    for _, args in expression.filters:
        for is_variable, arg in args:
            if is_variable and arg.lookups:
                yield arg.lookups[0]


def _free_names(nodelist: NodeList, bound: set[str]) -> set[str]:
    """The variables the nodes read that are not bound where they read them: what the
    template needs from its context.

    {% for %} binds its loop variables and `forloop`, {% with %} its names, for their own
    body only (Django pushes a context for them). `{% firstof/cycle/now … as name %}` sets
    `name` for what follows until the enclosing push ends, so `bound` grows as siblings are
    read and is shared with bodies that push nothing ({% if %}, {% filter %}, …).
    {% filter f %} reads only its filters' arguments: the `var` Django filters the body
    through is internal to the tag, not a variable the author wrote."""
    free: set[str] = set()
    for node in nodelist:
        if isinstance(node, tags.ForNode):
            free |= set(_names_used(node.sequence)) - bound
            free |= _free_names(node.nodelist_loop, {*bound, *node.loopvars, "forloop"})
            free |= _free_names(node.nodelist_empty, bound)  # rendered without a push
            continue
        if isinstance(node, tags.WithNode):
            for expression in node.extra_context.values():
                free |= set(_names_used(expression)) - bound
            free |= _free_names(node.nodelist, {*bound, *node.extra_context})
            continue
        if isinstance(node, tags.FilterNode):
            free |= set(_names_used(node.filter_expr, own_var=False)) - bound
            free |= _free_names(node.nodelist, bound)
            continue
        for value in vars(node).values():
            for expression in _expressions(value):
                free |= set(_names_used(expression)) - bound
        if isinstance(node, tags.IfNode):
            for _, branch in node.conditions_nodelists:
                free |= _free_names(branch, bound)
        else:
            for attr in node.child_nodelists:
                free |= _free_names(getattr(node, attr, None) or NodeList(), bound)
        if isinstance(node, tags.CycleNode) and node.variable_name:
            bound.add(node.variable_name)
        if isinstance(node, tags.FirstOfNode | tags.NowNode) and node.asvar:
            bound.add(node.asvar)
    return free


UNCLOSED = (("{{", "}}"), ("{%", "%}"), ("{#", "#}"))

# What a message template may ask of the renderer, so that its output stays about the size
# of its source and its variables: one render per recipient, 10,000 recipients a batch.
MAX_SOURCE_CHARS = 20_000
SUBJECT_MAX_CHARS = 300  # the subject columns of reviews, deliveries and recorded messages
MAX_WIDTH = 1_000
# Filters whose argument sets the width or precision of their output.
WIDTH_FILTERS = ("center", "ljust", "rjust", "floatformat", "stringformat")


def _width_problem(expression: FilterExpression) -> str:
    """Why a filter of the expression could make a huge output ("" if none can)."""
    for function, args in expression.filters:
        name = getattr(function, "_filter_name", function.__name__)
        if name not in WIDTH_FILTERS:
            continue
        for is_variable, arg in args:
            if is_variable:
                return f"|{name} takes a number written in the template, not a variable"
            if name in ("center", "ljust", "rjust") and not re.fullmatch("[0-9]+", str(arg)):
                return f"|{name} takes a whole number, not {arg!r}"
            if any(int(number) > MAX_WIDTH for number in re.findall("[0-9]+", str(arg))):
                return f"|{name} takes a width or precision of at most {MAX_WIDTH:,}"
    return ""


def _loop_problem(nodelist: NodeList, *, inside_loop: bool = False) -> str:
    """Why the template's loops could repeat without bound ("" if they cannot): a loop goes
    over a variable (text written in the template is not a list), and loops do not nest."""
    for node in nodelist:
        if isinstance(node, tags.ForNode):
            if inside_loop:
                return "loops may not be nested"
            if not isinstance(node.sequence.var, Variable):
                return "{% for %} goes over a variable, not over a value written in the template"
            children = [(node.nodelist_loop, True), (node.nodelist_empty, False)]
        elif isinstance(node, tags.IfNode):
            children = [(branch, inside_loop) for _, branch in node.conditions_nodelists]
        else:
            children = [
                (getattr(node, attr, None) or NodeList(), inside_loop)
                for attr in node.child_nodelists
            ]
        for child, inside in children:
            if problem := _loop_problem(child, inside_loop=inside):
                return problem
    return ""


def check_source(
    field: str,
    source: str,
    declared: set[str],
    *,
    declared_in: str | None = None,
    label: str | None = None,
) -> Template:
    """Compile one template source; raise TemplateProblem naming what is wrong, on `field`;
    its message names the source by `label` (as the form's reader knows it), or `field`.

    `declared_in` names the field where the author declares the template's variables (a
    message template's `variables`); without one the variables are a fixed set (the batch
    form's), and an unknown variable's message lists them instead of asking to declare it."""
    label = label or field
    if len(source) > MAX_SOURCE_CHARS:
        raise TemplateProblem(
            field, f"{label} is {len(source):,} characters long: at most {MAX_SOURCE_CHARS:,}."
        )
    try:
        template = _ENGINE.from_string(source)
    except TemplateSyntaxError as error:
        raise TemplateProblem(
            field, f"Template syntax error in {label}: {_syntax_message(error)}"
        ) from error
    nodes = list(_walk(template.nodelist))
    for node in nodes:
        # Django keeps an unclosed {{ … (or {% …, {# …) as text, which would reach the reader.
        if isinstance(node, TextNode):
            for opener, closer in UNCLOSED:
                at = node.s.find(opener)
                if at >= 0:
                    near = node.s[at : at + 30].splitlines()[0]
                    raise TemplateProblem(
                        field, f"Unclosed {opener} in {label}: {near!r} needs its {closer}."
                    )
    for node in nodes:
        if not isinstance(node, _ALLOWED_NODES):
            tag = node.token.contents.split()[0] if getattr(node, "token", None) else node
            raise TemplateProblem(field, f"The tag {{% {tag} %}} is not allowed in {label}.")
        for value in vars(node).values():
            for expression in _expressions(value):
                if problem := _width_problem(expression):
                    raise TemplateProblem(field, f"In {label}, {problem}.")
    if problem := _loop_problem(template.nodelist):
        raise TemplateProblem(field, f"In {label}, {problem}.")
    unknown = sorted(_free_names(template.nodelist, set()) - declared)
    if unknown:
        many = len(unknown) > 1
        known = ", ".join(sorted(declared))
        if declared_in:
            hint = (
                f"Declare {'them' if many else 'it'} in {declared_in}. Declared: {known or 'none'}."
            )
        else:
            hint = f"Available variables: {known}." if known else "No variables are available."
        raise TemplateProblem(
            field, f"Unknown variable{'s' if many else ''} in {label}: {', '.join(unknown)}. {hint}"
        )
    return template


# Django ends this error with the libraries one may load, one per line: none here.
_UNKNOWN_LIBRARY = re.compile(r"(?s)^(.* is not a registered tag library)\. Must be one of:(.*)$")


def _syntax_message(error: TemplateSyntaxError) -> str:
    """Django's message, ending sensibly where it would end on an empty list."""
    message = str(error)
    match = _UNKNOWN_LIBRARY.match(message)
    if match is None:
        return message
    libraries = ", ".join(match[2].split())
    if not libraries:  # always so: the engine of message templates has no libraries
        return f"{match[1]}: Herald's message templates load no tag libraries."
    return f"{match[1]}. Must be one of: {libraries}."


@dataclass(frozen=True)
class CompiledTemplate:
    """A template compiled once, rendered for many recipients (the email layout too: it is
    loaded once per compiled template, its components inlined)."""

    channel: str
    variables: tuple[str, ...]
    subject: Template
    body: Template

    def render_text(self, context: Mapping) -> tuple[str, str]:
        """The subject (on one line) and the plain-text body, without the email layout."""
        data = Context(
            {name: plain(context.get(name, "")) for name in self.variables}, autoescape=False
        )
        return subject_line(self.subject.render(data)), self.body.render(data).strip()

    def render(self, context: Mapping, *, layout_context: Mapping | None = None) -> Rendered:
        return self.wrap(*self.render_text(context), layout_context=layout_context)

    def wrap(self, subject: str, body: str, *, layout_context: Mapping | None = None) -> Rendered:
        """Finish rendered text: one-line subject, trimmed body, and for email the HTML
        layout around it."""
        subject = subject_line(subject)
        body = body.strip()
        html_body = ""
        if self.channel == "email":
            layout = self._layout
            html_body = layout.render(
                Context(
                    {"subject": subject, "body": body, **(layout_context or {})},
                    autoescape=layout.engine.autoescape,
                )
            )
        return Rendered(subject=subject, body=body, html_body=html_body)

    @cached_property
    def _layout(self) -> Template:
        return _inline_includes(loader.get_template(EMAIL_LAYOUT).template)


def subject_line(text: str) -> str:
    """A rendered subject as it is stored and sent: on one line (as a header must be), and
    at most SUBJECT_MAX_CHARS, cut with "…" (a 190-character template whose variables are
    long company names rendered 2,000 characters: PostgreSQL refused the row)."""
    line = " ".join(text.split())
    if len(line) <= SUBJECT_MAX_CHARS:
        return line
    return line[: SUBJECT_MAX_CHARS - 1].rstrip() + "…"


def _inline_includes(template: Template) -> Template:
    """The same template with each top-level {% include "constant name" %} (no `with`, no
    `only`) replaced by the included template's nodes: it renders the same text without
    looking the components up again for every recipient."""
    nodes = NodeList()
    for node in template.nodelist:
        constant = isinstance(node, IncludeNode) and isinstance(node.template.var, str)
        if constant and not node.extra_context and not node.isolated_context:
            included = _inline_includes(template.engine.get_template(node.template.var))
            nodes.extend(included.nodelist)
        else:
            nodes.append(node)
    inlined = copy.copy(template)
    inlined.nodelist = nodes
    return inlined


def compile_template(template) -> CompiledTemplate:
    """Compile a MessageTemplate (or anything with channel, subject, body, variables)."""
    declared = set(template.variables or [])
    return CompiledTemplate(
        channel=template.channel,
        variables=tuple(template.variables or []),
        subject=check_source("subject", template.subject or "", declared, declared_in="variables"),
        body=check_source("body", template.body or "", declared, declared_in="variables"),
    )
