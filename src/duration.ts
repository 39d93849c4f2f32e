/** Durations as the SDK takes them: milliseconds, an Effect duration such as `"30 seconds"`, or `"30s"`. */
import { Duration, Option } from "effect";

export type DurationInput = number | Duration.Input;

/** Short units as people type them (`1s`, `500ms`, `2m`), in the words Effect's durations take. */
const SHORT_UNITS: Readonly<Record<string, string>> = { ms: "millis", s: "seconds", m: "minutes", h: "hours", d: "days" };
const SHORT = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/i;

/** Milliseconds, or `undefined` when the value is not a finite, non-negative duration. */
export const parseDuration = (value: unknown): number | undefined => {
  if (typeof value === "number") return Number.isFinite(value) && value >= 0 ? value : undefined;
  if (value === undefined || value === null) return undefined;
  const short = typeof value === "string" ? SHORT.exec(value.trim()) : null;
  if (short !== null) return parseDuration(`${short[1]} ${SHORT_UNITS[short[2]!.toLowerCase()]}`);
  let parsed: Option.Option<Duration.Duration>;
  try {
    parsed = Duration.fromInput(value as Duration.Input);
  } catch {
    return undefined;
  }
  if (Option.isNone(parsed)) return undefined;
  const ms = Duration.toMillis(parsed.value);
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
};

/**
 * A duration option, checked: `fail` builds the typed error (naming the option) for a value
 * that does not parse or is below `min` milliseconds.
 */
export const durationOption = <E>(what: string, value: unknown, fail: (message: string) => E, min = 0): number => {
  const ms = parseDuration(value);
  if (ms === undefined || ms < min) {
    const shown = typeof value === "string" ? `"${value}"` : String(value);
    const bound = min > 0 ? ` of at least ${min} ms` : "";
    throw fail(`${what} must be a duration${bound} (milliseconds, or a string such as "30 seconds"), got ${shown}`);
  }
  return ms;
};
