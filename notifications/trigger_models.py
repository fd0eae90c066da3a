"""Models of trigger-type workflows (seed 003). Imported at the bottom of notifications.models."""
