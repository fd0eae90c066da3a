"""Admin list filters shared by several change lists."""

from __future__ import annotations

from django.contrib import admin

from .models import WorkflowRun


class WorkflowRunFilter(admin.RelatedOnlyFieldListFilter):
    """The workflow runs that have rows in this list, read with their workflows in one
    query: a run is named after its workflow, and the stock filter read each run's
    workflow on its own (a query per run on every page of the list)."""

    def field_choices(self, field, request, model_admin):
        ids = (
            model_admin.get_queryset(request)
            .distinct()
            .values_list(f"{self.field_path}__pk", flat=True)
        )
        ordering = self.field_admin_ordering(field, request, model_admin) or ("-pk",)
        runs = WorkflowRun.objects.filter(pk__in=ids).select_related("workflow")
        return [(run.pk, str(run)) for run in runs.order_by(*ordering)]
