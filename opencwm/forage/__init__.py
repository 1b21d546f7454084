"""The ForagerAgent: executable repository environments, validated mutate-fix and issue-fix tasks, an agent loop
with CWM's tools in the sandbox, and trajectories in CWM's chat format (SPEC §3-4)."""
