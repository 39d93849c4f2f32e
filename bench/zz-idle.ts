import { pino } from "pino";
import { defineTask, Schema, Troupe } from "../src/index.js";
import { NatsServer } from "../src/dev/nats-server.js";
const starts = new Map<number, number>();
const timed = defineTask({ name: "bench.idle", input: Schema.Struct({ i: Schema.Number }), output: Schema.Number, handler: async ({ i }) => { starts.set(i, performance.now()); return i; } });
const server = await NatsServer.start();
const troupe = await Troupe.connect({ servers: server.url, logger: pino({ level: "debug" }, pino.destination("/tmp/idle.log")) });
await troupe.worker({ tasks: [timed], concurrency: 8 });
for (let i = 0; i < 4; i++) {
  await new Promise((r) => setTimeout(r, Number(process.env.IDLE ?? 10000)));
  const t0 = performance.now();
  const run = await troupe.submit(timed, { i });
  const t1 = performance.now();
  await run.result();
  console.log(i, "submit", (t1 - t0).toFixed(1), "start", (starts.get(i)! - t0).toFixed(1));
}
await troupe.close(); await server.stop();
