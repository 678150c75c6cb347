
use builtin;
use str;

set edit:completion:arg-completer[pgc] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'pgc'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'pgc'= {
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand migrate 'Install or upgrade the pgconductor schema'
            cand enqueue 'Put a task execution (or a JSON Lines batch of them) into a queue'
            cand work 'Run tasks from queues as commands (a foreground worker)'
            cand step 'Run a command as a memoized step of the current execution (inside a handler)'
            cand cancel 'Cancel an execution (pending: at once; running: its worker stops it)'
            cand trace 'Show the whole trace of an execution, rebuilt from the rows'
            cand bench 'Measure enqueue, work and latency on a scratch queue (in-process no-op handlers)'
            cand completions 'Print a shell completion script'
            cand man 'Print the man page, or write every page into a directory'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'pgc;migrate'= {
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand --status 'Show each migration (applied, pending, checksum mismatch) instead of applying'
            cand --dry-run 'Print the SQL that would run, and change nothing'
            cand --json 'Print JSON on stdout instead of text'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;enqueue'= {
            cand -q 'Queue to put it in (same characters as task names)'
            cand --queue 'Queue to put it in (same characters as task names)'
            cand -p 'Payload: JSON text, @FILE to read it from a file, or - for stdin. Default: {}'
            cand --payload 'Payload: JSON text, @FILE to read it from a file, or - for stdin. Default: {}'
            cand --run-at 'Run no earlier than this time (RFC 3339, e.g. 2026-01-31T09:30:00Z)'
            cand --delay 'Run no earlier than this long from now (e.g. 30s, 5m, 1h30m)'
            cand --priority 'Priority: lower numbers run first (may be negative)'
            cand --max-attempts 'Attempts before the execution is finished as failed (at least 1)'
            cand --dedupe-key 'While an unfinished execution of the same queue and task has this key, return its id instead of enqueuing another'
            cand --traceparent 'W3C traceparent of the caller''s span (overrides TRACEPARENT)'
            cand --tracestate 'W3C tracestate to carry with --traceparent (overrides TRACESTATE)'
            cand --wait-timeout 'With --wait: give up after this long (exit 1). Default: wait as long as it takes'
            cand --batch 'Enqueue every line of a JSON Lines file (- for stdin): objects with "task" and optional "payload", "queue", "priority", "run_at", "dedupe_key", "max_attempts". All-or-nothing unless --commit-every is given'
            cand --commit-every 'With --batch: commit every N rows instead of once at the end'
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand --json 'Print a JSON object (id, queue, task, traceparent, …) instead of the id alone'
            cand --wait 'Wait for the execution to finish and print its result JSON instead of its id (`null` when it has none). Exit 0 when it completed, 1 when it failed or was cancelled. Woken by the worker''s NOTIFY, with a slow poll as fallback'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;work'= {
            cand -q 'Queue to work (repeat for several)'
            cand --queue 'Queue to work (repeat for several)'
            cand -c 'Handlers running at once'
            cand --concurrency 'Handlers running at once'
            cand --handler 'Run TASK with COMMAND through `sh -c` (repeat for several tasks). Tasks without a handler of their own run the command after `--`; without one they are not claimed'
            cand --timeout 'Stop a handler running longer than this (SIGTERM to its process group, SIGKILL after --kill-grace); the attempt fails with "timed out after …"'
            cand --kill-grace 'Between SIGTERM and SIGKILL when a handler is stopped'
            cand --retry-delay 'Base of the exponential retry backoff (doubling per attempt, capped at 1h, with jitter in the upper half)'
            cand --lease 'How long a claim holds an execution; renewed every third of it while it runs. A killed worker''s executions run elsewhere once their lease expires'
            cand --poll-interval 'Look for due work this often even without a notification'
            cand --shutdown-timeout 'After SIGINT/SIGTERM, how long running handlers get to finish before they are stopped and their executions released (without using an attempt)'
            cand --prefetch 'Claim at least N executions ahead of free handler slots, so that a slot that frees starts the next task without waiting for a claim. They stay claimed while they wait, so other workers cannot take them; given back unused at shutdown. With 0 (the default) the worker claims ahead only as many as its handlers finish during one claim: none when they run much longer than a claim'
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand --until-empty 'Drain the queues and exit: returns when nothing in them is running, due, or waiting for a retry. Exit 0 when every execution it finished completed, 1 when any finished as failed (each listed on stderr)'
            cand -v 'Log every completed attempt too, not only failures'
            cand --verbose 'Log every completed attempt too, not only failures'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;step'= {
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;cancel'= {
            cand --wait 'How long to wait for a running execution to stop'
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;trace'= {
            cand --trace-id 'Show the trace with this id (32 hex digits) instead'
            cand --format 'Output format: a tree table, JSON for scripts, an OTLP/JSON export request, or the opentelemetry-stdout exporter''s text. Default: table (nothing with --export)'
            cand --export 'Also send the spans to an OTLP/HTTP (protobuf) endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT plus /v1/traces, else http://localhost:4318/v1/traces'
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;bench'= {
            cand --jobs 'Executions to enqueue and work'
            cand --concurrency 'Worker concurrency (in-process handlers)'
            cand --latency-samples 'Sequential single enqueues for the latency figure'
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand --json 'Print JSON: enqueue_per_s, work_per_s, latency_ms {p50, p99, max}'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;completions'= {
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;man'= {
            cand --dir 'Write every page into this directory instead of printing pgc.1'
            cand --database-url 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults'
            cand --log-format 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pgc;help'= {
            cand migrate 'Install or upgrade the pgconductor schema'
            cand enqueue 'Put a task execution (or a JSON Lines batch of them) into a queue'
            cand work 'Run tasks from queues as commands (a foreground worker)'
            cand step 'Run a command as a memoized step of the current execution (inside a handler)'
            cand cancel 'Cancel an execution (pending: at once; running: its worker stops it)'
            cand trace 'Show the whole trace of an execution, rebuilt from the rows'
            cand bench 'Measure enqueue, work and latency on a scratch queue (in-process no-op handlers)'
            cand completions 'Print a shell completion script'
            cand man 'Print the man page, or write every page into a directory'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'pgc;help;migrate'= {
        }
        &'pgc;help;enqueue'= {
        }
        &'pgc;help;work'= {
        }
        &'pgc;help;step'= {
        }
        &'pgc;help;cancel'= {
        }
        &'pgc;help;trace'= {
        }
        &'pgc;help;bench'= {
        }
        &'pgc;help;completions'= {
        }
        &'pgc;help;man'= {
        }
        &'pgc;help;help'= {
        }
    ]
    $completions[$command]
}
