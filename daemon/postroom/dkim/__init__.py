"""DKIM: key files (load, generate, write, DNS record text) and signing outbound messages.

`keys` owns the private keys and what is published for them in DNS; `records` reads published
key records (tag=value lists through dkimpy's parser) and compares them with ours, for both the
key monitor and `domains check`; `signing` owns the DKIM-Signature header. Both are pure functions of plain values (no settings object, no socket, no
clock: the caller passes `now`); `signing.Signer` is the only object, an immutable map from sending
domain to loaded keys that worker threads share.
"""
