/** Handler bodies the tests share. */

/** Resolves with `value` once the attempt is interrupted (deadline, cancellation, shutdown), calling `onAbort` first. */
export const untilAborted = <T>(signal: AbortSignal, value: T, onAbort: () => void = () => {}): Promise<T> =>
  new Promise<T>((resolve) =>
    signal.addEventListener("abort", () => {
      onAbort();
      resolve(value);
    }),
  );
