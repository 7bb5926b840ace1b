# Its own migration: on PostgreSQL a table whose rows were just updated in the
# same transaction cannot be altered (pending foreign key trigger events).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("alerting", "0007_notification_receivers_data"),
    ]

    operations = [
        migrations.AlterField(
            model_name="notification",
            name="receiver",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="notifications",
                to="alerting.receiver",
            ),
        ),
        migrations.AddIndex(
            model_name="notification",
            index=models.Index(
                condition=models.Q(("status", "pending")),
                fields=["receiver", "next_attempt_at"],
                name="notification_receiver_due_idx",
            ),
        ),
        migrations.AddConstraint(
            model_name="notification",
            constraint=models.UniqueConstraint(
                condition=models.Q(("resent_from__isnull", True)),
                fields=("alert", "kind", "receiver"),
                name="notification_once_per_receiver",
            ),
        ),
    ]
