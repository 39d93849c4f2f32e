/**
 * Every NATS name Troupe uses, in one place. This is the contract the `nats` CLI sees;
 * the README's "NATS layout" lists the same names.
 */
export const TASKS_STREAM = "TROUPE_TASKS";
export const EVENTS_STREAM = "TROUPE_EVENTS";
export const TASKS_BUCKET = "troupe-tasks";
export const WORKFLOWS_BUCKET = "troupe-workflows";
export const WORKERS_BUCKET = "troupe-workers";
/** Schedules by id (`troupe.schedule`). */
export const SCHEDULES_BUCKET = "troupe-schedules";
/** Leases for single leaders (key `scheduler`), removed 5 s after their holder stops renewing. */
export const LEASES_BUCKET = "troupe-leases";
export const LEASE_TTL_MS = 5_000;
/** Limiters of task types with `concurrency` or `rate` limits: key `<queue>.<type>`. */
export const LIMITS_BUCKET = "troupe-limits";
/** Paused work: key `<queue>` (a whole queue) or `<queue>.<type>` (one task type). */
export const PAUSES_BUCKET = "troupe-pauses";
export const pauseKey = (target: { readonly queue: string; readonly task?: string | undefined }) =>
  target.task === undefined ? target.queue : `${target.queue}.${target.task}`;

/**
 * TROUPE_INDEX: what `troupe.list` and `troupe.stats` read instead of scanning buckets. One
 * small entry (`IndexEntry`: id, revision and time) per task that ended COMPLETED, FAILED or
 * CANCELLED or was scheduled to retry (RETRYING), on `troupe.index.task.<STATUS>.<queue>.<task>`,
 * and per workflow run that
 * finished, on `troupe.index.workflow.<STATUS>.<workflow>`. Entries go with their records'
 * retention; one whose record moved on (a retried task) is skipped by readers.
 */
export const INDEX_STREAM = "TROUPE_INDEX";
export const INDEX_SUBJECTS = "troupe.index.>";
export const taskIndexSubject = (status: string, queue: string, task: string) => `troupe.index.task.${status}.${queue}.${task}`;
export const workflowIndexSubject = (status: string, workflow: string) => `troupe.index.workflow.${status}.${workflow}`;
/** What a task index subject names (`troupe.index.task.<STATUS>.<queue>.<task>`), or `undefined` for another subject. */
export const parseTaskIndexSubject = (subject: string): { readonly status: string; readonly queue: string; readonly task: string } | undefined => {
  const [root, index, kind, status, queue, ...task] = subject.split(".");
  if (root !== "troupe" || index !== "index" || kind !== "task" || status === undefined || queue === undefined || task.length === 0) return undefined;
  return { status, queue, task: task.join(".") };
};
/** Workflow runs not finished yet (key: run id): what coordinators reconcile, instead of every run. */
export const OPEN_RUNS_BUCKET = "troupe-open-runs";
/** Inputs and outputs over the payload threshold: objects `<taskId>.input` and `<taskId>.output`. */
export const PAYLOADS_BUCKET = "troupe-payloads";

export const DEFAULT_QUEUE = "default";

/** Priorities, 1 first to 5 last; 3 unless a submit says otherwise. */
export const PRIORITIES = [1, 2, 3, 4, 5] as const;
export const DEFAULT_PRIORITY = 3;
export const isPriority = (value: unknown): value is number => typeof value === "number" && Number.isInteger(value) && value >= 1 && value <= 5;

/**
 * `troupe.tasks.<queue>.<id>.<type>`: one task's work message at the default priority (3);
 * another priority adds a last token `@<priority>` (`troupe.tasks.default.<id>.math.add.@1`),
 * a keyed task `=<key>`, neither of which a task name can end with (name segments have no
 * `@` or `=`). A dotted type name spans several tokens. The task id sits at a fixed place, so
 * a task's work is readable by id alone (`troupe.tasks.*.<id>.>`, a wildcard `last_by_subj`)
 * whatever its queue, type or lane: a queued task is readable for as long as it waits.
 */
export const workSubject = (queue: string, type: string, id: string, priority: number = DEFAULT_PRIORITY, key?: string) =>
  `${TASKS_ROOT}${queue}.${id}.${type}${lane(priority, key)}`;
