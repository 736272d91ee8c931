"""The kernel: small pieces every layer shares (a code location, windows of samples, lean histograms).

Signals, rules (``diagnosis``) and publishers may import the kernel; the kernel imports none of them
(an import-linter contract in pyproject.toml keeps it so).
"""
