import pytest
from django.core.exceptions import ValidationError

from notifications.batch import compile_message
from notifications.models import MessageTemplate
from notifications.templating import TemplateProblem, check_source, compile_template
from tests.notifications.factories import DeliveryFactory


def _template(**fields):
    values = {
        "name": "pricing",
        "channel": "email",
        "subject": "Hi {{ customer_name }}",
        "body": "Account {{ account_ref }}",
        "variables": ["customer_name", "account_ref"],
    }
    values.update(fields)
    return MessageTemplate(**values)


def test_a_syntax_error_is_a_validation_error_naming_the_field_and_problem():
    with pytest.raises(ValidationError) as caught:
        _template(body="Hello {% if customer_name %}").clean()
    errors = caught.value.message_dict
    assert list(errors) == ["body"]
    assert "syntax error" in errors["body"][0]
    assert "endif" in errors["body"][0]


def test_an_undeclared_variable_is_named():
    with pytest.raises(ValidationError) as caught:
        _template(subject="Hi {{ first_name }} {{ customer_name|default:nickname }}").clean()
    assert caught.value.message_dict["subject"] == [
        "Unknown variables in subject: first_name, nickname. Declare them in variables. "
        "Declared: account_ref, customer_name."
    ]


def test_an_unknown_variable_with_none_declared_says_so():
    with pytest.raises(ValidationError) as caught:
        _template(subject="", body="{{ nickname }}", variables=[]).clean()
    assert caught.value.message_dict["body"] == [
        "Unknown variable in body: nickname. Declare it in variables. Declared: none."
    ]


def test_where_the_variables_are_fixed_the_message_lists_them_and_asks_no_declaring():
    # The batch form has no variables field: its messages see a fixed set, and name the
    # field as the form labels it.
    with pytest.raises(ValidationError) as caught:
        compile_message("Hello", "Dear {{ nickname }}")
    assert caught.value.message_dict["body_template"] == [
        "Unknown variable in the body template: nickname. Available variables: account_ref, bid, "
        "company_name, customer_name, region, school_year."
    ]
    with pytest.raises(TemplateProblem) as problem:
        check_source("subject", "{{ a }}{{ b }}", set())
    assert str(problem.value) == "Unknown variables in subject: a, b. No variables are available."


def test_an_unknown_tag_library_error_ends_sensibly():
    with pytest.raises(ValidationError) as caught:
        _template(body="{% load static %}").clean()
    assert caught.value.message_dict["body"] == [
        "Template syntax error in body: 'static' is not a registered tag library: "
        "Herald's message templates load no tag libraries."
    ]


def test_loop_and_with_variables_are_not_unknown():
    _template(
        variables=["runs", "customer_name"],
        subject="",
        body="{% for run in runs %}{{ forloop.counter }} {{ run.id }}{% endfor %}"
        "{% with who=customer_name %}{{ who }}{% endwith %}"
        "{% if customer_name and runs|length > 1 %}many{% endif %}",
    ).clean()


@pytest.mark.parametrize(
    "body, problem",
    [
        ("{% load static %}", "'static' is not a registered tag library"),
        ("{% debug %}", "The tag {% debug %} is not allowed in body."),
        ("{% include 'admin/base.html' %}", "The tag {% include %} is not allowed in body."),
        ("{% url 'admin:index' %}", "The tag {% url %} is not allowed in body."),
    ],
)
def test_tags_that_reach_outside_the_message_are_refused(body, problem):
    with pytest.raises(ValidationError) as caught:
        _template(body=body).clean()
    assert problem in caught.value.message_dict["body"][0]


def test_rendering_sees_only_declared_variables_as_plain_text():
    class Account:
        secret = "hidden"

        def __str__(self):
            return "ACME-1"

    compiled = compile_template(
        _template(
            subject="", body="{{ account_ref }}|{{ account_ref.secret }}", variables=["account_ref"]
        )
    )
    assert compiled.render({"account_ref": Account(), "other": "x"}).body == "ACME-1|"


@pytest.mark.django_db
def test_a_template_cannot_call_a_data_changing_method():
    delivery = DeliveryFactory()
    compiled = compile_template(
        _template(
            subject="", body="{{ delivery.delete }}{{ delivery.save }}", variables=["delivery"]
        )
    )
    rendered = compiled.render({"delivery": delivery})
    assert type(delivery).objects.filter(pk=delivery.pk).exists()
    assert rendered.body == ""  # a plain string has no .delete or .save


