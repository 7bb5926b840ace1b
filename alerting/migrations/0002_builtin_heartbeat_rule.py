from django.db import migrations


def create_rule(apps, schema_editor):
    AlertRule = apps.get_model("alerting", "AlertRule")
    AlertRule.objects.get_or_create(
        name="agent-heartbeat",
        defaults={
            "kind": "heartbeat",
            "severity": "critical",
            "summary": "Agent {agent_id} ({role}) stopped sending heartbeats",
            "annotations": {"runbook": "docs/architecture.md#the-loop"},
        },
    )


class Migration(migrations.Migration):
    dependencies = [("alerting", "0001_initial")]
    operations = [migrations.RunPython(create_rule, migrations.RunPython.noop)]
