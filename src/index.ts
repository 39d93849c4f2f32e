/** Troupe's public SDK. */
export { Schema } from "effect";
export { Troupe, type TroupeOptions, type DevOptions, type SubmitOptions, type CancelResult } from "./sdk/troupe.js";
export { TaskRun } from "./sdk/run.js";
export {
  defineTask,
  type TaskDefinition,
  type TaskOptions,
  type TaskRunContext,
  type InputOf,
  type OutputOf,
  type DurationInput,
} from "./task.js";
export { Worker, type WorkerOptions, type StopOptions, type WorkerStats } from "./worker/worker.js";
export type { ConnectOptions, TlsConnectOptions } from "./nats/connection.js";
export * from "./errors.js";
export type { TaskRecord, TaskStatus, TaskErrorInfo, RetryPolicy } from "../machines/task.js";
export { taskMachine } from "../machines/task.js";
export { workerMachine } from "../machines/worker.js";
export * as Topology from "./nats/topology.js";
export { defineWorkflow, workflowFromDocument, type WorkflowDefinition, type WorkflowStep, type WorkflowOptions } from "./workflow.js";
export { WorkflowRun } from "./sdk/workflow-run.js";
export { Coordinator, type CoordinatorOptions } from "./coordinator/coordinator.js";
export type { WorkflowRecord, WorkflowStatus, StepStatus, StepState, FailurePolicy } from "../machines/workflow.js";
export { workflowMachine } from "../machines/workflow.js";
export { startInspector, type Inspector } from "./inspect/server.js";
