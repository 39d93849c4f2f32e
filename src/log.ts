/** pino JSON logs; every line from a task, worker or workflow carries its id. */
import { pino, type Logger } from "pino";
import { InvalidOption } from "./errors.js";

export type { Logger };

/** The levels `logLevel` and `TROUPE_LOG_LEVEL` take. */
export const LogLevels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LogLevels)[number];

/**
 * The level of a logger Troupe makes itself: quiet, as a library inside someone's program
 * should be. What goes wrong without an answer to the caller (a worker that lost NATS, a
 * write that failed) is a warning; expected events (a retry, a cancel, a redelivery) are
 * `info` or `debug`.
 */
export const DEFAULT_LOG_LEVEL: LogLevel = "warn";

/** `level` checked, or `InvalidOption` naming where it came from. */
export const logLevel = (level: string, where: string): LogLevel => {
  if ((LogLevels as ReadonlyArray<string>).includes(level)) return level as LogLevel;
  throw new InvalidOption({ message: `${where} must be one of ${LogLevels.join(", ")}, got "${level}"` });
};

/**
 * The root logger: its level `level`, else `TROUPE_LOG_LEVEL`, else `warn`; JSON lines on
 * stderr, so that the program's stdout holds only what it prints itself.
 */
export const rootLogger = (level?: string): Logger => {
  const env = process.env.TROUPE_LOG_LEVEL;
  const chosen =
    level !== undefined ? logLevel(level, "logLevel") : env !== undefined && env !== "" ? logLevel(env, "TROUPE_LOG_LEVEL") : DEFAULT_LOG_LEVEL;
  return pino({ name: "troupe", level: chosen, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
};

/** Where a logger writes its lines (its destination stream), if it has one. */
export const destinationOf = (log: Logger): { write(line: string): void } | undefined =>
  (log as unknown as Record<symbol, { write(line: string): void } | undefined>)[pino.symbols.streamSym];

/** The level of a pino line (`{"level":30,...}`), `Infinity` when it has none. */
export const lineLevel = (line: string): number => {
  const m = /^\{"level":(\d+)/.exec(line);
  return m === null ? Number.POSITIVE_INFINITY : Number(m[1]);
};

/**
 * The level handlers' `ctx.log` lines are made at: `info`, or the worker's own level when it
 * is lower. Those at `info` and above reach TROUPE_LOGS whatever the worker's level; its own
 * destination gets only those at its level.
 */
export const handlerLogLevel = (log: Logger): string => (log.levelVal < pino.levels.values.info! ? log.level : "info");