def test_email_body_is_compiled_into_the_layout_as_html_with_escaping():
    compiled = compile_template(_template(body="Dear {{ customer_name }},\n\nPrices change."))
    rendered = compiled.render({"customer_name": "Tom & <Jerry>", "account_ref": "A1"})
    assert rendered.subject == "Hi Tom & <Jerry>"
    assert rendered.body == "Dear Tom & <Jerry>,\n\nPrices change."
    assert "<p>Dear Tom &amp; &lt;Jerry&gt;,</p>" in rendered.html_body
    assert "<p>Prices change.</p>" in rendered.html_body
    assert "Sent by Herald" in rendered.html_body  # footer component


def test_sms_has_no_html():
    compiled = compile_template(_template(channel="sms", subject=""))
    assert compiled.render({"account_ref": "A1"}).html_body == ""


def test_a_template_cannot_reach_settings():
    with pytest.raises(ValidationError) as caught:
        _template(body="{{ settings.SECRET_KEY }}").clean()
    assert "Unknown variable in body: settings" in caught.value.message_dict["body"][0]
    # Even a variable named "settings" is only the plain value it is given.
    compiled = compile_template(
        _template(subject="", body="[{{ settings.SECRET_KEY }}]", variables=["settings"])
    )
    assert compiled.render({}).body == "[]"


@pytest.mark.parametrize(
    ("source", "opener"),
    [("Hello {{ customer_name", "{{"), ("Dear {% if x %", "{%"), ("Note {# c", "{#")],
)
def test_an_unclosed_tag_is_refused_instead_of_reaching_the_reader(source, opener):
    with pytest.raises(TemplateProblem) as caught:
        check_source("body", source, {"customer_name", "x"})
    assert str(caught.value).startswith(f"Unclosed {opener} in body: ")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            '{{ customer_name|center:"100000000" }}',
            "In body, |center takes a width or precision of at most 1,000.",
        ),
        ("{{ customer_name|ljust:account_ref }}", "In body, |ljust takes a number written in "),
        ('{{ customer_name|rjust:"²" }}', "In body, |rjust takes a whole number, not '²'."),
        ('{{ account_ref|stringformat:"99999s" }}', "In body, |stringformat takes a width"),
        ('{{ account_ref|floatformat:"5000" }}', "In body, |floatformat takes a width"),
        ('{% filter center:"100000000" %}x{% endfilter %}', "In body, |center takes a width"),
        (
            "{% for a in '0123456789' %}{{ a }}{% endfor %}",
            "In body, {% for %} goes over a variable, not over a value written in the template.",
        ),
        (
            "{% for a in customer_name %}{% if a %}{% for b in account_ref %}{{ b }}"
            "{% endfor %}{% endif %}{% endfor %}",
            "In body, loops may not be nested.",
        ),
        ("x" * 20_001, "body is 20,001 characters long: at most 20,000."),
    ],
)
def test_a_body_that_could_render_without_bound_is_refused(body, problem):
    """Rendered once per recipient: a width of 10^8 made 100 MB per message, seven nested
    loops over ten characters took 20 s and 10 MB."""
    with pytest.raises(ValidationError) as caught:
        _template(body=body).clean()
    assert caught.value.message_dict["body"][0].startswith(problem)


@pytest.mark.parametrize(
    "body",
    [
        '{{ customer_name|center:"40" }}|{{ account_ref|stringformat:"08d" }}',
        '{{ account_ref|floatformat:"-2" }}',
        "{% for c in customer_name %}{{ c }}{% endfor %}{% for c in account_ref %}{% endfor %}",
    ],
)
def test_small_widths_and_single_loops_over_variables_are_fine(body):
    _template(body=body).clean()


def test_a_rendered_subject_longer_than_its_column_is_cut_with_an_ellipsis():
    """A 190-character subject of ten company names of 200 characters rendered 2,000
    characters: PostgreSQL refused the review and the delivery (varchar(300))."""
    compiled = compile_message("{{ customer_name }} " * 10, "Hello")
    subject, _ = compiled.render_text({"customer_name": "L" * 200})
    assert len(subject) == 300 and subject.endswith("L…")
    short, _ = compiled.render_text({"customer_name": "Ada"})
    assert short == " ".join(["Ada"] * 10)
