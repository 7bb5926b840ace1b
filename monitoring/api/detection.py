"""Which detector watches which metric: read for every metric, set or reset per metric.

``GET /detection`` lists every metric of the catalogue with the detection in
force (``source``: ``catalog`` for the declared default, ``setting`` for an
operator's choice, ``off`` when nothing watches it). ``PUT /detection/{metric}``
stores a setting (fields left out keep the catalogue's default) and
``DELETE`` removes it, so the catalogue's default applies again.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import catalog, detection
from monitoring.catalog import DetectOn
from monitoring.detectors import DEFAULT_DETECTOR, DETECTORS
from monitoring.models import DetectorSetting, Severity
from omoi_console.foundation.api.permissions import require

SOURCES = ("catalog", "setting", "off")
VIEW = "monitoring.view_detectorsetting"
CHANGE = "monitoring.change_detectorsetting"


class DetectionSerializer(serializers.Serializer):
    metric = serializers.CharField()
    watched = serializers.BooleanField()
    source = serializers.ChoiceField(choices=SOURCES)
    detector = serializers.CharField(allow_null=True)
    params = serializers.DictField(allow_null=True)
    on = serializers.CharField(allow_null=True)
    severity = serializers.CharField(allow_null=True)
    default = serializers.DictField(allow_null=True, help_text="The catalogue's own detection.")


class DetectionSettingSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(default=True)
    detector = serializers.ChoiceField(choices=sorted(DETECTORS), required=False)
    params = serializers.DictField(required=False)
    on = serializers.ChoiceField(choices=DetectOn.choices, required=False)
    severity = serializers.ChoiceField(choices=Severity.choices, required=False)


def describe(spec: catalog.MetricSpec, watched: dict[str, detection.Watch], has_setting: bool):
    watch = watched.get(spec.name)
    default = spec.detection.as_dict() if spec.detection else None
    if watch is None:
        return {
            "metric": spec.name,
            "watched": False,
            "source": "off",
            "detector": None,
            "params": None,
            "on": None,
            "severity": None,
            "default": default,
        }
    return {
        **watch.as_dict(),
        "watched": True,
        "source": "setting" if has_setting else "catalog",
        "default": default,
    }


def spec_or_404(metric: str) -> catalog.MetricSpec:
    spec = catalog.get(metric)
    if spec is None:
        raise NotFound(f"No metric {metric!r} in the catalogue.")
    return spec


class DetectionListView(APIView):
    """Every metric of the catalogue and how its series are watched for anomalies."""

    permission_classes = [require(VIEW)]
    pagination_class = None

    @extend_schema(responses=DetectionSerializer(many=True))
    def get(self, request):
        watched = detection.watches()
        settings = set(DetectorSetting.objects.values_list("metric", flat=True))
        return Response(
            [describe(spec, watched, spec.name in settings) for spec in catalog.ordered()]
        )


class DetectionDetailView(APIView):
    """One metric's detection: read it, set it (PUT) or go back to the catalogue's (DELETE).

    Changing the detector, its parameters or ``on`` starts every series of the
    metric afresh (a new warm-up); severity and turning it off and on again do not.
    """

    def get_permissions(self):
        return [require(VIEW if self.request.method in ("GET", "HEAD") else CHANGE)()]

    @extend_schema(responses=DetectionSerializer)
    def get(self, request, metric: str):
        return Response(self._describe(spec_or_404(metric)))

    @extend_schema(request=DetectionSettingSerializer, responses=DetectionSerializer)
    def put(self, request, metric: str):
        spec = spec_or_404(metric)
        given = DetectionSettingSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        default = spec.detection or catalog.Detection(on=DetectOn.MEAN)
        setting = DetectorSetting(
            metric=metric,
            enabled=data["enabled"],
            detector=data.get("detector", default.detector or DEFAULT_DETECTOR),
            params=data.get("params", dict(default.params)),
            on=data.get("on", default.on),
            severity=data.get("severity", default.severity),
        )
        try:
            setting.full_clean(validate_unique=False)
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        with transaction.atomic():
            DetectorSetting.objects.update_or_create(
                metric=metric,
                defaults={
                    field: getattr(setting, field)
                    for field in ("enabled", "detector", "params", "on", "severity")
                },
            )
        return Response(self._describe(spec))

    @extend_schema(responses={204: None})
    def delete(self, request, metric: str):
        spec_or_404(metric)
        DetectorSetting.objects.filter(metric=metric).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _describe(self, spec):
        has_setting = DetectorSetting.objects.filter(metric=spec.name).exists()
        return describe(spec, detection.watches(), has_setting)
