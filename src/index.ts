/**
 * txonce's core: the idempotency algorithm over a small database interface, with no ORM or
 * driver imports. Most users start from an adapter instead: `txonce/prisma` or `txonce/pg`.
 */
export {
  createIdempotency,
  type Idempotency,
  type IdempotencyDefaults,
  type IdempotencyOptions,
  type IdempotencyOutcome,
  type JoinedIdempotencyOptions,
  type Operation,
} from "./idempotency.js";
export { createTxonce, type Txonce, type TxonceOptions, type AdapterHooks } from "./txonce.js";
export { createOutbox, type Outbox, type OutboxOptions, type OutboxBacklog, type DeadMessage } from "./outbox/outbox.js";
export { type Keys, type KeyRef, type KeyRecord, type ForgetOptions, type PurgeOptions } from "./keys.js";
export {
  doctor,
  doctorCheckNames,
  type DoctorCheck,
  type DoctorCheckName,
  type DoctorOptions,
  type DoctorReport,
  type DoctorThresholds,
  type Levels,
  type Verdict,
} from "./doctor/doctor.js";
export type { OutboxMessage, OutboxMessageInput, Publisher } from "./outbox/message.js";
export { createRelay, type Relay, type RelayOptions } from "./outbox/relay.js";
export type { RelayLogger } from "./outbox/relay-logger.js";
export type { BackoffOptions } from "./outbox/backoff.js";
export type { ListenClientLike } from "./outbox/listener.js";
export {
  runCleanup,
  idempotencyKeysTable,
  type CleanupOptions,
  type CleanupProgress,
  type CleanupResult,
  type PrunableTable,
  type TableCleanupResult,
} from "./cleanup/cleanup.js";
export { scheduleCleanup, type CleanupSchedule, type ScheduleCleanupOptions } from "./cleanup/schedule.js";
export type { Database, Row, SqlExecutor } from "./executor.js";
export { Codec, type CustomType, type JSONValue } from "./codec.js";
export type { Duration } from "./duration.js";
export {
  TxonceError,
  IdempotencyKeyInUseError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  UnencodableValueError,
  SchemaNotInstalledError,
  DatabaseUnavailableError,
  ConnectionLostError,
  NoConnectionError,
  ConnectionTerminatedError,
  OutcomeUnknownError,
  type IdempotencyRecordInfo,
  type IdempotencyStep,
} from "./errors.js";
export { SqlState, sqlStateOf, connectionFailureOf, type ConnectionFailure } from "./sqlstate.js";
export { migrations, schemaSql } from "./sql/schema.js";
export type { TelemetryOptions } from "./telemetry/options.js";
export { continueTrace, type ReceivedMessage, type MessageHeaders } from "./telemetry/consumer.js";
