"""Use cases: authorise, reverse, refund, rebuild and reconcile counters."""