/** What a type's consumer reads: every task of the type on one lane (`troupe.tasks.<queue>.*.<type>[.@p|.=k]`). */
export const taskSubject = (queue: string, type: string, priority: number = DEFAULT_PRIORITY) => `${TASKS_ROOT}${queue}.*.${type}${lane(priority)}`;
const lane = (priority: number, key?: string) => (key !== undefined ? `.=${key}` : priority === DEFAULT_PRIORITY ? "" : `.@${priority}`);
/** A task's work messages, whatever its queue, type and lane: `troupe.tasks.*.<id>.>`. */
export const workOfTask = (id: string) => `${TASKS_ROOT}*.${id}.>`;
export const TASKS_SUBJECTS = "troupe.tasks.>";
export const TASKS_ROOT = "troupe.tasks.";
/**
 * A keyed task's lane (`submit(..., { key })`): `troupe.tasks.<queue>.*.<type>.=<key>`, one
 * consumer per key, so that keys are served round robin and `limits.perKey` is the key
 * consumer's `max_ack_pending`.
 */
export const keySubject = (queue: string, type: string, key: string) => `${TASKS_ROOT}${queue}.*.${type}.=${key}`;
export const KEY = /^[A-Za-z0-9_-]{1,64}$/;
/** Every priority but the default, and every key, of one type: `troupe.tasks.<queue>.*.<type>.*`. */
export const prioritySubjects = (queue: string, type: string) => `${taskSubject(queue, type)}.*`;

/**
 * What a work subject (or its bell, `troupe.bells.…`) carries: its queue, task id, type,
 * priority or key, and `base`, its type's default-lane filter (`taskSubject(queue, type)`);
 * `undefined` for a subject of another shape.
 */
export const parseWorkSubject = (
  subject: string,
): { readonly queue: string; readonly id: string; readonly type: string; readonly base: string; readonly priority: number; readonly key?: string } | undefined => {
  const tokens = subject.split(".");
  if (tokens.length < 5 || tokens[0] !== "troupe" || (tokens[1] !== "tasks" && tokens[1] !== "bells")) return undefined;
  const queue = tokens[2]!;
  const id = tokens[3]!;
  let type = tokens.slice(4);
  const last = type[type.length - 1]!;
  let priority = DEFAULT_PRIORITY;
  let key: string | undefined;
  if (last.startsWith("=") && KEY.test(last.slice(1))) key = last.slice(1);
  else if (last.startsWith("@") && isPriority(Number(last.slice(1)))) priority = Number(last.slice(1));
  if (key !== undefined || priority !== DEFAULT_PRIORITY) type = type.slice(0, -1);
  if (type.length === 0) return undefined;
  const name = type.join(".");
  return { queue, id, type: name, base: taskSubject(queue, name), priority, ...(key === undefined ? {} : { key }) };
};

/**
 * `troupe.bells.<queue>.<id>.<type>[…]`: TROUPE_TASKS republishes every work message it
 * stores here, headers only (no payload): what an idle worker listens to, to know that work
 * came for a type it serves, without a copy of the work itself.
 */
export const BELLS_ROOT = "troupe.bells.";
export const BELLS_SUBJECTS = "troupe.bells.>";
/** The bells of one lane of a type (a consumer's filter, rung). */
export const bellSubject = (filter: string) => `${BELLS_ROOT}${filter.slice(TASKS_ROOT.length)}`;

export type ActorKind = "task" | "workflow" | "worker";

/**
 * `troupe.events.<kind>.<id>`: an actor's record as stored, every write of it. Each record
 * bucket (`troupe-tasks`, `troupe-workflows`, `troupe-workers`) keeps its records' revisions
 * (its history) and republishes every write it stores here (the stream's RePublish, with
 * headers `Nats-Sequence`, the revision, and `Nats-Last-Sequence`, the one before): a live
 * watcher hears the very write, once it is stored, and never one that lost its
 * compare-and-set. No user may publish here; only the server does.
 */
export const recordSubject = (kind: ActorKind, id: string) => `troupe.events.${kind}.${id}`;
export const RECORD_SUBJECTS = "troupe.events.*.*";
/** Where the bucket of `kind` republishes its writes: `$KV.<bucket>.>` → `troupe.events.<kind>.>`. */
export const recordRepublish = (kind: ActorKind) => ({ src: `$KV.${bucketOf(kind)}.>`, dest: `troupe.events.${kind}.>` });
export const bucketOf = (kind: ActorKind) => (kind === "task" ? TASKS_BUCKET : kind === "workflow" ? WORKFLOWS_BUCKET : WORKERS_BUCKET);
/** Revisions a record bucket keeps per key: its history (a task's retries and progress, a run's steps, a worker's beats). */
export const RECORD_HISTORY = 64;

/**
 * `troupe.events.<kind>.<id>.<note>`: what happened to an actor that is not a write of its
 * record, kept in TROUPE_EVENTS (age-limited): `lost` (an attempt fenced: what it wanted to
 * write, and why it could not) and a worker's `rejected` (a malformed work message terminated).
 */
