"""`make bench`: Herald's workloads against their baselines, side by side in one process."""
