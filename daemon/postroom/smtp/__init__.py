"""SMTP ingress on aiosmtpd: submission (587 STARTTLS, 465 implicit TLS) and the inbound MX.

The protocol engine never decides what happens to a message: it calls a handler, and the handler
calls the queue. Listeners run on the daemon's own loop via `loop.create_server`.
"""
