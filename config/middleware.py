"""Admin input Django's change lists take as given: refused at the door with a clear 400,
before it reaches a query that fails on it (a 500)."""

from django.http import HttpResponseBadRequest

# SQLite refuses a LIKE pattern over 50,000 bytes ("LIKE or GLOB pattern too complex"):
# a search that long is a paste gone wrong, not a search.
MAX_SEARCH_CHARS = 1_000


class AdminInputGuard:
    """On /admin/ pages: a search (`q`) of at most MAX_SEARCH_CHARS characters, and selected
    rows (`_selected_action`) named by number, as every Herald table's rows are (a forged
    "abc" made the action's filter raise)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/admin/") and (problem := _problem(request)):
            return HttpResponseBadRequest(problem, content_type="text/plain")
        return self.get_response(request)


def _problem(request) -> str:
    search = request.GET.get("q", "")
    if len(search) > MAX_SEARCH_CHARS:
        return (
            f"The search is {len(search):,} characters long: at most {MAX_SEARCH_CHARS:,}. "
            "Go back and search for less."
        )
    if request.method == "POST":
        selected = request.POST.getlist("_selected_action")
        if any(not (value.isascii() and value.isdigit()) for value in selected):
            return "The selected rows must be named by their numbers."
    return ""
