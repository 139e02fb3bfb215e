"""taskbed_harness: the deterministic test harness, pytest plugin and conformance runner.

The harness grows in the next milestones (see the README). Today it ships the ``taskbed`` CLI.
"""

__all__ = ()
