from django.core.management import call_command


def test_every_model_change_has_its_migration(db):
    call_command("makemigrations", check=True, dry_run=True, verbosity=0)


def test_it_moves_existing_notifications_to_receivers_named_after_their_channel(
    transactional_db,
):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.utils import timezone

    executor = MigrationExecutor(connection)
    before = [("alerting", "0005_alert_lifecycle")]
    after = [("alerting", "0008_notification_receiver_required")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    rule = old.get_model("alerting", "AlertRule").objects.create(
        name="r", kind="heartbeat", severity="critical", summary="s"
    )
    alert = old.get_model("alerting", "Alert").objects.create(
        rule=rule, fingerprint="f", labels={}, severity="critical", summary="s", status="resolved"
    )
    Notification = old.get_model("alerting", "Notification")
    now = timezone.now()
    Notification.objects.create(alert=alert, kind="firing", channel="console", status="sent")
    Notification.objects.create(
        alert=alert, kind="firing", channel="email", status="failed", next_attempt_at=now
    )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    rows = new.get_model("alerting", "Notification").objects.order_by("channel")
    assert [(n.channel, n.receiver.name, n.receiver.kind, n.status) for n in rows] == [
        ("console", "console", "console", "sent"),
        ("email", "email", "email", "dead"),
    ]
    assert rows[1].dead_at == now
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
