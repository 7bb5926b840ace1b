# Receivers as rows; notifications gain a receiver, the dead letter, and links
# to the notification they re-send or fall back from.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("alerting", "0005_alert_lifecycle"),
    ]

    operations = [
        migrations.CreateModel(
            name="Receiver",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.SlugField(max_length=100, unique=True)),
                ("kind", models.CharField(max_length=32)),
                ("config", models.JSONField(blank=True, default=dict)),
                ("enabled", models.BooleanField(default=True)),
                (
                    "default",
                    models.BooleanField(
                        default=False,
                        help_text="Receives every alert (until routes decide per alert).",
                    ),
                ),
                (
                    "send_resolved",
                    models.BooleanField(default=True, help_text="Also announce resolutions."),
                ),
                (
                    "send_resolved_when_silenced",
                    models.BooleanField(
                        default=False,
                        help_text="Announce the resolution of an alert that was silenced while it fired.",
                    ),
                ),
                ("consecutive_failures", models.PositiveIntegerField(default=0, editable=False)),
                ("circuit_open_until", models.DateTimeField(blank=True, editable=False, null=True)),
                (
                    "created_at",
                    models.DateTimeField(default=django.utils.timezone.now, editable=False),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.AlterModelOptions(
            name="notification",
            options={
                "ordering": ["created_at", "id"],
                "permissions": [("resend_notification", "Can re-send dead notifications")],
            },
        ),
        migrations.RemoveConstraint(
            model_name="notification",
            name="notification_once_per_channel",
        ),
        migrations.AddField(
            model_name="notification",
            name="dead_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="notification",
            name="fallback_from",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="fallbacks",
                to="alerting.notification",
            ),
        ),
        migrations.AddField(
            model_name="notification",
            name="resent_from",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="resent_as",
                to="alerting.notification",
            ),
        ),
        migrations.AlterField(
            model_name="notification",
            name="channel",
            field=models.CharField(max_length=32),
        ),
        migrations.AlterField(
            model_name="notification",
            name="status",
            field=models.CharField(
                choices=[("pending", "Pending"), ("sent", "Sent"), ("dead", "Dead letter")],
                default="pending",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="receiver",
            name="fallback",
            field=models.ForeignKey(
                blank=True,
                help_text="Gets the notification when a delivery here fails for good.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="fallback_for",
                to="alerting.receiver",
            ),
        ),
        migrations.AddField(
            model_name="notification",
            name="receiver",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="notifications",
                to="alerting.receiver",
            ),
        ),
    ]
