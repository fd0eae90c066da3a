import factory
from django.utils import timezone

from notifications.models import Delivery, MessageTemplate, Notification, Workflow, WorkflowRun


class WorkflowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workflow
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"workflow {n}")
    type = Workflow.Type.BATCH_NOTIFY


class WorkflowRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkflowRun

    workflow = factory.SubFactory(WorkflowFactory)


class MessageTemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MessageTemplate

    name = factory.Sequence(lambda n: f"template {n}")
    channel = "email"
    subject = "Hello {{ customer_name }}"
    body = "Dear {{ customer_name }},\nyour account {{ account_ref }} is ready."
    variables = ["customer_name", "account_ref"]


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    template = factory.SubFactory(MessageTemplateFactory)
    origin = "test"


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    notification = factory.SubFactory(NotificationFactory)
    recipient_key = factory.Sequence(lambda n: f"customer:{n}")
    channel = "email"
    address = factory.Sequence(lambda n: f"customer{n}@example.com")
    subject = "Hello"
    body = "Body"
    idempotency_key = factory.Sequence(lambda n: f"test:{n}")
    send_at = factory.LazyFunction(timezone.now)


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "notifications.Customer"

    company_name = factory.Sequence(lambda n: f"School {n:03d}")
    email = factory.Sequence(lambda n: f"office{n:03d}@school.example.org")
    account_ref = factory.Sequence(lambda n: f"NYC-{n:04d}")
    bid = "B5875"
    region = "NYC DOE"
    school_year = "2026-27"
