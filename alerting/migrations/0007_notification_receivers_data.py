# Existing notifications move to a receiver named after their channel (the
# built-ins, console and email), and failed ones become dead letters. A migration
# of its own: on PostgreSQL, rows updated in a transaction block the schema
# changes (deferred foreign key and index creation) of the same transaction.

from django.db import migrations, models


def attach_receivers(apps, schema_editor):
    Notification = apps.get_model("alerting", "Notification")
    Receiver = apps.get_model("alerting", "Receiver")
    for channel in Notification.objects.values_list("channel", flat=True).distinct():
        receiver, _ = Receiver.objects.get_or_create(
            name=channel, defaults={"kind": channel, "config": {}, "default": True}
        )
        Notification.objects.filter(channel=channel).update(receiver=receiver)
    Notification.objects.filter(status="failed").update(
        status="dead", dead_at=models.F("next_attempt_at")
    )


def detach_receivers(apps, schema_editor):
    Notification = apps.get_model("alerting", "Notification")
    Notification.objects.filter(status="dead").update(status="failed")


class Migration(migrations.Migration):
    dependencies = [
        ("alerting", "0006_receivers"),
    ]

    operations = [
        migrations.RunPython(attach_receivers, detach_receivers),
    ]
