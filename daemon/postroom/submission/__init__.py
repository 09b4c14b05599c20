"""The one door of every ingress: SMTP, HTTP, the CLI and, next, the Loops-compatible API,
templates and reports all hand a `Submission` and their `Caller` to `SubmissionService.submit`.

The service runs an ordered list of steps (`steps`: the size limit, the sending policy, the
List-Unsubscribe header, routing), each of which may refuse the message or hand on a changed one,
counts every refusal by reason in one metric, and only then queues the message; the queue screens
recipients against the suppression list in the transaction that writes them. Ingresses only
translate the answer: an `Accepted`, or a `Refusal` that is permanent or temporary with a reason
(SMTP 550 / 451, HTTP 4xx, CLI message and exit code).

Building a submission is here too: from API fields (`fields`) and from a message as a client sent
it (`raw`: the trace field and missing Date / Message-ID added on bytes).
"""
