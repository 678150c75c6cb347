
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'pgc' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'pgc'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'pgc' {
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Install or upgrade the pgconductor schema')
            [CompletionResult]::new('enqueue', 'enqueue', [CompletionResultType]::ParameterValue, 'Put a task execution (or a JSON Lines batch of them) into a queue')
            [CompletionResult]::new('work', 'work', [CompletionResultType]::ParameterValue, 'Run tasks from queues as commands (a foreground worker)')
            [CompletionResult]::new('step', 'step', [CompletionResultType]::ParameterValue, 'Run a command as a memoized step of the current execution (inside a handler)')
            [CompletionResult]::new('cancel', 'cancel', [CompletionResultType]::ParameterValue, 'Cancel an execution (pending: at once; running: its worker stops it)')
            [CompletionResult]::new('trace', 'trace', [CompletionResultType]::ParameterValue, 'Show the whole trace of an execution, rebuilt from the rows')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure enqueue, work and latency on a scratch queue (in-process no-op handlers)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Print the man page, or write every page into a directory')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'pgc;migrate' {
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'Show each migration (applied, pending, checksum mismatch) instead of applying')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print the SQL that would run, and change nothing')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON on stdout instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;enqueue' {
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Queue to put it in (same characters as task names)')
            [CompletionResult]::new('--queue', '--queue', [CompletionResultType]::ParameterName, 'Queue to put it in (same characters as task names)')
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'Payload: JSON text, @FILE to read it from a file, or - for stdin. Default: {}')
            [CompletionResult]::new('--payload', '--payload', [CompletionResultType]::ParameterName, 'Payload: JSON text, @FILE to read it from a file, or - for stdin. Default: {}')
            [CompletionResult]::new('--run-at', '--run-at', [CompletionResultType]::ParameterName, 'Run no earlier than this time (RFC 3339, e.g. 2026-01-31T09:30:00Z)')
            [CompletionResult]::new('--delay', '--delay', [CompletionResultType]::ParameterName, 'Run no earlier than this long from now (e.g. 30s, 5m, 1h30m)')
            [CompletionResult]::new('--priority', '--priority', [CompletionResultType]::ParameterName, 'Priority: lower numbers run first (may be negative)')
            [CompletionResult]::new('--max-attempts', '--max-attempts', [CompletionResultType]::ParameterName, 'Attempts before the execution is finished as failed (at least 1)')
            [CompletionResult]::new('--dedupe-key', '--dedupe-key', [CompletionResultType]::ParameterName, 'While an unfinished execution of the same queue and task has this key, return its id instead of enqueuing another')
            [CompletionResult]::new('--traceparent', '--traceparent', [CompletionResultType]::ParameterName, 'W3C traceparent of the caller''s span (overrides TRACEPARENT)')
            [CompletionResult]::new('--tracestate', '--tracestate', [CompletionResultType]::ParameterName, 'W3C tracestate to carry with --traceparent (overrides TRACESTATE)')
            [CompletionResult]::new('--wait-timeout', '--wait-timeout', [CompletionResultType]::ParameterName, 'With --wait: give up after this long (exit 1). Default: wait as long as it takes')
            [CompletionResult]::new('--batch', '--batch', [CompletionResultType]::ParameterName, 'Enqueue every line of a JSON Lines file (- for stdin): objects with "task" and optional "payload", "queue", "priority", "run_at", "dedupe_key", "max_attempts". All-or-nothing unless --commit-every is given')
            [CompletionResult]::new('--commit-every', '--commit-every', [CompletionResultType]::ParameterName, 'With --batch: commit every N rows instead of once at the end')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON object (id, queue, task, traceparent, …) instead of the id alone')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Wait for the execution to finish and print its result JSON instead of its id (`null` when it has none). Exit 0 when it completed, 1 when it failed or was cancelled. Woken by the worker''s NOTIFY, with a slow poll as fallback')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;work' {
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Queue to work (repeat for several)')
            [CompletionResult]::new('--queue', '--queue', [CompletionResultType]::ParameterName, 'Queue to work (repeat for several)')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Handlers running at once')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'Handlers running at once')
            [CompletionResult]::new('--handler', '--handler', [CompletionResultType]::ParameterName, 'Run TASK with COMMAND through `sh -c` (repeat for several tasks). Tasks without a handler of their own run the command after `--`; without one they are not claimed')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Stop a handler running longer than this (SIGTERM to its process group, SIGKILL after --kill-grace); the attempt fails with "timed out after …"')
            [CompletionResult]::new('--kill-grace', '--kill-grace', [CompletionResultType]::ParameterName, 'Between SIGTERM and SIGKILL when a handler is stopped')
            [CompletionResult]::new('--retry-delay', '--retry-delay', [CompletionResultType]::ParameterName, 'Base of the exponential retry backoff (doubling per attempt, capped at 1h, with jitter in the upper half)')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'How long a claim holds an execution; renewed every third of it while it runs. A killed worker''s executions run elsewhere once their lease expires')
            [CompletionResult]::new('--poll-interval', '--poll-interval', [CompletionResultType]::ParameterName, 'Look for due work this often even without a notification')
            [CompletionResult]::new('--shutdown-timeout', '--shutdown-timeout', [CompletionResultType]::ParameterName, 'After SIGINT/SIGTERM, how long running handlers get to finish before they are stopped and their executions released (without using an attempt)')
            [CompletionResult]::new('--prefetch', '--prefetch', [CompletionResultType]::ParameterName, 'Claim at least N executions ahead of free handler slots, so that a slot that frees starts the next task without waiting for a claim. They stay claimed while they wait, so other workers cannot take them; given back unused at shutdown. With 0 (the default) the worker claims ahead only as many as its handlers finish during one claim: none when they run much longer than a claim')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('--until-empty', '--until-empty', [CompletionResultType]::ParameterName, 'Drain the queues and exit: returns when nothing in them is running, due, or waiting for a retry. Exit 0 when every execution it finished completed, 1 when any finished as failed (each listed on stderr)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log every completed attempt too, not only failures')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log every completed attempt too, not only failures')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;step' {
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;cancel' {
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'How long to wait for a running execution to stop')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;trace' {
            [CompletionResult]::new('--trace-id', '--trace-id', [CompletionResultType]::ParameterName, 'Show the trace with this id (32 hex digits) instead')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format: a tree table, JSON for scripts, an OTLP/JSON export request, or the opentelemetry-stdout exporter''s text. Default: table (nothing with --export)')
            [CompletionResult]::new('--export', '--export', [CompletionResultType]::ParameterName, 'Also send the spans to an OTLP/HTTP (protobuf) endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT plus /v1/traces, else http://localhost:4318/v1/traces')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;bench' {
            [CompletionResult]::new('--jobs', '--jobs', [CompletionResultType]::ParameterName, 'Executions to enqueue and work')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'Worker concurrency (in-process handlers)')
            [CompletionResult]::new('--latency-samples', '--latency-samples', [CompletionResultType]::ParameterName, 'Sequential single enqueues for the latency figure')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON: enqueue_per_s, work_per_s, latency_ms {p50, p99, max}')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;completions' {
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;man' {
            [CompletionResult]::new('--dir', '--dir', [CompletionResultType]::ParameterName, 'Write every page into this directory instead of printing pgc.1')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string. Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT apply, with libpq''s defaults')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'pgc''s own lines on stderr: `text`, or `json` (one object per line with time, level, message and, for an execution''s lines, its trace_id and span_id)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pgc;help' {
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Install or upgrade the pgconductor schema')
            [CompletionResult]::new('enqueue', 'enqueue', [CompletionResultType]::ParameterValue, 'Put a task execution (or a JSON Lines batch of them) into a queue')
            [CompletionResult]::new('work', 'work', [CompletionResultType]::ParameterValue, 'Run tasks from queues as commands (a foreground worker)')
            [CompletionResult]::new('step', 'step', [CompletionResultType]::ParameterValue, 'Run a command as a memoized step of the current execution (inside a handler)')
            [CompletionResult]::new('cancel', 'cancel', [CompletionResultType]::ParameterValue, 'Cancel an execution (pending: at once; running: its worker stops it)')
            [CompletionResult]::new('trace', 'trace', [CompletionResultType]::ParameterValue, 'Show the whole trace of an execution, rebuilt from the rows')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure enqueue, work and latency on a scratch queue (in-process no-op handlers)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Print the man page, or write every page into a directory')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'pgc;help;migrate' {
            break
        }
        'pgc;help;enqueue' {
            break
        }
        'pgc;help;work' {
            break
        }
        'pgc;help;step' {
            break
        }
        'pgc;help;cancel' {
            break
        }
        'pgc;help;trace' {
            break
        }
        'pgc;help;bench' {
            break
        }
        'pgc;help;completions' {
            break
        }
        'pgc;help;man' {
            break
        }
        'pgc;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
