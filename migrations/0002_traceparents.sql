-- 0002: the traceparent index moves off the execution table, into a table of its own
-- that is written once, when an execution is enqueued.
--
-- Every claim and every settle writes a new version of the execution's row, and a new
-- row version needs a new entry in every index of the table. Trace ids are random, so
-- each new entry of the traceparent index landed on a random page of it: in
-- server-side claim/complete loops that one index cost a quarter of the throughput.
-- A row's traceparent never changes after enqueue, so its index entry only has to be
-- written once.

-- No execution may be written between the backfill below and the end of this
-- migration without its index row (pgc processes of the previous version do not write
-- one: upgrade them all together).
lock table pgconductor._private_executions in share row exclusive mode;

create table pgconductor._private_traceparents (
    -- The execution's producer carrier, as in trace_context ->> 'traceparent'.
    traceparent text collate "C" not null,
    execution_id uuid not null
);

insert into pgconductor._private_traceparents (traceparent, execution_id)
select trace_context ->> 'traceparent', id
from pgconductor._private_executions
where trace_context ->> 'traceparent' is not null;

-- The seed's lookup by carrier, and one trace as a key range: pgc always stores
-- version-00 traceparents ("00-<trace id>-<span id>-<flags>"), so one trace is the range
-- from '00-<trace id>-' up to '00-<trace id>.' ('.' sorts right after '-').
-- text_pattern_ops compares bytes, so that range holds whatever the database's
-- collation, and plain `=` lookups use the index too.
create index _private_traceparents_traceparent
    on pgconductor._private_traceparents (traceparent text_pattern_ops);

-- pgc writes a row here in the statement or transaction that enqueues the execution (a
-- trigger on insert would cost bulk enqueue a tenth of its speed). Deleting or truncating
-- executions removes their rows here too.
create function pgconductor._private_traceparents_delete() returns trigger
language plpgsql as $$
begin
    delete from pgconductor._private_traceparents t
    using old_rows o
    where t.traceparent = o.trace_context ->> 'traceparent' and t.execution_id = o.id;
    return null;
end
$$;

create function pgconductor._private_traceparents_truncate() returns trigger
language plpgsql as $$
begin
    truncate pgconductor._private_traceparents;
    return null;
end
$$;

create trigger _private_traceparents_delete
    after delete on pgconductor._private_executions
    referencing old table as old_rows
    for each statement execute function pgconductor._private_traceparents_delete();

create trigger _private_traceparents_truncate
    after truncate on pgconductor._private_executions
    for each statement execute function pgconductor._private_traceparents_truncate();

drop index pgconductor._private_executions_traceparent;
