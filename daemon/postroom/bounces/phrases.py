"""The phrase families of failure reasons: how servers say, in words, why a recipient failed.

Each family is a reason name (Sisimai's) and one pattern of the wordings MTAs and providers use for
it. Families are tried in `REASON_PHRASES` order, most specific first: "mailbox full" must win over
a generic "rejected", and "listed at spamhaus" over "user". The patterns are deliberately about
phrase *families* (verbs and nouns that travel together) rather than one server's exact sentence,
so a bounce from a server never seen still lands in the right family.
"""

from __future__ import annotations

import re


def _family(*alternatives: str) -> re.Pattern[str]:
    # Lower-case patterns matched against lower-cased text: three times faster than IGNORECASE.
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


_ACCOUNT = r"(?:account|mailbox|mail ?box|e-?mail address|address|user|recipient|addressee|inbox)"

HAS_MOVED = _family(r"address (?:has )?(?:changed|moved)", r"has moved", r"no longer (?:at|with) this address")

MESSAGE_TOO_BIG = _family(
    r"message (?:size|length) (?:exceeds|too (?:big|large|long)|limit)",
    r"message (?:is |was )?too (?:big|large|long)", r"too (?:big|large) (?:message|for)",
    r"exceeds? (?:the )?(?:maximum|max|fixed|allowed) (?:message )?size",
    r"mail size (?:limit|exceed)", r"size (?:limit )?exceed", r"message file too big",
    r"larger than (?:the )?(?:maximum|allowed|fixed)",
)  # fmt: skip

EXCEED_LIMIT = _family(r"exceeds? (?:the )?(?:recipient's |recipients )?(?:size )?limit", r"limit exceeded")

# Directory-lookup wordings of mail products (Exchange, IMail, Lotus Notes, InterScan): the product
# looked the address up in its own directory, so the wording is an address verdict, not a filter.
USER_UNKNOWN_DIRECTORY = _family(
    r"recipient name is not recognized", r"invalid (?:final delivery )?userid",
    r"not listed in (?:the )?(?:public )?(?:name|address|directory)", r"and other recipients in the same domain",
    r"check (?:if|that|whether) (?:the )?(?:e-?mail )?address is correct",
)  # fmt: skip

MAILBOX_FULL = _family(
    rf"{_ACCOUNT} (?:is |was )?(?:full|over ?quota|overfull)", r"over ?quota", r"quota (?:exceeded|full|violation)",
    r"exceed(?:ed|s)? (?:the |its |their |his |her |your |storage |disk |mailbox )*(?:storage |disk )?quota",
    r"insufficient (?:disk |storage )?space", r"not enough (?:storage|space|disk)", r"full mailbox",
    r"mailbox (?:size )?limit", r"storage (?:allocation|quota|limit)", r"out of storage",
    r"(?:mailbox|inbox) (?:has )?exceeded", r"would exceed (?:the )?(?:mailbox|quota)",
    r"is full", r"too many messages in (?:the |this )?mailbox", r"mailfolder is full", r"user is over",
    r"disk quota", r"\bquota\b", r"mailbox exceeds",
)  # fmt: skip

SUSPEND = _family(
    rf"{_ACCOUNT} (?:has been |is |was )?(?:temporarily |currently )?(?:disabled|suspended|deactivated|inactive|"
    r"locked|frozen|closed|terminated|expired|unavailable due|not active|blocked for)",
    r"(?:disabled|suspended|deactivated|inactive|expired|closed|frozen|locked) (?:e-?mail )?(?:account|mailbox|user)",
    r"no longer (?:active|in use|available|valid)", r"not (?:currently )?active",
    r"temporar(?:y|ily) (?:disabled|inactive|suspended|locked)", r"mailbox (?:is )?inactive", r"disabled recipient",
)  # fmt: skip

