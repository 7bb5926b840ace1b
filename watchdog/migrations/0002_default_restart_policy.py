from django.db import migrations


def create_policy(apps, schema_editor):
    RemediationPolicy = apps.get_model("watchdog", "RemediationPolicy")
    RemediationPolicy.objects.get_or_create(
        name="restart-failed-worker",
        defaults={
            "trigger": "heartbeat_lost",
            "agent_role": "worker",
            "step": "restart_worker",
            "verify_seconds": 60,
            "cooldown_seconds": 300,
            "max_per_hour": 3,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("watchdog", "0001_initial")]
    operations = [migrations.RunPython(create_policy, migrations.RunPython.noop)]
