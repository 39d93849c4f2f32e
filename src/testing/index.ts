/**
 * `troupe/testing`: what users need to test their own tasks.
 * - `NatsServer.start()`: a throwaway `nats-server -js` on a free port and a temp store.
 * - `NatsCluster.start()`: a 3-node JetStream cluster on loopback whose nodes a test kills, pauses, restarts or wipes.
 * - `makeFiberClock` under Effect's `TestClock.layer()`: actors whose timers you advance.
 * - `runTask(task, input)`: one handler run alone, with the task's schemas and typed errors.
 */
export { NatsServer, type NatsServerOptions } from "../dev/nats-server.js";
export { NatsCluster, type NatsClusterOptions } from "./cluster.js";
export { makeFiberClock, fiberClockFrom, type FiberClock } from "../actor/fiber-clock.js";
export { TestClock } from "effect/testing";
export { runTask, type RunTaskOptions } from "./run-task.js";
