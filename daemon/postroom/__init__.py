"""postroom: a self-hosted email and reporting daemon.

SMTP submission and an HTTP API in, a durable queue, delivery out. The composition root is
`postroom.app`; the command line is `postroom.cli`.
"""

__version__ = "0.1.0"
