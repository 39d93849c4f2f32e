/** Troupe's version, as the micro services report it (kept equal to package.json's). */
export const VERSION = "0.1.0";
