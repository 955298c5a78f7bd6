"""Batch jobs run from the CLI: imports (settlement and scoring come later)."""