USER_UNKNOWN = _family(
    r"user(?:name)? (?:is )?unknown", r"unknown (?:user|recipient|local[ -]?part|mailbox|account|e-?mail address|addressee|alias|address)",
    r"no such (?:user|recipient|mailbox|account|address|local user|person|e-?mail)",
    r"(?:recipient|user|mailbox|address|account|addressee|e-?mail)(?: address)? (?:does not|doesn'?t|did not|dose not|not) exist",
    r"(?:recipient|user|mailbox|addressee|account)(?: address)? (?:not found|not known|unavailable|invalid)",
    r"not (?:a )?(?:valid|known|existing) (?:user|recipient|mailbox|address|account)",
    r"invalid (?:recipient|mailbox|e-?mail address|address|user|account)", r"user not (?:found|known)",
    r"(?:no|not a) (?:valid )?(?:mailbox|recipient|user) (?:here|by that name|at|for)",
    r"is not a valid mailbox", r"no account by that name", r"addressee unknown", r"unknown or illegal alias",
    r"not our customer", r"bad (?:destination )?(?:recipient|mailbox|address)", r"recipient (?:no longer|not) (?:on|valid)",
    r"doesn'?t have an? .{0,40}account", r"does not have an? .{0,40}account",
    r"(?:mailbox|user|address) (?:is )?not (?:available|listed|here|registered)",
    r"(?:not|no) (?:listed|found) in (?:the )?(?:address|recipient|directory)",
    r"undeliverable address", r"unknown address", r"address (?:couldn'?t|could not|cannot|can'?t) be found",
    r"no mailbox", r"user doesn'?t exist", r"mailbox unavailable", r"requested action not taken: mailbox",
    r"non-?existent (?:user|recipient|mailbox|address)", r"recipient unknown", r"destination address unknown",
    r"email account that you tried to reach does not exist", r"does not exist",
    r"not exist",
)  # fmt: skip

HOST_UNKNOWN = _family(
    r"host (?:or domain name )?not found", r"unknown (?:host|domain)", r"domain (?:name )?(?:not found|does not exist|doesn'?t exist|is invalid|unknown)",
    r"no such (?:domain|host)", r"unrouteable (?:mail )?(?:domain|address)", r"domain (?:is )?(?:not reachable|unreachable)", r"name or service not known", r"host unknown",
    r"nxdomain", r"(?<![@\w.-])(?:[a-z0-9-]+\.)+[a-z]{2,}\.? (?:does not|doesn'?t) exist", r"could not be resolved", r"illegal host/domain",
    r"unable to resolve", r"invalid domain", r"domain (?:lookup|resolution) fail", r"hostname (?:lookup )?fail",
    r"domain is not (?:found|known)", r"domain may not exist",
)  # fmt: skip

NOT_ACCEPT = _family(
    r"does not accept (?:e-?)?mail", r"null mx", r"not accept(?:ing)? (?:any )?(?:e-?)?mail", r"accepts no mail",
    r"no smtp service", r"no mx (?:record )?(?:found )?for", r"no mx records?", r"not accepting network messages",
)  # fmt: skip

NO_RELAYING = _family(
    r"relay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed))", r"(?:not permitted|unable|not allowed) to relay",
    r"we do not relay", r"no relay", r"relay(?:ing)? (?:is )?prohibited", r"not a gateway", r"cannot relay",
    r"isn'?t allowed to relay", r"e-?mail address is not verified", r"(?:not|isn'?t) (?:configured|allowed|permitted|authorized) to relay",
)  # fmt: skip

TOO_MANY_CONN = _family(
    r"too many (?:connections|concurrent|simultaneous|sessions|smtp sessions)", r"connection (?:limit|rate limit) (?:exceeded|reached)",
    r"exceeded (?:the )?(?:maximum )?number of (?:concurrent )?connections", r"too many (?:open )?connections",
    r"connection frequency", r"(?<!to )too many recipients(?! (?:this|per|in|each))", r"connection rate limit",
)  # fmt: skip

SPEEDING = _family(
    r"unusual rate", r"rate.?limit", r"too many (?:messages|e-?mails|mails|recipients) (?:in|per|from|for|too quickly|sent|this)",
    r"sent (?:to )?too many",
    r"sending rate", r"throttl", r"slow down", r"too fast", r"message rate",
)  # fmt: skip

