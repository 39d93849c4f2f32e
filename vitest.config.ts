import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Each file spawns its own nats-server; two cores run two files at a time.
    maxWorkers: 2,
    env: { TROUPE_LOG_LEVEL: process.env.TROUPE_LOG_LEVEL ?? "error" },
  },
});
