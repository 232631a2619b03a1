/** A failure the user can fix: wrong flag, missing URL. The command exits with 64 (EX_USAGE). */
export class UsageError extends Error {}
