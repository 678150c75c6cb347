# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pgc_global_optspecs
    string join \n database-url= log-format= h/help V/version
end

function __fish_pgc_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pgc_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pgc_using_subcommand
    set -l cmd (__fish_pgc_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pgc -n "__fish_pgc_needs_command" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_needs_command" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_needs_command" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "migrate" -d 'Install or upgrade the pgconductor schema'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "enqueue" -d 'Put a task execution (or a JSON Lines batch of them) into a queue'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "work" -d 'Run tasks from queues as commands (a foreground worker)'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "step" -d 'Run a command as a memoized step of the current execution (inside a handler)'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "cancel" -d 'Cancel an execution (pending: at once; running: its worker stops it)'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "trace" -d 'Show the whole trace of an execution, rebuilt from the rows'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "bench" -d 'Measure enqueue, work and latency on a scratch queue (in-process no-op handlers)'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "man" -d 'Print the man page, or write every page into a directory'
complete -c pgc -n "__fish_pgc_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -l status -d 'Show each migration (applied, pending, checksum mismatch) instead of applying'
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -l dry-run -d 'Print the SQL that would run, and change nothing'
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -l json -d 'Print JSON on stdout instead of text'
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand migrate" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -s q -l queue -d 'Queue to put it in (same characters as task names)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -s p -l payload -d 'Payload: JSON text, @FILE to read it from a file, or - for stdin. Default: {}' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l run-at -d 'Run no earlier than this time (RFC 3339, e.g. 2026-01-31T09:30:00Z)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l delay -d 'Run no earlier than this long from now (e.g. 30s, 5m, 1h30m)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l priority -d 'Priority: lower numbers run first (may be negative)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l max-attempts -d 'Attempts before the execution is finished as failed (at least 1)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l dedupe-key -d 'While an unfinished execution of the same queue and task has this key, return its id instead of enqueuing another' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l traceparent -d 'W3C traceparent of the caller\'s span (overrides TRACEPARENT)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l tracestate -d 'W3C tracestate to carry with --traceparent (overrides TRACESTATE)' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l wait-timeout -d 'With --wait: give up after this long (exit 1). Default: wait as long as it takes' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l batch -d 'Enqueue every line of a JSON Lines file (- for stdin): objects with "task" and optional "payload", "queue", "priority", "run_at", "dedupe_key", "max_attempts". All-or-nothing unless --commit-every is given' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l commit-every -d 'With --batch: commit every N rows instead of once at the end' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l json -d 'Print a JSON object (id, queue, task, traceparent, …) instead of the id alone'
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -l wait -d 'Wait for the execution to finish and print its result JSON instead of its id (`null` when it has none). Exit 0 when it completed, 1 when it failed or was cancelled. Woken by the worker\'s NOTIFY, with a slow poll as fallback'
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand enqueue" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand work" -s q -l queue -d 'Queue to work (repeat for several)' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -s c -l concurrency -d 'Handlers running at once' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l handler -d 'Run TASK with COMMAND through `sh -c` (repeat for several tasks). Tasks without a handler of their own run the command after `--`; without one they are not claimed' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l timeout -d 'Stop a handler running longer than this (SIGTERM to its process group, SIGKILL after --kill-grace); the attempt fails with "timed out after …"' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l kill-grace -d 'Between SIGTERM and SIGKILL when a handler is stopped' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l retry-delay -d 'Base of the exponential retry backoff (doubling per attempt, capped at 1h, with jitter in the upper half)' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l lease -d 'How long a claim holds an execution; renewed every third of it while it runs. A killed worker\'s executions run elsewhere once their lease expires' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l poll-interval -d 'Look for due work this often even without a notification' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l shutdown-timeout -d 'After SIGINT/SIGTERM, how long running handlers get to finish before they are stopped and their executions released (without using an attempt)' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l prefetch -d 'Claim at least N executions ahead of free handler slots, so that a slot that frees starts the next task without waiting for a claim. They stay claimed while they wait, so other workers cannot take them; given back unused at shutdown. With 0 (the default) the worker claims ahead only as many as its handlers finish during one claim: none when they run much longer than a claim' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand work" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand work" -l until-empty -d 'Drain the queues and exit: returns when nothing in them is running, due, or waiting for a retry. Exit 0 when every execution it finished completed, 1 when any finished as failed (each listed on stderr)'
complete -c pgc -n "__fish_pgc_using_subcommand work" -s v -l verbose -d 'Log every completed attempt too, not only failures'
complete -c pgc -n "__fish_pgc_using_subcommand work" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand work" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand step" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand step" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand step" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand step" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand cancel" -l wait -d 'How long to wait for a running execution to stop' -r
complete -c pgc -n "__fish_pgc_using_subcommand cancel" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand cancel" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand cancel" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand cancel" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand trace" -l trace-id -d 'Show the trace with this id (32 hex digits) instead' -r
complete -c pgc -n "__fish_pgc_using_subcommand trace" -l format -d 'Output format: a tree table, JSON for scripts, an OTLP/JSON export request, or the opentelemetry-stdout exporter\'s text. Default: table (nothing with --export)' -r -f -a "table\t'A tree with a waterfall, one row per span'
json\t'A stable JSON document'
otlp-json\t'An OTLP/JSON ExportTraceServiceRequest on one line'
stdout\t'The opentelemetry-stdout span exporter'"
complete -c pgc -n "__fish_pgc_using_subcommand trace" -l export -d 'Also send the spans to an OTLP/HTTP (protobuf) endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT plus /v1/traces, else http://localhost:4318/v1/traces' -r -f -a "otlp\t'OTLP over HTTP with protobuf bodies'"
complete -c pgc -n "__fish_pgc_using_subcommand trace" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand trace" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand trace" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand trace" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand bench" -l jobs -d 'Executions to enqueue and work' -r
complete -c pgc -n "__fish_pgc_using_subcommand bench" -l concurrency -d 'Worker concurrency (in-process handlers)' -r
complete -c pgc -n "__fish_pgc_using_subcommand bench" -l latency-samples -d 'Sequential single enqueues for the latency figure' -r
complete -c pgc -n "__fish_pgc_using_subcommand bench" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand bench" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand bench" -l json -d 'Print JSON: enqueue_per_s, work_per_s, latency_ms {p50, p99, max}'
complete -c pgc -n "__fish_pgc_using_subcommand bench" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand bench" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand completions" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand completions" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand completions" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand man" -l dir -d 'Write every page into this directory instead of printing pgc.1' -r -F
complete -c pgc -n "__fish_pgc_using_subcommand man" -l database-url -d 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq\'s defaults' -r
complete -c pgc -n "__fish_pgc_using_subcommand man" -l log-format -d 'pgc\'s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution\'s lines, its trace_id and span_id)' -r -f -a "text\t'`pgc: …` lines'
json\t'JSON lines'"
complete -c pgc -n "__fish_pgc_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgc -n "__fish_pgc_using_subcommand man" -s V -l version -d 'Print version'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "migrate" -d 'Install or upgrade the pgconductor schema'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "enqueue" -d 'Put a task execution (or a JSON Lines batch of them) into a queue'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "work" -d 'Run tasks from queues as commands (a foreground worker)'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "step" -d 'Run a command as a memoized step of the current execution (inside a handler)'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "cancel" -d 'Cancel an execution (pending: at once; running: its worker stops it)'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "trace" -d 'Show the whole trace of an execution, rebuilt from the rows'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "bench" -d 'Measure enqueue, work and latency on a scratch queue (in-process no-op handlers)'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "completions" -d 'Print a shell completion script'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "man" -d 'Print the man page, or write every page into a directory'
complete -c pgc -n "__fish_pgc_using_subcommand help; and not __fish_seen_subcommand_from migrate enqueue work step cancel trace bench completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
