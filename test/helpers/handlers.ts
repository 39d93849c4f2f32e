/** Handler bodies the tests share. */

/** Resolves with `value` once the attempt is interrupted (deadline, cancellation, shutdown), calling `onAbort` first. */
export const untilAborted = <T>(signal: AbortSignal, value: T, onAbort: () => void = () => {}): Promise<T> =>
  new Promise<T>((resolve) =>
    signal.addEventListener("abort", () => {
      onAbort();
      resolve(value);
    }),
  );

/**
 * Gates a test opens by key: `gate(key)` makes one and returns its opener, a handler awaits
 * `opened(key)` (at once for a key no test made), and `openAll()` lets every waiting one go.
 */
export const gates = () => {
  const all = new Map<string, { open: () => void; opened: Promise<void> }>();
  return {
    gate: (key: string): (() => void) => {
      let open!: () => void;
      const opened = new Promise<void>((resolve) => (open = resolve));
      all.set(key, { open, opened });
      return open;
    },
    opened: (key: string): Promise<void> | undefined => all.get(key)?.opened,
    openAll: (): void => {
      for (const g of all.values()) g.open();
    },
  };
};
