from django.urls import path

from observability.api import views

urlpatterns = [
    path("logs", views.LogRecordListView.as_view(), name="log-list"),
    path("traces/<str:trace_id>", views.TraceView.as_view(), name="trace-detail"),
]
