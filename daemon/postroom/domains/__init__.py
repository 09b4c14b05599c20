"""Domains: checking that a sending domain's DNS says what postroom needs it to say.

`lookup` is the contract (`DnsLookup`, `DnsLookupError`): three async questions to DNS and the
one error they raise. `spf` evaluates an SPF policy for an address (RFC 7208 `check_host()`),
`checks` compares a domain's published DKIM, SPF, DMARC and MX records with a `DomainExpectation`
and produces a `DomainReport`, and lists the records a domain needs (`suggested_records`). Those
three are pure: every DNS answer arrives through an injected `DnsLookup`. `resolver` is the one
adapter that talks to a real DNS server (dnspython).
"""
