"""Staff endpoints outside the admin's own URLs (thin doors onto notifications.batch)."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from notifications.batch import run_resume
from notifications.models import WorkflowRun


@require_POST
@staff_member_required
def batch_resume(request):
    """POST /admin/batch/resume?run_id=<id>: continue an aborted batch (seed 001)."""
    run_id = request.GET.get("run_id") or request.POST.get("run_id")
    if not (run_id or "").isdigit():
        return JsonResponse({"error": "run_id must be a run number"}, status=400)
    run = WorkflowRun.objects.filter(id=int(run_id)).first()
    if run is None:
        return JsonResponse({"error": f"no run {run_id}"}, status=404)
    try:
        resumed = run_resume(run=run, user=request.user, now=timezone.now())
    except PermissionDenied as denied:
        return JsonResponse({"error": str(denied)}, status=403)
    result = {
        "run_id": run.id,
        "resumed": resumed,
        "status": WorkflowRun.objects.get(id=run.id).status,
    }
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse(result, status=200 if resumed else 409)
    if resumed:
        messages.success(request, f"Run {run.id} resumed: its unsent deliveries go out now.")
    else:
        messages.warning(request, f"Run {run.id} is {result['status']}: nothing to resume.")
    return HttpResponseRedirect(reverse("admin:notifications_workflowrun_change", args=[run.id]))
