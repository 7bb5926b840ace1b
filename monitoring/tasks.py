from celery import shared_task

from monitoring import detection, health, metric_jobs, services, stuck


@shared_task(ignore_result=True, expires=1)
def check_heartbeats() -> None:
    services.check_heartbeats()


@shared_task(ignore_result=True, expires=15)
def roll_up_metrics() -> None:
    metric_jobs.roll_up()


@shared_task(ignore_result=True, expires=15)
def detect_anomalies() -> None:
    detection.detect()


@shared_task(ignore_result=True, expires=600)
def create_metric_partitions() -> None:
    metric_jobs.create_partitions_ahead()


@shared_task(ignore_result=True, expires=1)
def check_stuck() -> None:
    stuck.check_stuck()


@shared_task(ignore_result=True, expires=15)
def evaluate_agent_health() -> None:
    health.evaluate_health()