REQUIRE_PTR = _family(
    r"reverse (?:dns|lookup|dns entry|hostname)", r"\bptr\b", r"\brdns\b", r"cannot find your (?:reverse )?hostname",
    r"does not have (?:a )?(?:valid )?(?:reverse|ptr)", r"(?:client|ip) (?:host|address) .{0,60}(?:unknown|not resolved|no ptr)",
    r"unresolvable (?:ip|address|hostname)", r"mismatch(?:es)? (?:the )?client ip", r"not resolve (?:your|the) (?:ip|address)", r"hostname (?:of|for) (?:your|the) (?:ip|client)",
)  # fmt: skip

AUTH_FAILURE = _family(
    r"\bspf\b", r"\bdkim\b", r"\bdmarc\b", r"sender policy framework", r"unauthenticated (?:e-?mail|message)",
    r"authentication information", r"fails? to pass authentication",
    r"authentication (?:failed|failure|check)", r"(?:sender|domain) (?:is )?not authenticated", r"\b5\.7\.2[3-7]\b",
)  # fmt: skip

BAD_REPUTATION = _family(r"(?:bad|low|poor) (?:ip |domain |sender )?reputation", r"reputation")

VIRUS = _family(r"virus", r"malware", r"infected", r"trojan", r"\bworm\b", r"dangerous (?:content|attachment)")

SPAM = _family(
    r"spam", r"junk (?:e-?)?mail", r"unsolicited", r"bulk (?:e-?)?mail", r"\buce\b", r"message content rejected",
    r"content (?:was |has been )?(?:rejected|flagged|blocked)", r"classified as (?:spam|junk)", r"phishing",
    r"suspicious", r"message (?:was |has been )?(?:identified|flagged) as",
)  # fmt: skip

BLOCKED = _family(
    r"blacklist", r"black list", r"block ?list", r"listed (?:at|on|in|by)", r"\brbl\b", r"dnsbl", r"spamhaus", r"spamcop",
    r"sorbs", r"barracuda", r"blocked (?:using|by|due|because|for)", r"(?:ip|host|address|network|client|server|sender ip|domain)"
    r"(?: address)? (?:is |has been |was )?(?:blocked|blacklisted|banned|denied|not allowed)",
    r"refused to talk", r"connection (?:refused|rejected|denied)", r"has been blocked", r"not accepting connections",
    r"\bblocked\b", r"service (?:unavailable|not available); client", r"client host .{0,80}rejected",
    r"\bbanned\b", r"your (?:ip|host|server|network|address)",
)  # fmt: skip

FILTERED = _family(
    r"filter(?:ed|ing)?\b", r"rejected by (?:the )?(?:recipient|user)", r"(?:recipient|user) (?:has )?(?:rejected|refused|blocked)",
    r"refused by (?:the )?recipient", r"due to recipient(?:'s)? preferences?", r"denied by (?:the )?recipient", r"not (?:accepting|authorized to receive|allowed to receive)",
    r"(?:mail|messages?) (?:from you )?(?:is |are )?not accepted", r"does not (?:accept|receive) (?:messages|mail) from",
    r"recipient .{0,40}(?:refuses|rejects)", r"not authorized to (?:send|post)", r"permission to post",
)  # fmt: skip

POLICY = _family(r"polic(?:y|ies)", r"prohibited", r"violat", r"not allowed by", r"not permitted by")

# Wordings that name the message's lifetime as the cause, whatever else failed on the way.
EXPIRED_FIRST = _family(r"(?:message|mail) (?:has )?expired", r"delivery time expired")

# A refusal that names spam as its cause, even when the text goes on about authentication.
SPAM_STRONG = _family(r"(?:rejected|blocked|refused) (?:due to|because of|as) (?:spam|being spam)", r"spam classification")

# Refusals of the sending host by address: a block, whatever else the text says.
BLOCKED_HOST = _family(
    r"\b(?:client|source|sending)?\s?(?:ip|host)(?: address)?\b.{0,30}\b(?:blocked|bloquee|blacklisted|banned|denylisted)",
    r"messages from \[?\d{1,3}(?:\.\d{1,3}){3}\]? (?:weren'?t|were not|are not|have not been) (?:sent|accepted)",
    r"invalid ip for sending", r"banned (?:sending )?ip",
)  # fmt: skip

