import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { defineTask, NatsServerNotFound, Schema, Troupe } from "../../src/index.js";

const echo = defineTask({
  name: "echo",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  handler: async ({ text }) => text,
});

describe("Troupe.dev (embedded default)", () => {
  it("starts its own nats-server with JetStream, stores under the given dir, and stops it on close", async () => {
    const dir = await mkdtemp(join(tmpdir(), "troupe-dev-"));
    try {
      const troupe = await Troupe.dev({ storeDir: join(dir, "nats") });
      const url = troupe.url;
      await troupe.worker({ tasks: [echo] });
      const run = await troupe.submit(echo, { text: "hi" });
      expect(await run.result()).toBe("hi");
      await troupe.close();
      expect((await readdir(join(dir, "nats"))).length).toBeGreaterThan(0);
      const after = await Troupe.connect({ servers: url }).catch((e: unknown) => e);
      expect((after as { _tag?: string })._tag).toBe("NatsFailure");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("says how to install nats-server when the binary is missing", async () => {
    const error = await Troupe.dev({ binary: "/nonexistent/nats-server" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NatsServerNotFound);
    expect((error as Error).message).toContain("apt-get install nats-server");
  });
});
