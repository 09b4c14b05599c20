"""Which VERP return path a delivery is sent with, and which addresses the MX takes as ours.

`VerpReturnPaths` is what the delivery worker asks for each delivery's envelope sender: a message
from a configured sending domain gets `<prefix>+<token>@<bounce domain>` (the domain's
`bounce_domain`, else the domain itself); any other message keeps its own envelope sender.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.bounces.settings import BounceSettings
from postroom.bounces.verp import ReturnPath, TokenProblem, decode_verp, encode_verp, verp_address, verp_token
from postroom.config import DomainSettings
from postroom.core.addresses import domain_of, mailboxes
from postroom.core.clock import Clock
from postroom.core.errors import InvalidMessageError
from postroom.queue.models import QueuedMessage


class VerpReturnPaths:
    def __init__(self, domains: Sequence[DomainSettings], settings: BounceSettings, clock: Clock):
        self._bounce_domains = {d.name: d.return_path_domain for d in domains}
        self._settings = settings
        self._clock = clock

    @property
    def domains(self) -> frozenset[str]:
        """The domains return paths are issued in (what the MX accepts VERP mail for)."""
        return frozenset(self._bounce_domains.values())

    @property
    def enabled(self) -> bool:
        return bool(self._settings.verp_keys and self._bounce_domains)

    def bounce_domain(self, message: QueuedMessage) -> str | None:
        """The bounce domain of the message's envelope sender, else of its From domain."""
        candidates = [domain_of(message.mail_from)]
        if message.header_from:
            try:
                candidates += [domain_of(a) for a in mailboxes(message.header_from)]
            except InvalidMessageError:  # the policy let it through; never fail a send over it
                pass
        return next((self._bounce_domains[c] for c in candidates if c in self._bounce_domains), None)

    def __call__(self, message: QueuedMessage, delivery_id: int) -> str | None:
        """The worker's `ReturnPathFor`."""
        if not self._settings.verp_keys:
            return None
        domain = self.bounce_domain(message)
        if domain is None:
            return None
        token = encode_verp(delivery_id, self._clock.now(), self._settings.verp_keys)
        return verp_address(self._settings.verp_prefix, token, domain)

    def verify(self, address: str) -> ReturnPath | TokenProblem | None:
        """For an RCPT at the MX: the delivery, why the token is refused, or None when the address
        is not shaped like a return path of ours at all."""
        token = verp_token(address, self._settings.verp_prefix, self.domains)
        if token is None:
            return None
        return decode_verp(token, self._clock.now(), self._settings.verp_keys, self._settings.verp_max_age)
