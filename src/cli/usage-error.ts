/** A failure the user can fix: wrong flag, missing URL. The command exits with 2. */
export class UsageError extends Error {}
