from rest_framework import viewsets

from omoi_console.foundation.api.permissions import ModelPermissions
from watchdog.api.serializers import RemediationActionSerializer, RemediationPolicySerializer
from watchdog.models import RemediationAction, RemediationPolicy


class RemediationActionViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = RemediationAction.objects.select_related("policy")
    serializer_class = RemediationActionSerializer
    permission_classes = [ModelPermissions]


class RemediationPolicyViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = RemediationPolicy.objects.all()
    serializer_class = RemediationPolicySerializer
    permission_classes = [ModelPermissions]
