from rest_framework import mixins, viewsets

from omoi_console.foundation.api.permissions import ModelPermissions
from watchdog.api.serializers import RemediationActionSerializer, RemediationPolicySerializer
from watchdog.models import RemediationAction, RemediationPolicy


class RemediationActionViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit of remediations: read-only."""

    queryset = RemediationAction.objects.select_related("policy")
    serializer_class = RemediationActionSerializer
    permission_classes = [ModelPermissions]
    filterset_fields = ["agent", "status", "policy"]


class RemediationPolicyViewSet(
    mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet
):
    """Policies: read by those who may view them, written by those who may change them.

    Not deleted through the API: a policy is referenced by its actions; disable it.
    """

    queryset = RemediationPolicy.objects.all()
    serializer_class = RemediationPolicySerializer
    permission_classes = [ModelPermissions]