# Content refusals that providers word systematically as a policy matter.
POLICY_STRONG = _family(r"content presents a potential", r"potential security issue", r"header error")

SECURITY = _family(
    r"tls (?:is )?required", r"must issue a starttls", r"encryption (?:is )?required", r"certificate", r"insecure",
    r"authentication (?:is )?required", r"smtp auth", r"must (?:be )?authenticat", r"security (?:policy|reason)",
    r"not (?:authorized|permitted) to send", r"sender (?:is )?not authorized", r"login (?:failed|required)",
    r"unauthenticated senders?",
)  # fmt: skip

FAILED_STARTTLS = _family(
    r"starttls (?:failed|failure|negotiation)", r"tls (?:handshake|negotiation) fail", r"could not start tls",
    r"does not support (?:tls|starttls)",
)  # fmt: skip

REJECTED = _family(
    r"sender .{0,60}(?:rejected|denied|refused|not allowed|blocked|unknown|invalid|not exist|verify fail)",
    r"(?:domain of sender|sender address|sender domain|envelope sender|envelope from|from address|mail from|return path|return-path)"
    r".{0,60}(?:rejected|denied|invalid|not exist|must exist|unverif|bad|not resolv|unknown)",
    r"rejected sender", r"sender verif", r"bad sender", r"sender address rejected", r"mail from .{0,40}rejected",
    r"unknown sender", r"invalid sender", r"sender (?:is )?(?:not|un)known", r"access denied",
    r"purported responsible address",
)  # fmt: skip

SYNTAX = _family(r"syntax error", r"malformed (?:recipient |sender )?address", r"command unrecognized", r"unrecognized command", r"bad sequence", r"command not (?:implemented|recognized)")

SYSTEM_FULL = _family(r"(?:disk|file ?system|spool|queue) (?:is )?full", r"insufficient system storage", r"out of disk", r"no space left")

NOT_COMPLIANT = _family(
    r"\brfc ?(?:5322|2822|5321|2821)\b", r"not (?:rfc|standard)[- ]compliant", r"duplicate header",
    r"multiple addresses in (?:the )?(?:from|sender|to)",
    r"multiple (?:from|sender|date|subject|to)", r"header (?:is )?missing", r"missing (?:a )?(?:required )?(?:header|message-id|date|from)",
    r"improper(?:ly)? (?:formatted|header)", r"does not conform",
)  # fmt: skip

CONTENT = _family(r"content (?:error|not acceptable|type)", r"invalid (?:header|mime|content|character)", r"8-?bit", r"\bmime\b", r"attachment")

MAILER = _family(
    r"mailer error", r"program (?:failed|error)", r"procmail", r"command (?:died|failed|output)", r"exit(?:ed)? (?:with|code|status)",
    r"x-unix", r"pipe to", r"unknown mailer", r"local delivery failed", r"deliver to (?:the )?program", r"child process",
)  # fmt: skip

# Wordings that say the message waited in a queue until its lifetime ran out, whatever the last
# attempt's error was.
EXPIRED_STRONG = _family(
    r"(?:message|mail) (?:has )?expired", r"(?:in|on) the queue too long", r"too long in (?:the )?queue",
    r"still undelivered after", r"will be retried for \d+ more", r"did not accept our requests to connect", r"(?:all )?hosts? (?:have|has) been failing for a long time",
    r"retry time (?:not reached|exceeded) for (?:any|all) host", r"delivery time expired",
)  # fmt: skip

EXPIRED = _family(
    r"(?:retry|queue|delivery|lifetime) (?:time|timeout|period|interval)? ?(?:exceeded|expired|reached)",
    r"could not be delivered (?:for|within|after)",
    r"\bexpired\b", r"too long in (?:the )?queue", r"not (?:been )?delivered (?:for|within|after) \d+",
    r"timeout exceeded", r"retry (?:timeout|limit)", r"max(?:imum)? (?:retries|retry count|delivery attempts)",
    r"unable to deliver .{0,40}(?:for|within|after) \d+ (?:days|hours)", r"delivery (?:has )?failed after", r"queue ?time",
)  # fmt: skip

