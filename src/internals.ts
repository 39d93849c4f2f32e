/**
 * `troupe/internals`: what tools built on Troupe use (the inspector, the CLI, tests,
 * benchmarks). Not the SDK: these names may change between minor versions.
 */
export * as Topology from "./nats/topology.js";
export { taskMachine, hydrate, stateOf, eventOf, type TaskEvent, type TaskPolicy, type TaskSnapshot } from "../machines/task.js";
export { workflowMachine, advance, stepTaskId, isWorkflowTerminal, type WorkflowEvent, type StepSettlement } from "../machines/workflow.js";
export { workerMachine } from "../machines/worker.js";
export { backoffDelay, retryWait, type RetryPolicy } from "../machines/backoff.js";
export * as Records from "../machines/records.js";
export { connectNats, openNats, ensureTaskConsumer, type NatsHandle } from "./nats/connection.js";
export { setupLayout, type SetupReport } from "./nats/setup.js";
export { decodeJson, decodeWith, encodeJson } from "./nats/codec.js";
export { connectionOf, idempotentId } from "./sdk/troupe.js";
export { TaskStore, nextRecord, type Stored, type NewTask } from "./store/task-store.js";
export { WorkflowStore } from "./store/workflow-store.js";
export { cancelTask } from "./store/cancel.js";
export { errorFrom, failureFrom } from "./failure.js";
export { Fenced } from "./errors.js";
export { Worker } from "./worker/worker.js";
export { Coordinator } from "./coordinator/coordinator.js";
export { TaskHost, type AttemptStore } from "./actor/task-host.js";
export { makeFiberClock, fiberClockFrom, liveFiberClock, type FiberClock } from "./actor/fiber-clock.js";
export { startInspector, type Inspector } from "./inspect/server.js";
export { serveStately, parseStatelyTarget, stateValueOf } from "./inspect/stately.js";
export { workflowFromDocument } from "./workflow.js";
export { untypedTask } from "./task.js";
export { NatsServer, findNatsServer, natsServerVersion, type NatsServerOptions } from "./dev/nats-server.js";
