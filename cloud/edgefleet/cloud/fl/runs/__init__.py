"""A federated run in the cloud, from request to registered bundle.

The request and record (``run``), the service that drives runs from the API (``service``), runs
on a schedule (``schedule``), their records on disk (``journal``), where a run starts
(``origin``), the hand-off of its result to the registry (``handoff``) and its rounds as store
events (``publish``, read back by ``roundsource``).
"""
