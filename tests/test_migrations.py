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


def test_it_moves_policies_to_step_lists_and_actions_to_the_new_states(transactional_db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.utils import timezone

    from watchdog.models import RemediationAction, RemediationPolicy

    # Going back re-adds the old single step column, which rows of today lack.
    RemediationAction.objects.all().delete()
    RemediationPolicy.objects.all().delete()
    before = [("watchdog", "0003_action_finished_index"), ("monitoring", "0008_detection")]
    after = [("watchdog", "0004_policy_steps_and_action_states")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    Policy = old.get_model("watchdog", "RemediationPolicy")
    default = Policy.objects.create(
        name="restart-failed-worker",
        trigger="agent_failed",
        step="restart_worker",
        verify_seconds=45,
        cooldown_seconds=300,
    )
    edited = Policy.objects.create(
        name="mine", trigger="agent_failed", step="restart_worker", cooldown_seconds=120
    )
    agent = old.get_model("monitoring", "Agent").objects.create(id="w-1", role="worker")
    Action = old.get_model("watchdog", "RemediationAction")
    verify_by = timezone.now()
    common = {"policy": default, "agent": agent, "step": "restart_worker", "reason": "r"}
    Action.objects.create(status="started", idempotency_key="a", verify_by=verify_by, **common)
    Action.objects.create(status="dry_run", idempotency_key="b", **common)
    Action.objects.create(status="failed", idempotency_key="c", **common)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    policies = new.get_model("watchdog", "RemediationPolicy").objects
    moved = policies.get(pk=default.pk)
    assert moved.steps == [{"kind": "restart_worker", "after": 0, "verify": 45}]
    assert moved.cooldown_seconds == 60
    assert policies.get(pk=edited.pk).cooldown_seconds == 120  # an operator's choice stays
    actions = new.get_model("watchdog", "RemediationAction").objects
    states = {a.idempotency_key: (a.status, a.skip_reason) for a in actions.all()}
    assert states == {
        "a": ("verifying", ""),
        "b": ("skipped", "dry_run"),
        "c": ("escalated", ""),
    }
    assert actions.get(idempotency_key="a").next_step_at == verify_by
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
