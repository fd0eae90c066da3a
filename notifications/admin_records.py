"""Records the admin shows but never deletes: the ledger (events and their handlings, with
their idempotency keys), the history of deliveries and tracking reports, the audit trail,
and workflow runs with what they decided (deleting a run would take its approvals, its
reflexion and its checks with it; cancel it instead). Deleting one would lose what
happened, and an event's key with it would let the same event be emitted (and sent)
again."""

from django.contrib import admin


class KeptRecordAdmin(admin.ModelAdmin):
    def has_delete_permission(self, request, obj=None):
        return False
