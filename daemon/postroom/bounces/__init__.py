"""Bounces: what comes back after a delivery (RFC 3464 DSNs, RFC 5965 feedback reports, RFC 3834
auto-replies and the non-standard bounces of common MTAs), parsed and classified into Sisimai's
reason names; the VERP return path that ties a bounce to its delivery. `model` holds the plain
values every part shares."""
