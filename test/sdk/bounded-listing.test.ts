/**
 * A registry listing that never ends (its deliveries lost on the way: the proxy drops them,
 * as a store shared by two servers did) is a `NatsFailure` within its bound, not a hang: for
 * `troupe.workers()`, `troupe workers`, and the "no live worker" check of `troupe submit`.
 */
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { defineTask, NatsFailure, Schema, Troupe } from "../../src/index.js";
import { LISTING_TIMEOUT_MS } from "../../src/nats/bucket.js";
import { killCliChildren, runCli } from "../helpers/cli.js";
import { useNatsServer } from "../helpers/nats.js";
import { startProxy, type Proxy } from "../helpers/proxy.js";

const server = useNatsServer();

const echo = defineTask({
  name: "echo",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  handler: async ({ text }) => text,
});

const listingFailed = new RegExp(`(listing every worker registry entry did not end within ${LISTING_TIMEOUT_MS / 1000} s|cannot list every worker registry entry: )`);
const open: Troupe[] = [];
let proxy: Proxy | undefined;
afterEach(() => killCliChildren());
afterAll(async () => {
  for (const t of open.splice(0)) await t.close();
  await proxy?.cut();
});

describe("registry listings are bounded", () => {
  it("a worker listing whose deliveries never arrive rejects with NatsFailure, in the SDK and the CLI", async () => {
    const owner = await Troupe.connect({ servers: server().url });
    open.push(owner);
    await owner.worker({ tasks: [echo] });
    proxy = await startProxy({ host: "127.0.0.1", port: server().port });
    const client = await Troupe.connect({ servers: proxy.url });
    open.push(client);
    expect((await client.workers()).map((w) => w.tasks[0]?.name)).toEqual(["echo"]);

    // The registry is read without a consumer (its stream's info, each entry by a get): every
    // answer that gives its keys or an entry is lost (a direct get's headers, a message get's
    // JSON, the stream info's per-subject counts); the layout's own reads pass.
    const key = /Nats-Subject: \$KV\.troupe-workers\.|"subject":"\$KV\.troupe-workers\.|"subjects":\{"\$KV\.troupe-workers\./;
    proxy.dropping((subject, payload) => key.test(subject) || key.test(payload.toString("latin1")));
    const started = Date.now();
    const [listed, workersCli, submitCli] = await Promise.all([
      client.workers().catch((e: unknown) => e),
      runCli(["workers"], { NATS_URL: proxy.url }),
      runCli(["submit", "echo", '{"text":"hi"}'], { NATS_URL: proxy.url }),
    ]);
    expect(listed).toBeInstanceOf(NatsFailure);
    // Each read gives up after the client's request timeout, the whole listing after its bound.
    expect((listed as NatsFailure).message).toMatch(listingFailed);
    expect(Date.now() - started).toBeLessThan(LISTING_TIMEOUT_MS + 30_000);

    expect(workersCli.code).toBe(1);
    expect(workersCli.stderr).toMatch(new RegExp(`^troupe workers: NatsFailure: ${listingFailed.source}[^\n]*\n$`));

    // The task is submitted all the same; the check that could not list says so.
    expect(submitCli.code).toBe(0);
    const id = submitCli.stdout.trim();
    expect(submitCli.stderr).toMatch(new RegExp(`troupe submit: warning: cannot tell whether a live worker serves task "echo": ${listingFailed.source}`));
    proxy.dropping(undefined);
    expect(await owner.run(echo, id).result()).toBe("hi");
  }, 90_000);
});
