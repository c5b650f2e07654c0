"""The options of the root and of the hot commands, generated from the Typer
command tree by ``make fasttable`` (tools/docgen.py; tests/cli/test_fast.py checks
that it is current): do not edit. Each parameter is (name, kind, opts, flag,
multiple, nargs, type, min, max, envvar, default, required); each command is
(allow_interspersed_args, parameters)."""

# fmt: off
ROOT = (
    ('socket', 'option', ('--socket',), False, False, 1, 'str', None, None, 'ENGRAM_SOCKET', None, False),
    ('data_dir', 'option', ('--data-dir',), False, False, 1, 'str', None, None, 'ENGRAM_DATA_DIR', None, False),
    ('agent', 'option', ('--agent',), False, False, 1, 'str', None, None, 'ENGRAM_AGENT', None, False),
    ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    ('version', 'option', ('--version',), True, False, 1, 'bool', None, None, None, False, False),
)

COMMANDS = {
    ('ping',): (True, (
        ('count', 'option', ('--count', '-n'), False, False, 1, 'int', 1, None, None, 1, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('send',): (True, (
        ('to', 'option', ('--to',), False, False, 1, 'str', None, None, None, None, True),
        ('context_id', 'option', ('--context', '-c'), False, False, 1, 'str', None, None, None, None, False),
        ('thread', 'option', ('--thread',), False, False, 1, 'str', None, None, None, None, False),
        ('reply_to', 'option', ('--reply-to',), False, False, 1, 'str', None, None, None, None, False),
        ('ack_required', 'option', ('--ack-required',), True, False, 1, 'bool', None, None, None, False, False),
        ('payload', 'option', ('--payload', '-p'), False, False, 1, 'str', None, None, None, None, False),
        ('meta', 'option', ('--meta', '-m'), False, True, 1, 'str', None, None, None, None, False),
        ('new', 'option', ('--new',), True, False, 1, 'bool', None, None, None, False, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('inbox',): (True, (
        ('limit', 'option', ('--limit', '-n'), False, False, 1, 'int', 1, 1000, None, 20, False),
        ('wait', 'option', ('--wait',), False, False, 1, 'float', 0.0, 3600.0, None, 0.0, False),
        ('peek', 'option', ('--peek',), True, False, 1, 'bool', None, None, None, False, False),
        ('pending', 'option', ('--pending',), True, False, 1, 'bool', None, None, None, False, False),
        ('count', 'option', ('--count',), True, False, 1, 'bool', None, None, None, False, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('wait',): (True, (
        ('contexts', 'option', ('--context', '-c'), False, True, 1, 'str', None, None, None, None, False),
        ('types', 'option', ('--type', '-t'), False, True, 1, 'str', None, None, None, None, False),
        ('agents', 'option', ('--agent',), False, True, 1, 'str', None, None, None, None, False),
        ('kinds', 'option', ('--kind', '-k'), False, True, 1, 'str', None, None, None, None, False),
        ('meta', 'option', ('--meta', '-m'), False, True, 1, 'str', None, None, None, None, False),
        ('since', 'option', ('--since',), False, False, 1, 'str', None, None, None, 'now', False),
        ('timeout', 'option', ('--timeout',), False, False, 1, 'float', 0.0, None, None, None, False),
        ('cursor', 'option', ('--cursor',), False, False, 1, 'str', None, None, None, None, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('unit', 'create'): (True, (
        ('context_id', 'option', ('--context', '-c'), False, False, 1, 'str', None, None, 'ENGRAM_CONTEXT', None, False),
        ('type_', 'option', ('--type', '-t'), False, False, 1, 'str', None, None, None, 'MESSAGE', False),
        ('payload', 'option', ('--payload', '-p'), False, False, 1, 'str', None, None, None, None, False),
        ('file', 'option', ('--file', '-f'), False, False, 1, 'str', None, None, None, None, False),
        ('meta', 'option', ('--meta', '-m'), False, True, 1, 'str', None, None, None, None, False),
        ('relationship', 'option', ('--rel', '-r'), False, True, 1, 'str', None, None, None, None, False),
        ('idempotency_key', 'option', ('--idempotency-key',), False, False, 1, 'str', None, None, None, None, False),
        ('fence', 'option', ('--fence',), False, False, 1, 'str', None, None, 'ENGRAM_FENCE', None, False),
        ('empty', 'option', ('--empty',), True, False, 1, 'bool', None, None, None, False, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('lock', 'acquire'): (True, (
        ('resources', 'argument', ('resources',), False, False, -1, 'str', None, None, None, None, False),
        ('path', 'option', ('--path', '-p'), False, True, 1, 'str', None, None, None, None, False),
        ('shared', 'option', ('--shared',), True, False, 1, 'bool', None, None, None, False, False),
        ('ttl', 'option', ('--ttl',), False, False, 1, 'float', None, None, None, None, False),
        ('wait', 'option', ('--wait', '-w'), False, False, 1, 'float', 0.0, None, None, None, False),
        ('no_wait', 'option', ('--no-wait', '-n'), True, False, 1, 'bool', None, None, None, False, False),
        ('pid', 'option', ('--pid',), False, False, 1, 'int', None, None, None, None, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('lock', 'release'): (True, (
        ('lock_id', 'option', ('--lock-id',), False, False, 1, 'str', None, None, None, None, True),
        ('resource', 'argument', ('resource',), False, False, 1, 'str', None, None, None, None, False),
        ('path', 'option', ('--path', '-p'), False, False, 1, 'str', None, None, None, None, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('lock', 'renew'): (True, (
        ('lock_id', 'option', ('--lock-id',), False, False, 1, 'str', None, None, None, None, True),
        ('resource', 'argument', ('resource',), False, False, 1, 'str', None, None, None, None, False),
        ('path', 'option', ('--path', '-p'), False, False, 1, 'str', None, None, None, None, False),
        ('ttl', 'option', ('--ttl',), False, False, 1, 'float', None, None, None, None, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('lock', 'run'): (False, (
        ('resources', 'argument', ('resources',), False, False, -1, 'str', None, None, None, None, True),
        ('path', 'option', ('--path', '-p'), False, True, 1, 'str', None, None, None, None, False),
        ('shared', 'option', ('--shared',), True, False, 1, 'bool', None, None, None, False, False),
        ('ttl', 'option', ('--ttl',), False, False, 1, 'float', None, None, None, None, False),
        ('wait', 'option', ('--wait', '-w'), False, False, 1, 'float', 0.0, None, None, None, False),
        ('no_wait', 'option', ('--no-wait', '-n'), True, False, 1, 'bool', None, None, None, False, False),
        ('json', 'option', ('--json',), True, False, 1, 'bool', None, None, None, False, False),
    )),
    ('hook', 'pre-edit'): (True, (
        ('runner', 'option', ('--harness',), False, False, 1, 'str', None, None, None, 'claude-code', False),
        ('guard', 'option', ('--guard',), False, False, 1, 'str', None, None, None, 'warn', False),
    )),
    ('hook', 'prompt'): (True, (
        ('runner', 'option', ('--harness',), False, False, 1, 'str', None, None, None, 'claude-code', False),
    )),
    ('hook', 'session-start'): (True, (
        ('runner', 'option', ('--harness',), False, False, 1, 'str', None, None, None, 'claude-code', False),
        ('max_chars', 'option', ('--max-chars',), False, False, 1, 'int', 500, None, None, 8000, False),
    )),
    ('hook', 'stop'): (True, (
        ('runner', 'option', ('--harness',), False, False, 1, 'str', None, None, None, 'claude-code', False),
        ('wait', 'option', ('--wait',), False, False, 1, 'float', 0.0, 86400.0, None, 3600.0, False),
    )),
}
