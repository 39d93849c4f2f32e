/**
 * Reading handlers' logs from TROUPE_LOGS: `troupe.logs(...)` and `troupe logs`. Each line
 * is the pino JSON object a handler's `ctx.log` wrote (task, worker and attempt ids in it).
 */
import type { NatsHandle } from "../nats/connection.js";
import { LOGS_STREAM } from "../nats/topology.js";
import { ResultTimeout } from "../errors.js";

export interface LogFilter {
  /** Only this task's lines. */
  readonly task?: string;
  /** Only the lines of handlers this worker ran. */
  readonly worker?: string;
  /** Go on with new lines as they come (until the loop breaks or `timeout` passes). */
  readonly follow?: boolean;
  /** Milliseconds; a follow past it ends with `ResultTimeout`. */
  readonly timeout?: number;
}

/** One log line: a pino JSON object. */
export type LogLine = Readonly<Record<string, unknown>>;

const token = (value: string | undefined) => (value === undefined || value === "" ? "*" : value);

/** The lines stored now (or, following, from now on too), oldest first. */
export async function* readLogs(nats: NatsHandle, filter: LogFilter = {}): AsyncGenerator<LogLine> {
  const subject = `troupe.logs.${token(filter.worker)}.${token(filter.task)}`;
  const consumer = await nats.js.consumers.get(LOGS_STREAM, { filter_subjects: subject });
  let left = filter.follow ? Number.POSITIVE_INFINITY : (await consumer.info(true)).num_pending;
  // Its ordered consumer goes with the read (the server would keep it five minutes).
  if (left === 0) return void (await consumer.delete().catch(() => undefined));
  const messages = await consumer.consume();
  let timer: NodeJS.Timeout | undefined;
  let expired = false;
  if (filter.timeout !== undefined) {
    timer = setTimeout(() => {
      expired = true;
      void messages.close();
    }, filter.timeout);
  }
  try {
    for await (const m of messages) {
      let line: LogLine;
      try {
        line = m.json<LogLine>();
      } catch {
        line = { msg: m.string() };
      }
      yield line;
      // Not following: done at the end of what is stored (lines the stream's limits dropped meanwhile never come).
      if (--left === 0 || (!filter.follow && m.info.pending === 0)) return;
    }
    if (expired) throw new ResultTimeout({ id: subject, message: `no more log lines on ${subject} within ${filter.timeout} ms` });
  } finally {
    clearTimeout(timer);
    await messages.close();
    await consumer.delete().catch(() => undefined);
  }
}
