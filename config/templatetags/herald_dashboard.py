from django import template

from config.dashboard import dashboard

register = template.Library()


@register.inclusion_tag("admin/herald/dashboard.html")
def herald_dashboard():
    return dashboard()
