/** A progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise. */
export class ProgressBar {
  private lastTenth = -1;
  private readonly tty = process.stderr.isTTY === true;
  constructor(
    private readonly total: number,
    private readonly label: string,
  ) {}

  update(done: number, extra = ""): void {
    const ratio = this.total === 0 ? 1 : Math.min(1, done / this.total);
    if (this.tty) {
      const width = 30;
      const filled = Math.round(ratio * width);
      process.stderr.write(
        `\r${this.label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${this.total} ${extra}`.padEnd(90),
      );
      if (done >= this.total) process.stderr.write("\n");
      return;
    }
    const tenth = Math.floor(ratio * 10);
    if (tenth !== this.lastTenth) {
      this.lastTenth = tenth;
      process.stderr.write(`${this.label} ${Math.round(ratio * 100)}% (${done}/${this.total}) ${extra}\n`);
    }
  }
}
