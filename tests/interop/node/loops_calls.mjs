// Runs calls of the official Loops SDK (npm `loops`) against a server and prints what each returned.
// Usage: node loops_calls.mjs CALLS.json
// CALLS.json: {"apiRoot": "http://127.0.0.1:PORT/api/", "keys": {"name": "token"},
//              "calls": [{"key": "name", "method": "createContact", "args": [...]}, ...]}
// Output (stdout, JSON): one entry per call, in order:
//   {"ok": true, "value": <what the method resolved to>} or
//   {"ok": false, "error": "<class name>", "statusCode", "json", "limit", "remaining", "message"}
import { readFileSync } from "node:fs";
import { LoopsClient, APIError, RateLimitExceededError } from "loops";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const clients = {};
for (const [name, token] of Object.entries(plan.keys)) {
  const client = new LoopsClient(token);
  client.apiRoot = plan.apiRoot;
  clients[name] = client;
}

const results = [];
for (const call of plan.calls) {
  const client = clients[call.key ?? "main"];
  try {
    const value = await client[call.method](...(call.args ?? []));
    results.push({ ok: true, value: value ?? null });
  } catch (error) {
    const entry = { ok: false, error: error.name, message: error.message };
    if (error instanceof APIError) {
      entry.statusCode = error.statusCode;
      entry.json = error.json;
    }
    if (error instanceof RateLimitExceededError) {
      entry.limit = error.limit;
      entry.remaining = error.remaining;
    }
    results.push(entry);
  }
}
process.stdout.write(JSON.stringify(results));