NETWORK = _family(
    r"connection (?:timed out|refused|reset|closed|lost|dropped|failed)", r"network (?:error|unreachable|is unreachable)",
    r"no route to host", r"timed? ?out", r"could not connect", r"unable to connect", r"connect(?:ion)? to .{0,80}(?:failed|lost)",
    r"lost connection", r"host (?:is )?(?:down|unreachable)", r"dns (?:error|failure|timeout|problem)",
    r"temporary (?:dns|name) (?:failure|resolution|error)", r"read error", r"broken pipe", r"conversation with .{0,80}(?:timed|failed)",
    r"malformed or unexpected name server reply", r"name server (?:timeout|error)", r"servfail",
    r"too many hops", r"hop count exceeded", r"mail loop", r"routing loop", r"loops? (?:back|detected)",
    r"host name lookup failure", r"establish an? (?:smtp )?connection",
)  # fmt: skip

SYSTEM = _family(
    r"system (?:error|failure|not available|problem)", r"internal (?:server )?error", r"server error", r"local error",
    r"temporary (?:local )?(?:problem|failure|error)", r"mail (?:system|server) (?:error|problem)",
    r"configuration error", r"insufficient (?:system )?resources",
    r"try again later", r"service (?:is )?(?:currently |temporarily )?unavailable", r"i/o error", r"database error",
    r"transaction failed", r"operating system error", r"queue file write error", r"duplicated? message-id",
)  # fmt: skip

SUPPRESSED = _family(r"suppression list", r"suppressed")

ON_HOLD = _family(r"\bon hold\b")

# Order: what identifies a reason unambiguously first; generic "rejected" / "blocked" words last.
REASON_PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("suppressed", SUPPRESSED),
    ("expired", EXPIRED_FIRST),
    ("spamdetected", SPAM_STRONG),
    ("hasmoved", HAS_MOVED),
    ("virusdetected", VIRUS),
    ("policyviolation", POLICY_STRONG),
    ("notcompliantrfc", NOT_COMPLIANT),
    ("authfailure", AUTH_FAILURE),
    ("requireptr", REQUIRE_PTR),
    ("notaccept", NOT_ACCEPT),
    ("norelaying", NO_RELAYING),
    ("toomanyconn", TOO_MANY_CONN),
    ("speeding", SPEEDING),
    ("blocked", BLOCKED_HOST),
    ("mailboxfull", MAILBOX_FULL),
    ("mesgtoobig", MESSAGE_TOO_BIG),
    ("exceedlimit", EXCEED_LIMIT),
    ("suspend", SUSPEND),
    ("rejected", REJECTED),
    ("hostunknown", HOST_UNKNOWN),
    ("userunknown", USER_UNKNOWN_DIRECTORY),
    ("userunknown", USER_UNKNOWN),
    ("syntaxerror", SYNTAX),
    ("badreputation", BAD_REPUTATION),
    ("spamdetected", SPAM),
    ("failedstarttls", FAILED_STARTTLS),
    ("securityerror", SECURITY),
    ("blocked", BLOCKED),
    ("policyviolation", POLICY),
    ("filtered", FILTERED),
    ("systemfull", SYSTEM_FULL),
    ("mailererror", MAILER),
    ("expired", EXPIRED),
    ("networkerror", NETWORK),
    ("expired", EXPIRED_STRONG),
    ("systemerror", SYSTEM),
    ("contenterror", CONTENT),
    ("onhold", ON_HOLD),
)


# The code prefix of each line of a multi-line reply ("550-5.7.1 "), which splits phrases in two.
_REPLY_PREFIX = re.compile(r"(?<![\w.])[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s+)?")


def reason_from_text(text: str) -> str | None:
    """The first family whose wording appears in `text`, or None."""
    match = matching_family(text)
    return match[0] if match else None


def matching_family(text: str) -> tuple[str, re.Pattern[str]] | None:
    """The first (reason, family) whose wording appears in `text`, or None."""
    if not text.strip():
        return None
    text = " ".join(_REPLY_PREFIX.sub(" ", text).split()).lower()
    for reason, pattern in REASON_PHRASES:
        if pattern.search(text):
            return reason, pattern
    return None
