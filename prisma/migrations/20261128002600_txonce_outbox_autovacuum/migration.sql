-- Autovacuum settings for the outbox table (Prisma does not model storage parameters; this
-- migration was written by hand, as Prisma's docs describe for custom SQL).
--
-- Every message is inserted, leased, and marked published (or deleted): each leaves about two dead
-- row versions behind, and dead index entries among the pending ones that every claim steps over
-- until VACUUM removes them. PostgreSQL's default vacuums a table once 20% of it is dead, which
-- for an outbox that keeps a week of published messages is far too late: vacuum it once 1% (at
-- least 1,000 rows) is dead, and analyze it as often, so the planner's picture of the pending
-- rows stays current. See docs/outbox.md, "Table health".
ALTER TABLE "txonce_outbox_messages" SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000
);
