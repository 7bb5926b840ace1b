"""The lean heartbeat path: served in front of Django, written in batches.

A routine heartbeat (known token, healthy agent reporting the state we hold,
no commands queued, nothing to acknowledge) is answered from an in-process
cache and written with the other heartbeats of the last flush interval in one
statement. A heartbeat that changes state waits for the batch to commit before
it is answered. Anything else goes to Django's full path unchanged. See
docs/architecture.md, "The heartbeat path".
"""