export const eventSubject = (kind: ActorKind, id: string, event: string) => `troupe.events.${kind}.${id}.${event}`;
export const EVENTS_SUBJECTS = "troupe.events.*.*.*";

/**
 * `troupe.logs.<workerId>.<taskId>`: every line a handler logs through `ctx.log` (pino
 * JSON), captured by TROUPE_LOGS (age and size limits).
 */
export const LOGS_STREAM = "TROUPE_LOGS";
export const LOGS_SUBJECTS = "troupe.logs.>";
export const logSubject = (workerId: string, taskId: string) => `troupe.logs.${workerId}.${taskId}`;

/**
 * `troupe-<queue>-<type>` (`troupe-<queue>-<type>@<priority>` for another priority than 3):
 * consumer names cannot hold dots, so each dot becomes `_`.
 * Two names that map to the same consumer are refused when the consumer is ensured.
 */
export const consumerName = (queue: string, type: string, priority: number = DEFAULT_PRIORITY, key?: string) =>
  `troupe-${queue}-${type.replaceAll(".", "_")}${key !== undefined ? `=${key}` : priority === DEFAULT_PRIORITY ? "" : `@${priority}`}`;

/** The subject a KV put to `bucket`/`key` is published on (what `nats kv` does underneath). */
export const kvSubject = (bucket: string, key: string) => `$KV.${bucket}.${key}`;

/**
 * What a client's tasks carry as `notify` (`troupe.notify.<client>`): who submitted them, so
 * that a client listening to every task's writes keeps its own tasks' ends. Nothing is
 * published on it.
 */
export const NOTIFY_ROOT = "troupe.notify.";
export const notifySubject = (clientId: string) => `${NOTIFY_ROOT}${clientId}`;

/** A worker's control subjects (its micro service endpoints): `troupe.control.<workerId>.{cancel,stats,drain,shutdown}`. */
export const controlSubject = (workerId: string, verb: "cancel" | "stats" | "drain" | "shutdown") => `troupe.control.${workerId}.${verb}`;

/**
 * JSON-RPC 2.0 (docs/rpc.md): requests on `troupe.rpc`, served by the `troupe-rpc` micro
 * service of every worker and gateway, all in one queue group; the method directory (key:
 * method name) tells an instance about the tasks it does not run.
 */
export const RPC_SUBJECT = "troupe.rpc";
export const RPC_SERVICE = "troupe-rpc";
export const RPC_QUEUE = "troupe-rpc";
export const METHODS_BUCKET = "troupe-methods";

/**
 * JetStream's advisory when a task message ran out of deliveries (its workers kept dying);
 * captured in a stream so that one is handled even when no worker was listening.
 */
export const ADVISORIES_STREAM = "TROUPE_ADVISORIES";
export const MAX_DELIVERIES_SUBJECTS = `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${TASKS_STREAM}.*`;
export const REAPER_CONSUMER = "troupe-max-deliveries";

/**
 * Workflow steps' terminal records: `troupe.steps.<runId>.<step>.<taskId>` (a step task's
 * `notify` is `troupe.steps.<runId>.<step>`), each stored acknowledged (message id
 * `<taskId>:<revision>`) in a work-queue stream that coordinators share.
 */
export const STEPS_STREAM = "TROUPE_STEPS";
export const STEPS_SUBJECTS = "troupe.steps.>";
export const STEPS_ROOT = "troupe.steps.";
export const stepsSubject = (runId: string, step: string) => `${STEPS_ROOT}${runId}.${step}`;
export const COORDINATOR_CONSUMER = "troupe-coordinator";

/** Message headers Troupe sets on work messages. */
export const Headers = {
  /** KV revision of the QUEUED record: the first attempt's fencing token, saving a read. */
  revision: "Troupe-Revision",
  /**
   * On an event (`troupe.events.…`): the publishing actor's state path after the event, at
   * every level (`RUNNING.executing`), read off the live actor, for the inspector.
   */
  state: "Troupe-State",
} as const;

/** A machine's state value as a dotted path: `{ RUNNING: "executing" }` → `RUNNING.executing` (the first region of a parallel state). */
export const statePath = (value: unknown): string => {
  if (typeof value === "string") return value;
  if (value === null || typeof value !== "object") return "";
  const [key, child] = Object.entries(value as Record<string, unknown>)[0] ?? [];
  if (key === undefined) return "";
  const rest = statePath(child);
  return rest === "" ? key : `${key}.${rest}`;
};

const segment = /^[A-Za-z0-9_-]+$/;
/** Task names: dot-separated segments of letters, digits, `_` and `-` (`math.add`). */
export const isValidTaskName = (name: string) => name.length <= 200 && name.split(".").every((s) => segment.test(s));
export const isValidQueueName = (name: string) => name.length <= 64 && segment.test(name);
