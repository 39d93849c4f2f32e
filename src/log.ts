/** pino JSON logs; every line from a task, worker or workflow carries its id. */
import { pino, type Logger } from "pino";

export type { Logger };

/** The root logger: level from `TROUPE_LOG_LEVEL` (default `info`), JSON to stdout. */
export const rootLogger = (level = process.env.TROUPE_LOG_LEVEL ?? "info"): Logger =>
  pino({ name: "troupe", level, base: { pid: process.pid } });
