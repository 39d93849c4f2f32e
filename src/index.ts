/**
 * Troupe: the nouns a user learns in a minute. Tools (the inspector, the CLI, tests) find
 * machines, topology, stores and hosts in `troupe/internals`.
 */
export { Schema } from "effect";
export { Troupe, type TroupeOptions, type DevOptions, type SubmitOptions, type CancelResult, type WorkerInfo, type WorkerStatus, type PauseTarget, type ScheduleOptions } from "./sdk/troupe.js";
export type { LogLevel } from "./log.js";
export { TaskRun, type WaitOptions, type TaskProgress } from "./sdk/run.js";
export type { LogFilter, LogLine } from "./sdk/logs.js";
export type { RetryFilter, RetryResult } from "./sdk/troupe.js";
export type { ListOptions, TaskPage } from "./sdk/list.js";
export type { HistoryEvent } from "./nats/history.js";
export type { SweepResult } from "./store/retention.js";
export type { PayloadRef } from "./store/payloads.js";
export type { TroupeStats, TaskTypeStats, StatsOptions } from "./sdk/stats.js";
export type { MetricsOptions } from "./metrics/server.js";
export { bridgeToStately, type StatelyBridge, type StatelyBridgeOptions, type StatelyInspector, type StatelyTarget } from "./inspect/stately.js";
export { WorkflowRun, type WorkflowCancelResult } from "./sdk/workflow-run.js";
export {
  defineTask,
  type TaskDefinition,
  type TaskOptions,
  type RetryOptions,
  type LimitOptions,
  type TaskRunContext,
  type InputOf,
  type OutputOf,
  type DurationInput,
} from "./task.js";
export {
  defineWorkflow,
  type StepInput,
  type StepReference,
  type WorkflowDefinition,
  type WorkflowOptions,
  type WorkflowStep,
  type WorkflowSteps,
} from "./workflow.js";
export { defineProtocol, type ProtocolDefinition, type ProtocolOptions } from "./rpc/protocol.js";
export type { RpcService, RpcOptions, GatewayOptions } from "./rpc/service.js";
export type { OpenRpcDocument } from "./rpc/discover.js";
export type { Worker, WorkerOptions, StopOptions, WorkerStats } from "./worker/worker.js";
export type { Isolation } from "./pool/pool.js";
export type { Scheduler } from "./schedule/scheduler.js";
export type { Coordinator, CoordinatorOptions } from "./coordinator/coordinator.js";
export type { ConnectOptions, TlsConnectOptions, RetentionOptions } from "./nats/connection.js";
export { loadConfig, CONFIG_FILES, type TroupeConfig, type LoadConfigOptions, type ConfigValue, type ConfigKey, type ConfigOverride } from "./config.js";
export {
  Cancelled,
  Execution,
  Internal,
  InvalidDefinition,
  InvalidInput,
  InvalidOption,
  LayoutOutdated,
  NatsFailure,
  NatsServerNotFound,
  NonRetryableError,
  OutOfMemory,
  ResultTimeout,
  Serialization,
  StoreLocked,
  AuthFilesExist,
  TaskNotFound,
  Timeout,
  TopologyConflict,
  WorkerLost,
  WorkerNotFound,
  WorkflowFailed,
  WorkflowNotFound,
  type TaskError,
} from "./errors.js";
export type {
  PauseEntry,
  ScheduleEntry,
  FailurePolicy,
  FailureTag,
  StepState,
  StepStatus,
  TaskFailure,
  TaskRecord,
  TaskStatus,
  WorkflowRecord,
  WorkflowStatus,
} from "../machines/records.js";
